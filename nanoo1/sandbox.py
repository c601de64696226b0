"""Run model-written Python where it can neither escape nor hang the caller: rStar's step runner.

rStar-Math (Guan et al. 2025) keeps a candidate step only if the code of all steps so far runs without
error; its public code runs that code with `exec` inside the search worker, so a bad step can loop forever,
eat the machine's memory or kill the search. Here `run_python` runs each program in a fresh process and
always returns a SandboxResult (what it printed, how it ended, how long it took); one bad program never
raises in the caller.

  process  `python -I` in a new temporary directory, a scrubbed environment, no inherited file
           descriptors, a session of its own; at the deadline its process group is killed, and the
           directory is removed however deep or unreadable the program made it
  limits   wall clock, CPU time, memory, output, disk
  confine  (confine.py) rlimits; on Linux a private tmpfs and IPC namespace, Landlock, seccomp, no
           capabilities; a Python audit hook that turns refusals into clear errors

What is contained, on Linux 5.13+ (x86_64 or aarch64) that lets a process make user namespaces: the
program runs at most `timeout` seconds on one core, in `memory_mb` of address space and `file_mb` of disk
(all its files together, in a tmpfs: memory of the machine's, not disk); it reads only its directory, the
Python installation (sys.prefix, sys.base_prefix) and the system libraries (/usr, /lib); it writes, and
changes metadata (mode, owner, times, xattrs), nowhere outside its directory; it starts no process or
thread, opens no socket, signals or traces no other process, and leaves nothing behind (files, System V
or POSIX IPC, keyrings, processes), even when it gets past the audit hook.

What is not: this is not a security boundary against a determined attacker. Every layer is a list that
these two files keep (syscalls, paths) over a large kernel interface, and a kernel bug reachable through
an allowed syscall defeats them all; for code from strangers use a virtual machine or gVisor. The
program can read everything under the roots above, its own /proc entries and the CPU information, can
stat (not open) any path, and can measure time. Where the system refuses user namespaces (Ubuntu's
AppArmor restriction, Docker's default seccomp profile) Landlock lets it make no file at all, so its disk
stays bounded (it can write only the file it came in, up to `file_mb`). Without Landlock (Linux before
5.13, or turned off) its reads and writes outside its directory are limited only by file permissions and
the audit hook, which ctypes gets around; without a private tmpfs as well, only each file's size is
bounded, not their number. On other architectures there is no seccomp layer; elsewhere than Linux only
the process, the rlimits that system enforces (macOS ignores the address space) and the audit hook hold.

The child runs this very file (`python -I -c <this file>`), which loads confine.py by path, so everything
it does can be read in these two files.
"""

import functools
import json
import os
import selectors
import signal
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
               file_mb: int = 16, audit_hook: bool = True, namespaces: bool = True) -> SandboxResult:
    """Run `code` as a program in a sandboxed child process and report how it ended; never raises for the program.

    timeout: wall-clock seconds before the program and everything it started is killed ("Timeout").
    memory_mb: address-space limit; past it allocations fail with MemoryError.
    output_bytes: stdout kept; a program that prints more is stopped ("OutputLimit", truncated=True).
    file_mb: disk the program may fill in its directory, all files together (each file alone where the
        kernel layers are missing; see the module docstring).
    audit_hook, namespaces: False leaves out the Python-level tripwire, or the private namespaces (as on a
        system that refuses them), to test the layers that remain.
    Raises ValueError for a limit that is not positive, OSError on a system that is not POSIX.
    """
    if os.name != "posix":
        raise OSError(f"nanoo1.sandbox needs Linux or macOS, not {sys.platform!r}")
    for name, value in [("timeout", timeout), ("memory_mb", memory_mb), ("output_bytes", output_bytes),
                        ("file_mb", file_mb)]:
        if not value > 0:
            raise ValueError(f"sandbox: {name} must be > 0, got {value!r}")
    config = json.dumps({"timeout": timeout, "memory_mb": memory_mb, "file_mb": file_mb, "parent": os.getpid(),
                         "audit_hook": audit_hook, "namespaces": namespaces,
                         "confine": str(Path(__file__).with_name("confine.py"))})
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
    import importlib.util

    cfg = json.loads(config)
    workdir = os.path.realpath(os.getcwd())
    report = os.fdopen(os.dup(2), "w")  # a private copy of the report pipe ...
    os.dup2(1, 2)                       # ... so that the program's stderr joins its (capped) stdout
    try:
        source = Path("main.py").read_text("utf-8")
        # by path: importing the package would import torch, under the limits and from wherever -I finds it
        spec = importlib.util.spec_from_file_location("nanoo1_confine", cfg.pop("confine"))
        confine = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(confine)
        confine.confine(workdir, **cfg)
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


if __name__ == "__main__":  # only as the sandboxed child (`python -I -c <this file> <config>`)
    _child_main(sys.argv[1])
