"""The sandbox's supervisor and its children (sandbox.py's `run_many` starts one supervisor per batch).

The supervisor is this file run as `python -I -c <this file> <config>`, with the programs as a JSON list on
stdin. It loads confine.py by path (importing the package would import torch), forks one child per
program, `workers` at a time, and answers one JSON result per program on stdout. Each child takes a fresh
directory, a session, a scrubbed environment and no file descriptor but its pipes, confines itself
(confine.py) and runs the program; the supervisor reads its output, kills its process group at the
deadline or the output cap, reaps it and removes its directory however the program left it. A child is a
copy of the supervisor, so before its program runs it empties its copies of the other programs' code and
output (a program can walk sys._getframe() or gc up to them); the supervisor keeps none of a reaped
program's output past its result. It imports only the standard library, and dies with its caller, as each
child dies with it (parent-death signals).
"""

import json
import os
import selectors
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


STDERR_ROOM = 1 << 15  # bytes a program may write to stderr past output_bytes and be truncated, not stopped
REPORT_MAX = 1 << 15  # the child's report line after them: an error name of 200 and a message of 2,000 characters
#                       at most, each escaped by json in at most 12 bytes


def clean_env(workdir: str) -> dict:
    # nothing of the caller's environment (keys, tokens, paths) reaches the program; one BLAS thread,
    # since the program may start none
    return {"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir,
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _outcome(returncode: int, reported: tuple | None, stopped: str | None, timeout: float, cap: int):
    """(error, message) from why we stopped it, how it died, or what it reported (`_split_report`)."""
    if stopped == "Timeout":
        return "Timeout", f"ran longer than {timeout} s"
    if stopped == "OutputLimit":
        return "OutputLimit", f"printed more than {cap} bytes"
    if returncode < 0:
        if -returncode == signal.SIGXCPU:
            return "Timeout", "used up its CPU time"
        return f"Signal {signal_name(-returncode)}", ""
    if reported is not None:
        return reported
    if returncode != 0:  # left through os._exit, or its report was lost
        return "SystemExit", str(returncode)
    return None, ""


def _split_report(report: bytes) -> tuple[bytes, tuple | None]:
    """(what the program wrote to stderr, the child's (error, message)) from its stderr pipe: the report is the
    last line, all before it the program's; without one (the program was killed, or wrote over it) all of it is
    the program's. The program can write a report line itself, but only to lie about itself."""
    body, _, last = bytes(report).rstrip(b"\n").rpartition(b"\n")
    try:
        reported = json.loads(last.decode("utf-8", "replace"))
        return body, (reported["error"] and str(reported["error"]), str(reported["message"]))
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):  # e.g. "[[[[..." that it wrote
        return bytes(report), None


def signal_name(number: int) -> str:
    """The name of signal `number` (SIGKILL, SIGRTMIN+3, ...)."""
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name of their own
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return str(number)


def remove_tree(workdir: str) -> None:
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


@dataclass
class _Run:
    """A program running under the supervisor: its child, pipes, what it printed so far, its deadline."""

    index: int
    pid: int
    out_fd: int  # the read end of its stdout pipe
    open_fds: set  # the read ends of its stdout and stderr pipes not yet closed (their numbers get reused)
    workdir: str
    start: float
    deadline: float
    out: bytearray = field(default_factory=bytearray)
    report: bytearray = field(default_factory=bytearray)  # its stderr, then the child's report on the last line
    stopped: str | None = None  # "Timeout" or "OutputLimit" once it is to be killed


def _supervise(config: str) -> None:
    """Run the programs read from stdin (a JSON list), cfg["workers"] at a time, each in a child forked from
    this one and confined there; write one JSON result per line to stdout, in the order they end.

    A single-threaded loop: it forks, reads every child's pipes, stops a child at its deadline or output cap
    (killing its process group), reaps it, removes its directory. It dies with the caller (parent-death
    signal), and its children with it."""
    import importlib.util

    cfg = json.loads(config)
    # a SIGCHLD the caller ignores is ignored here too (exec keeps it): the kernel would reap every child
    # before waitpid could read how it ended
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # by path: importing the package would import torch, under the limits and from wherever -I finds it
    spec = importlib.util.spec_from_file_location("nanoo1_confine", cfg.pop("confine"))
    confine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(confine)
    if sys.platform == "linux":
        confine.die_with_parent(confine.open_libc(), cfg["parent"])
    pending = list(enumerate(json.loads(sys.stdin.buffer.read())))[::-1]
    timeout, cap = cfg["timeout"], cfg["output_bytes"]
    child = {k: cfg[k] for k in ("timeout", "memory_mb", "file_mb", "audit_hook", "namespaces")}
    child["parent"] = os.getpid()
    running, results = {}, []  # pid -> _Run; result lines

    def forget() -> None:  # in a child: the other programs' code and output, which it must not see
        pending.clear()
        results.clear()
        for other in running.values():
            other.out.clear()
            other.report.clear()

    with selectors.DefaultSelector() as sel:
        while pending or running:
            while pending and len(running) < cfg["workers"]:
                index, code = pending.pop()
                try:
                    run = _fork(index, code, cfg["tempdir"], timeout, child, confine, sel, forget)
                    running[run.pid] = run
                except Exception as e:  # no processes left, a directory it cannot make, a lone surrogate
                    results.append({"index": index, "stdout": "", "truncated": False, "error": "SandboxError",
                                    "message": f"{type(e).__name__}: {e}", "seconds": 0.0})
            if not running:
                continue
            waiting = any(not run.open_fds for run in running.values())  # pipes closed, not yet reaped
            left = min(run.deadline for run in running.values()) - time.monotonic()
            for key, _ in sel.select(max(0.0, min(left, 0.005) if waiting else left)):
                run = key.data
                buffer, most = (run.out, cap) if key.fd == run.out_fd else (run.report, cap + STDERR_ROOM + REPORT_MAX)
                size = len(buffer)
                buffer.extend(os.read(key.fd, 1 << 16))  # read into its buffer: no copy left in this frame
                if len(buffer) == size or len(buffer) > most:  # closed, or more than we keep
                    sel.unregister(key.fd)
                    os.close(key.fd)
                    run.open_fds.discard(key.fd)
                if len(buffer) > most:
                    run.stopped = run.stopped or "OutputLimit"  # reading on would only let it burn its time
            for run in list(running.values()):
                if run.stopped is None and time.monotonic() >= run.deadline:
                    run.stopped = "Timeout"
                if run.stopped:  # its process group id is still its own: it is not reaped yet
                    try:
                        os.killpg(run.pid, signal.SIGKILL)
                    except ProcessLookupError:  # not a group leader yet: stopped before its setsid
                        os.kill(run.pid, signal.SIGKILL)
                    status = os.waitpid(run.pid, 0)[1]
                elif not run.open_fds:  # the pipes can close before the program ends (it may close them)
                    pid, status = os.waitpid(run.pid, os.WNOHANG)
                    if pid == 0:
                        continue
                else:
                    continue
                del running[run.pid]
                for fd in run.open_fds:
                    sel.unregister(fd)
                    os.close(fd)
                remove_tree(run.workdir)
                results.append(_result(run, status, timeout, cap))
    data = "".join(json.dumps(r) + "\n" for r in results).encode()
    while data:
        data = data[os.write(1, data):]


def _result(run: _Run, status: int, timeout: float, cap: int) -> dict:
    """The result of a reaped run, as a JSON-ready dict; its buffers are emptied, so no later child finds them."""
    err, reported = _split_report(run.report)
    error, message = _outcome(os.waitstatus_to_exitcode(status), reported, run.stopped, timeout, cap)
    result = {"index": run.index, "stdout": run.out[:cap].decode("utf-8", "replace"),
              "truncated": len(run.out) > cap or len(err) > cap, "error": error, "message": message,
              "seconds": time.monotonic() - run.start, "stderr": err[:cap].decode("utf-8", "replace")}
    run.out.clear()
    run.report.clear()
    return result


def _fork(index: int, code: str, tempdir: str, timeout: float, child: dict, confine, sel, forget) -> _Run:
    """Fork the child that runs `code` in a fresh directory: stdin /dev/null, a stdout and a stderr pipe, a
    session of its own, a scrubbed environment, no other file descriptor, nothing of the other programs
    (`forget`); register its pipes in `sel`."""
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="nanoo1-sandbox-", dir=tempdir)  # fresh per run: nothing carries over
    try:
        Path(workdir, "main.py").write_text(code, "utf-8")  # a lone surrogate: SandboxError
        out_r, out_w = os.pipe()
        report_r, report_w = os.pipe()
        pid = os.fork()
    except BaseException:
        remove_tree(workdir)
        raise
    if pid == 0:  # the child: never returns
        try:
            forget()
            os.setsid()  # its own process group, so one signal reaches all of it
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(report_w, 2)  # stderr, then the child's report
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # none of the supervisor's or the caller's files
            os.chdir(workdir)
            os.environ.clear()
            os.environ.update(clean_env(workdir))
            _child_main(child, confine)
        finally:
            os._exit(1)
    os.close(out_w)
    os.close(report_w)
    run = _Run(index, pid, out_r, {out_r, report_r}, workdir, start, start + timeout)
    sel.register(out_r, selectors.EVENT_READ, run)
    sel.register(report_r, selectors.EVENT_READ, run)
    return run


def _child_main(cfg: dict, confine) -> None:
    """In the forked child: confine this process (confine.py), run main.py, report how it ended on stderr."""
    workdir = os.path.realpath(os.getcwd())
    report = os.fdopen(os.dup(2), "w")  # a private copy of the stderr pipe, for the report after the program
    try:
        source = Path("main.py").read_text("utf-8")
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
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    report.write("\n" + json.dumps({"error": error and error[:200], "message": message[:2000]}) + "\n")
    report.flush()
    os._exit(0 if error is None else 1)  # no interpreter shutdown: the program's atexit handlers do not run


def _text(e: BaseException) -> str:
    try:
        return str(e)
    except Exception:  # a __str__ that raises
        return ""


if __name__ == "__main__":  # only as the supervisor (`python -I -c <this file> <config>`)
    if len(sys.argv) != 2 or not sys.argv[1].startswith("{"):
        sys.exit("nanoo1/supervise.py is the sandbox's supervisor, started by sandbox.run_many with a JSON config "
                 "and the programs on stdin; it is not a command (to run a program: nanoo1.sandbox.run_python)")
    _supervise(sys.argv[1])
