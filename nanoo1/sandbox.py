"""Run model-written Python where it can neither escape nor hang the caller.

rStar-Math keeps a candidate step only if the code of all steps so far runs without error
(REFERENCE.md section 3); its public code runs that code with `exec` inside the search worker, so a bad
step can loop forever, eat the machine's memory or kill the search. Here each program runs in a fresh
process of its own, behind layers that each hold on their own:

  process   `python -I` in a new temporary directory, a scrubbed environment, no inherited file
            descriptors, its own session; at the deadline the whole process group is killed
  limits    rlimits on CPU time, address space, file size, open files and processes; captured output
            is capped
  kernel    (Linux) Landlock: writes only inside its directory, and no ptrace-like access to other
            processes (their memory, /proc/<pid>/environ); seccomp: no new processes or threads, no
            exec, no signals to other processes, no sockets, no ptrace; no capabilities, so a program
            run by root cannot raise its limits, mount, or override file permissions
  tripwire  a Python audit hook that turns the same attempts into clear Python errors, and refuses to
            read files that are not world-readable. It is not a wall (a program can get around any
            in-process check, e.g. by corrupting memory through ctypes); the layers above are

Reads are not confined by the kernel: the program can read what the caller's user can read, apart from
other processes' /proc files; run the caller as an unprivileged user if that matters. The child runs
this very file (`python -I -c <this file>`), so everything it does can be read below. Elsewhere than
Linux the kernel layer is missing and the rest holds as far as the system enforces rlimits (macOS
ignores the address-space limit).
"""

import errno
import functools
import json
import math
import os
import selectors
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SandboxResult:
    stdout: str          # the first `output_bytes` bytes it printed (stdout and stderr), decoded as UTF-8
    truncated: bool      # True when it printed more; it was then stopped ("OutputLimit")
    error: str | None    # None on success, else an exception name ("ZeroDivisionError"), "SyntaxError",
                         # "SystemExit" (non-zero code), "Timeout", "OutputLimit", "Signal SIGSEGV",
                         # "SandboxError" (the sandbox itself could not run it)
    message: str         # the exception's message ("division by zero"), the exit code, or what limit was hit
    seconds: float       # wall-clock time of the whole run

    @property
    def ok(self) -> bool:
        return self.error is None


def run_python(code: str, *, timeout: float = 5.0, memory_mb: int = 512, output_bytes: int = 64 * 1024,
               file_mb: int = 16, audit_hook: bool = True) -> SandboxResult:
    """Run `code` as a program in a sandboxed child process and report how it ended; never raises for the program.

    timeout: wall-clock seconds before the program and everything it started is killed ("Timeout").
    memory_mb: address-space limit; past it allocations fail with MemoryError.
    output_bytes: stdout kept; a program that prints more is stopped ("OutputLimit", truncated=True).
    file_mb: the largest file the program may write in its directory.
    audit_hook: install the Python-level tripwire; False leaves only the OS and kernel layers (to test them).
    Raises ValueError for a limit that is not positive, OSError on a system that is not POSIX.
    """
    if os.name != "posix":
        raise OSError(f"nanoo1.sandbox needs Linux or macOS, not {sys.platform!r}")
    for name, value in [("timeout", timeout), ("memory_mb", memory_mb), ("output_bytes", output_bytes),
                        ("file_mb", file_mb)]:
        if not value > 0:
            raise ValueError(f"sandbox: {name} must be > 0, got {value!r}")
    config = json.dumps({"timeout": timeout, "memory_mb": memory_mb, "file_mb": file_mb,
                         "audit_hook": audit_hook, "parent": os.getpid()})
    start = time.monotonic()
    try:
        out, returncode, report, stopped = _run(code, config, timeout, output_bytes)
        error, message = _outcome(returncode, report, stopped, timeout, output_bytes)
    except Exception as e:  # the sandbox failed (no processes left, a directory it cannot make): a result still
        out, error, message = b"", "SandboxError", f"{type(e).__name__}: {e}"
    return SandboxResult(out[:output_bytes].decode("utf-8", "replace"), len(out) > output_bytes,
                         error, message, time.monotonic() - start)


def run_many(codes, *, workers: int | None = None, **limits) -> list[SandboxResult]:
    """Run many programs at once (rStar expands 5-16 candidate steps per node); results in input order.

    Threads are enough: each one only waits on its own child process.
    """
    from concurrent.futures import ThreadPoolExecutor  # here, not at the top: the child need not import it

    codes = list(codes)
    workers = max(1, min(workers or os.cpu_count() or 1, len(codes) or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(functools.partial(run_python, **limits), codes))


def _run(code: str, config: str, timeout: float, output_bytes: int):
    """Start the child in a fresh directory, collect what it prints, kill what is left, remove the directory."""
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="nanoo1-sandbox-")  # fresh per run: nothing carries over between programs
    try:
        Path(workdir, "main.py").write_text(code, "utf-8")  # a lone surrogate: SandboxError
        proc = subprocess.Popen(
            # -I: ignore PYTHON* variables, user site-packages and the current directory on sys.path;
            # -B: write no .pyc; -u: unbuffered, so output printed before a kill is still seen
            [sys.executable, "-I", "-B", "-u", "-X", "utf8", "-c", Path(__file__).read_text("utf-8"), config],
            cwd=workdir, env=_clean_env(workdir),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,  # stderr: the report
            close_fds=True,           # none of the caller's files, sockets or pipes
            start_new_session=True)   # its own process group, so one signal reaches all of it
        try:
            out, report, stopped = _collect(proc, start + timeout, output_bytes)
        finally:
            if proc.returncode is None:  # still running (or not yet reaped, so its group id is still its own)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
    finally:
        _remove(workdir)
    return out, proc.returncode, report, stopped


def _clean_env(workdir: str) -> dict:
    # nothing of the caller's environment (keys, tokens, paths) reaches the program; one BLAS thread,
    # since the program may start none
    return {"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir,
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _collect(proc, deadline: float, cap: int):
    """Read stdout and the report until the program ends (None), prints more than cap bytes or runs out of time."""
    out, report = bytearray(), bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, report)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return out, report, "Timeout"
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 1 << 16)
                key.data.extend(chunk)
                if not chunk or len(key.data) > cap:  # closed, or more than we keep
                    sel.unregister(key.fileobj)
            if len(out) > cap:
                return out, report, "OutputLimit"  # reading on would only let it burn the time limit
    try:  # the pipes can close before the program ends (it may close them itself)
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return out, report, "Timeout"
    return out, report, None


def _outcome(returncode: int, report: bytes, stopped: str | None, timeout: float, cap: int):
    """(error, message) from why we stopped it, how it died, or what it reported."""
    if stopped == "Timeout":
        return "Timeout", f"ran longer than {timeout} s"
    if stopped == "OutputLimit":
        return "OutputLimit", f"printed more than {cap} bytes"
    if returncode < 0:
        if -returncode == signal.SIGXCPU:
            return "Timeout", "used up its CPU time"
        return f"Signal {_signal_name(-returncode)}", ""
    try:  # our report is the last line; the program can write here too, but only to lie about itself
        reported = json.loads(report.decode("utf-8", "replace").splitlines()[-1])
        return reported["error"] and str(reported["error"]), str(reported["message"])
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):  # e.g. "[[[[..." that it wrote
        pass
    if returncode != 0:  # left through os._exit, or its report was lost
        return "SystemExit", str(returncode)
    return None, ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name of their own
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return str(number)


def _remove(workdir: str) -> None:
    """Delete workdir, however deep, unreadable or long its paths: iteratively, one directory open at a time.

    The program is dead by now, so nothing changes under us; links are removed, never followed."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    names = []  # the path from workdir down to the directory open as fd
    try:
        os.chmod(workdir, 0o700)
        fd = os.open(workdir, flags)
    except OSError:
        return
    try:
        while True:
            below = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        below = entry.name
                    else:
                        os.unlink(entry.name, dir_fd=fd)
            if below is not None:
                os.chmod(below, 0o700, dir_fd=fd)  # the program may have made it unreadable (mkdir mode 0)
                fd, parent = os.open(below, flags, dir_fd=fd), fd
                os.close(parent)
                names.append(below)
            elif names:
                fd, child = os.open("..", flags, dir_fd=fd), fd
                os.close(child)
                os.rmdir(names.pop(), dir_fd=fd)
            else:
                break
    except OSError:
        pass  # left behind rather than raised: tests check that this does not happen
    finally:
        os.close(fd)
    try:
        os.rmdir(workdir)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------
# The child: everything below runs inside the sandboxed process, before and around the program.


def _child_main(config: str) -> None:
    cfg = json.loads(config)
    workdir = os.path.realpath(os.getcwd())
    report = os.fdopen(os.dup(2), "w")  # a private copy of the report pipe ...
    os.dup2(1, 2)                       # ... so that the program's stderr joins its (capped) stdout
    try:
        source = Path("main.py").read_text("utf-8")
        _set_limits(cfg)
        if sys.platform == "linux":
            _confine_linux(workdir, cfg["parent"])
        if cfg["audit_hook"]:
            sys.addaudithook(_audit_hook(workdir))
    except Exception as e:  # a layer that should exist here could not be set up: run nothing
        failure = {"error": "SandboxError", "message": f"{type(e).__name__}: {e}"}
        report.write("\n" + json.dumps(failure) + "\n")
        report.flush()
        os._exit(1)

    error, message, namespace = None, "", {"__name__": "__main__"}
    try:
        exec(compile(source, "main.py", "exec"), namespace)
    except SystemExit as e:
        if e.code not in (None, 0):
            error, message = "SystemExit", str(e.code)
    except BaseException as e:
        error, message = type(e).__name__, _text(e)
    namespace.clear()  # free what the program built (a memory bomb) before writing the report
    try:
        sys.stdout.flush()
    except Exception:
        pass
    report.write("\n" + json.dumps({"error": error, "message": message[:2000]}) + "\n")
    report.flush()
    os._exit(0 if error is None else 1)  # no interpreter shutdown: the program's atexit handlers do not run


def _text(e: BaseException) -> str:
    try:
        return str(e)
    except Exception:  # a __str__ that raises
        return ""


def _set_limits(cfg: dict) -> None:
    import resource  # POSIX only, and only the child needs it

    cpu = math.ceil(cfg["timeout"]) + 1
    memory, file_size = cfg["memory_mb"] << 20, cfg["file_mb"] << 20
    for limit, soft, hard in [
        (resource.RLIMIT_CPU, cpu, cpu + 1),        # backstop for the wall clock: SIGXCPU, then SIGKILL
        (resource.RLIMIT_AS, memory, memory),       # a memory bomb gets MemoryError, not the machine's memory
        (resource.RLIMIT_FSIZE, file_size, file_size),  # a bigger write fails (Python ignores SIGXFSZ)
        (resource.RLIMIT_NOFILE, 64, 64),           # cannot use up the system's open files
        (resource.RLIMIT_NPROC, 0, 0),              # no new processes, for any user but root (seccomp for root)
        (resource.RLIMIT_CORE, 0, 0),               # a crash writes no core file
    ]:
        current = resource.getrlimit(limit)[1]
        if current != resource.RLIM_INFINITY:  # never ask for more than we have
            soft, hard = min(soft, current), min(hard, current)
        try:
            resource.setrlimit(limit, (soft, hard))
        except (ValueError, OSError):
            if sys.platform == "linux":  # Linux has them all; other systems may refuse some (macOS: RLIMIT_AS)
                raise


def _audit_hook(workdir: str):
    """The tripwire: refuse, with a clear PermissionError, what the kernel layers would refuse anyway."""
    blocked = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
               "subprocess.Popen",                         # new processes
               "os.kill", "os.killpg", "signal.pthread_kill",  # signals
               "resource.setrlimit", "resource.prlimit",   # its own limits
               "os.symlink"}                               # a link inside could point outside
    path_events = {"os.chmod", "os.chown", "os.link", "os.mkdir", "os.remove", "os.rename", "os.rmdir",
                   "os.truncate", "os.utime", "os.setxattr", "os.removexattr", "shutil.rmtree", "sqlite3.connect"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def inside(path) -> bool:
        real = os.path.realpath(os.fsdecode(path))  # through every link and ".."
        return real == workdir or real.startswith(workdir + os.sep)

    def is_path(arg) -> bool:
        return isinstance(arg, (str, bytes, os.PathLike))

    def hook(event: str, args: tuple) -> None:
        if event in blocked or event.startswith("socket."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        # `import ctypes` must work (sympy needs it) and opens the main program (None); finding a C
        # function by name, loading a library or reading raw memory must not
        if event.startswith("ctypes.") and not (event == "ctypes.dlopen" and args[0] is None):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and is_path(args[0]) and not inside(args[0]):
            path, mode, flags = args
            if (flags or 0) & write_flags or (isinstance(mode, str) and any(c in mode for c in "wax+")):
                raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path!r}")
            try:
                st = os.stat(path)
            except OSError:
                return  # let the open itself fail
            if stat.S_ISDIR(st.st_mode):  # a directory fd would let dir_fd= calls reach outside
                raise PermissionError(f"sandbox: opening a directory outside the working directory: {path!r}")
            if not st.st_mode & stat.S_IROTH:  # secrets (keys, /proc/<pid>/environ) are not world-readable
                raise PermissionError(f"sandbox: reading a file that not everyone may read: {path!r}")
        if event in path_events:
            for arg in args:
                if is_path(arg) and not inside(arg):
                    raise PermissionError(f"sandbox: {event} outside the working directory: {arg!r}")

    return hook


# Linux kernel layers, all reached through ctypes, in the child only.

# Landlock access rights that change the file system (linux/landlock.h), by the ABI version that added them.
_LANDLOCK_WRITE_RIGHTS = {
    # WRITE_FILE; REMOVE_DIR, REMOVE_FILE; MAKE_CHAR, MAKE_DIR, MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM
    1: (1 << 1) | sum(1 << bit for bit in range(4, 13)),
    2: 1 << 13,                                           # REFER (move or link across directories)
    3: 1 << 14,                                           # TRUNCATE
}
_LANDLOCK_CREATE_RULESET, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT_SELF = 444, 445, 446  # same on every arch

# Syscalls the program is refused (EPERM), as (x86_64, aarch64) numbers; aarch64 has no fork/vfork.
_SECCOMP_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # AUDIT_ARCH_* of the syscall ABI
_SECCOMP_DENY = {
    "fork": (57, None), "vfork": (58, None), "clone": (56, 220), "clone3": (435, 435),  # processes and threads
    "execve": (59, 221), "execveat": (322, 281), "unshare": (272, 97), "setns": (308, 268),
    "tkill": (200, 130), "pidfd_open": (434, 434), "pidfd_send_signal": (424, 424),   # other processes ...
    "pidfd_getfd": (438, 438), "ptrace": (101, 117), "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271), "setpriority": (141, 140), "sched_setparam": (142, 118),
    "sched_setscheduler": (144, 119), "sched_setaffinity": (203, 122), "sched_setattr": (314, 274),
    "ioprio_set": (251, 30),
    "socket": (41, 198), "socketpair": (53, 199),                                      # the network
    # io_uring performs I/O that seccomp never sees
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
}
# ... and these only when aimed at itself (first argument 0 or its own pid): signals, resource limits.
_SECCOMP_SELF_ONLY = {"kill": (62, 129), "tgkill": (234, 131), "rt_sigqueueinfo": (129, 138),
                      "rt_tgsigqueueinfo": (297, 240), "prlimit64": (302, 261)}


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _call(result: int, what: str) -> int:
    import ctypes

    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} failed: {os.strerror(err)}")
    return result


def _landlock_abi(libc=None) -> int:
    """The kernel's Landlock ABI version, 0 when it has none (before Linux 5.13, or disabled)."""
    if sys.platform != "linux":
        return 0
    import ctypes

    libc = libc or _libc()
    abi = libc.syscall(ctypes.c_long(_LANDLOCK_CREATE_RULESET), None, ctypes.c_long(0), ctypes.c_long(1))
    return max(abi, 0)


def _confine_linux(workdir: str, parent: int) -> None:
    import ctypes

    libc, ulong = _libc(), ctypes.c_ulong
    PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 38, 22
    # killed with the caller, should the caller die first (then nobody would enforce the wall clock)
    _call(libc.prctl(PR_SET_PDEATHSIG, ulong(signal.SIGKILL), ulong(0), ulong(0), ulong(0)), "PR_SET_PDEATHSIG")
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)
    # needed by Landlock and seccomp without privileges; exec could not gain any either
    _call(libc.prctl(PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)), "PR_SET_NO_NEW_PRIVS")

    abi = _landlock_abi(libc)
    if abi:  # writes only beneath workdir; being in a Landlock domain also bars ptrace-like access to outsiders
        rights = sum(bits for version, bits in _LANDLOCK_WRITE_RIGHTS.items() if version <= abi)
        handled = ctypes.c_uint64(rights)  # struct landlock_ruleset_attr, first field only (valid for every ABI)
        long = ctypes.c_long
        ruleset = _call(libc.syscall(long(_LANDLOCK_CREATE_RULESET), ctypes.byref(handled),
                                     long(ctypes.sizeof(handled)), long(0)), "landlock_create_ruleset")

        class PathBeneath(ctypes.Structure):  # struct landlock_path_beneath_attr
            _pack_ = 1
            _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

        dirfd = os.open(workdir, os.O_PATH | os.O_CLOEXEC)
        _call(libc.syscall(long(_LANDLOCK_ADD_RULE), long(ruleset), long(1),  # LANDLOCK_RULE_PATH_BENEATH
                           ctypes.byref(PathBeneath(rights, dirfd)), long(0)), "landlock_add_rule")
        _call(libc.syscall(long(_LANDLOCK_RESTRICT_SELF), long(ruleset), long(0)), "landlock_restrict_self")
        os.close(dirfd)
        os.close(ruleset)

    # no capabilities: a root program cannot raise its limits, override file permissions, mount or reboot
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    _call(libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")  # effective, permitted, inheritable = {}

    arch = os.uname().machine
    if arch not in _SECCOMP_ARCH:
        return  # no syscall table for this architecture: the other layers remain
    prog = _seccomp_program(arch, os.getpid())

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    filters = (SockFilter * len(prog))(*prog)
    _call(libc.prctl(PR_SET_SECCOMP, ulong(2), ctypes.byref(SockFprog(len(prog), filters)), ulong(0), ulong(0)),
          "seccomp")  # SECCOMP_MODE_FILTER; inherited by nothing, since nothing can be started


def _seccomp_program(arch: str, pid: int) -> list[tuple[int, int, int, int]]:
    """A classic-BPF seccomp filter as (code, jump_if_true, jump_if_false, k) instructions.

    It reads struct seccomp_data (nr at offset 0, arch at 4, args[0] at 16) and answers
    ALLOW, ERRNO(EPERM), or KILL for a syscall made through another ABI. Jumps count instructions skipped.
    """
    LOAD, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    ALLOW, DENY, KILL = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x80000000
    column = 0 if arch == "x86_64" else 1
    prog = [(LOAD, 0, 0, 4), (JEQ, 1, 0, _SECCOMP_ARCH[arch]), (RET, 0, 0, KILL),  # e.g. 32-bit int 0x80 calls
            (LOAD, 0, 0, 0)]                                                       # A = syscall number
    if arch == "x86_64":
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, DENY)]  # x32 numbers would dodge the table below
    for numbers in _SECCOMP_DENY.values():
        if numbers[column] is not None:
            prog += [(JEQ, 0, 1, numbers[column]), (RET, 0, 0, DENY)]
    for numbers in _SECCOMP_SELF_ONLY.values():
        prog += [(JEQ, 0, 5, numbers[column]),  # not this syscall: skip the 5 instructions of its block
                 (LOAD, 0, 0, 16),              # A = low 32 bits of the first argument (a pid_t)
                 (JEQ, 2, 0, 0), (JEQ, 1, 0, pid),
                 (RET, 0, 0, DENY), (RET, 0, 0, ALLOW)]
    return prog + [(RET, 0, 0, ALLOW)]


if __name__ == "__main__":  # only as the sandboxed child (`python -I -c <this file> <config>`)
    _child_main(sys.argv[1])
