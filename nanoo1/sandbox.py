"""Run model-written Python where it can neither escape nor hang the caller: rStar's step runner.

rStar-Math (Guan et al. 2025) keeps a candidate step only if the code of all steps so far runs without
error; its public code runs that code with `exec` inside the search worker, so a bad step can loop forever,
eat the machine's memory or kill the search. Here `run_python` runs each program in a fresh process and
always returns a SandboxResult (what it printed, how it ended, how long it took); one bad program never
raises in the caller. `run_many` runs a batch: one supervisor process (`python -I`, a scrubbed environment,
no inherited file descriptors) forks a child per program, so a program costs a fork, not the start-up of
an interpreter (about 10 ms against 60 to 90), and rStar's search is not bound by its step runner.

  process  forked by the supervisor into a new temporary directory, a scrubbed environment, no inherited
           file descriptors, a session of its own; at the deadline its process group is killed, and the
           directory is removed however deep or unreadable the program made it (by the caller, with the
           batch's, when the supervisor was killed: the caller interrupted)
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
program can read everything under the roots above, its own /proc entries and the CPU information (its own
memory too, so the code and output of the batch's programs forked before it, dropped but not overwritten),
can stat (not open) any path, and can measure time. Where the system refuses user namespaces (Ubuntu's
AppArmor restriction, Docker's default seccomp profile) Landlock lets it make no file at all, so its disk
stays bounded (it can write only the file it came in, up to `file_mb`). Without Landlock (Linux before
5.13, or turned off) its reads and writes outside its directory are limited only by file permissions and
the audit hook, which ctypes gets around; without a private tmpfs as well, only each file's size is
bounded, not their number. On other architectures there is no seccomp layer; elsewhere than Linux only
the process, the rlimits that system enforces (macOS ignores the address space) and the audit hook hold.

The supervisor runs supervise.py as a script (`python -I -c <supervise.py>`), which loads confine.py by path,
and each child confines itself before the program runs, so everything they do can be read in those two files.
The supervisor dies with the caller and each child with the supervisor (parent-death signals).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nanoo1.supervise import clean_env, remove_tree, signal_name

SUPERVISOR = Path(__file__).with_name("supervise.py")  # run as a script, not imported, by `run_many`
# the largest limits: a timeout the supervisor's select can wait for (it takes at most about 24 days), sizes that
# rlimits and the tmpfs take in bytes as a C long; past them there is no limit to ask for
LIMIT_MAX = {"timeout": 1e6, "memory_mb": 2 ** 30, "output_bytes": 2 ** 40, "file_mb": 2 ** 30}


@dataclass
class SandboxResult:
    stdout: str          # the first `output_bytes` bytes it printed to stdout, decoded as UTF-8
    truncated: bool      # True when it wrote more to stdout or to stderr; past output_bytes of stdout, or far
                         # past them of stderr, it was stopped ("OutputLimit")
    error: str | None    # None on success, else an exception name ("ZeroDivisionError"), "SyntaxError",
                         # "SystemExit" (non-zero code), "Timeout", "OutputLimit", "Signal SIGSEGV",
                         # "SandboxError" (the sandbox itself could not run it)
    message: str         # the exception's message ("division by zero"), the exit code, or what limit was hit
    seconds: float       # wall-clock time of the whole run
    stderr: str = ""     # the first `output_bytes` bytes it wrote to stderr (warnings; not its exception: error)

    @property
    def ok(self) -> bool:
        return self.error is None


def run_python(code: str, **limits) -> SandboxResult:
    """Run `code` as a program in a sandboxed child process and report how it ended; never raises for the program.

    limits (run_many's):
    timeout: wall-clock seconds before the program and everything it started is killed ("Timeout").
    memory_mb: address-space limit; past it allocations fail with MemoryError.
    output_bytes: stdout kept, and stderr kept; a program that prints more to stdout is stopped ("OutputLimit",
        truncated=True), as is one that writes to stderr 32 KiB more than that (less: truncated, not stopped).
    file_mb: disk the program may fill in its directory, all files together (each file alone where the
        kernel layers are missing; see the module docstring).
    audit_hook, namespaces: False leaves out the Python-level tripwire, or the private namespaces (as on a
        system that refuses them), to test the layers that remain.
    Raises ValueError for a limit that is not a positive number (a whole one but for the timeout) up to
    LIMIT_MAX, OSError on a system that is not POSIX.
    """
    return run_many([code], workers=1, **limits)[0]


def check_platform() -> None:
    """OSError where programs cannot be run here: the supervisor forks them, which Linux and macOS do."""
    if os.name != "posix":
        raise OSError(f"nanoo1.sandbox forks the programs it runs, which needs Linux or macOS (on Windows: WSL), "
                      f"not {sys.platform!r}")


def run_many(codes, *, workers: int | None = None, timeout: float = 5.0, memory_mb: int = 512,
             output_bytes: int = 64 * 1024, file_mb: int = 16, audit_hook: bool = True,
             namespaces: bool = True) -> list[SandboxResult]:
    """Run many programs, `workers` at a time (default: one per core), each as run_python would; results in
    input order. rStar expands 5-16 candidate steps per node, and a search runs thousands of programs.

    One supervisor process is started for the batch (`python -I` running supervise.py); it
    forks a child per program, so each program costs a fork rather than an interpreter's start-up.
    """
    check_platform()
    for name, value in [("timeout", timeout), ("memory_mb", memory_mb), ("output_bytes", output_bytes),
                        ("file_mb", file_mb)]:
        kind = (int, float) if name == "timeout" else int  # sizes are whole numbers, the timeout finite
        if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value <= LIMIT_MAX[name]:
            whole = ", whole" if kind is int else ""
            raise ValueError(f"sandbox: {name} must be a finite number > 0{whole}, at most {LIMIT_MAX[name]!r}, "
                             f"got {value!r}")
    codes = list(codes)
    if not codes:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(codes)))
    config = {"timeout": timeout, "memory_mb": memory_mb, "file_mb": file_mb, "output_bytes": output_bytes,
              "audit_hook": audit_hook, "namespaces": namespaces, "parent": os.getpid(), "workers": workers,
              "tempdir": tempfile.gettempdir(), "confine": str(SUPERVISOR.with_name("confine.py"))}
    start, answers, why = time.monotonic(), {}, "the supervisor returned no result for it"
    try:
        # the programs' directories go in one of the batch's, removed here whatever became of the supervisor
        config["tempdir"] = tempfile.mkdtemp(prefix="nanoo1-sandbox-", dir=config["tempdir"])
        try:
            answers, why = _batch(codes, config)
        finally:
            remove_tree(config["tempdir"])
    except Exception as e:  # the sandbox failed (no processes left, a directory it cannot make): results still
        why = f"{type(e).__name__}: {e}"
    return [answers.get(i) or SandboxResult("", False, "SandboxError", why, time.monotonic() - start)
            for i in range(len(codes))]


def _batch(codes: list[str], config: dict) -> tuple[dict[int, SandboxResult], str]:
    """Start the supervisor, hand it the programs, read back one result per line: ({index: result}, why one
    may be missing: how the supervisor ended and the end of its stderr). It is killed if it outlives every
    program's deadline by far (TimeoutError, short: subprocess's own message holds the whole command line)."""
    waves = -(-len(codes) // config["workers"])
    limit = waves * (config["timeout"] + 2) + 10
    proc = subprocess.Popen(
        # -I: ignore PYTHON* variables, user site-packages and the current directory on sys.path;
        # -B: write no .pyc; -u: unbuffered, so output printed before a kill is still seen
        [sys.executable, "-I", "-B", "-u", "-X", "utf8", "-c", SUPERVISOR.read_text("utf-8"), json.dumps(config)],
        cwd=config["tempdir"], env=clean_env(config["tempdir"]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        close_fds=True,           # none of the caller's files, sockets or pipes
        start_new_session=True)   # its own process group, so no signal of the caller's terminal reaches it
    try:
        out, err = proc.communicate(json.dumps(codes).encode(), timeout=limit)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"the supervisor gave no answer in {limit:g} s and was killed; "
                           "run the batch again") from None
    finally:
        if proc.returncode is None:  # it hung (or the caller was interrupted): its programs die with it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    answers = {}
    for line in out.decode("utf-8", "replace").splitlines():
        answer = json.loads(line)
        index = answer.pop("index")
        # JSON carries lone surrogates (a program's `raise ValueError(chr(0xd800))`), which no text encoder takes
        answers[index] = SandboxResult(**{k: v.encode("utf-8", "replace").decode("utf-8") if isinstance(v, str) else v
                                          for k, v in answer.items()})
    code = proc.returncode
    how = f"was killed by {signal_name(-code)}" if code < 0 else f"exited with status {code}"
    stderr = err.decode("utf-8", "replace").strip()[-500:]
    return answers, f"the supervisor {how} before it answered; run the batch again" + (stderr and f": {stderr}")
