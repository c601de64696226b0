"""nanoo1.sandbox and nanoo1.confine: ordinary programs behave as under `python`; hostile ones end in a bounded result.

Every hostile program must end within its timeout + 1 s in a result (never an exception in the caller),
leave no process, file or IPC object behind, read and change nothing outside its directory, and leave
the caller working. Most run twice: with the audit hook (the default) and without it, so that the OS
and kernel layers are shown to hold on their own. What the kernel lacks is skipped, saying so.
"""

import ast
import contextlib
import ctypes
import errno
import functools
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from nanoo1.confine import MAX_FILES, SECCOMP_ARCH, landlock_abi, read_roots, seccomp_filter, tripwire
from nanoo1.sandbox import SUPERVISOR, run_many, run_python
from nanoo1.supervise import remove_tree, signal_name

LINUX = sys.platform == "linux"
KERNEL = LINUX and os.uname().machine in SECCOMP_ARCH  # seccomp has a syscall table for this machine
LANDLOCK = landlock_abi() > 0


@functools.cache
def private_namespaces() -> bool:
    """Whether this system lets a process mount a tmpfs in namespaces of its own, asked of a new process."""
    if not LINUX:
        return False
    code = f"""
import ctypes, os, sys
libc, uid, gid = ctypes.CDLL(None), os.geteuid(), os.getegid()
if libc.unshare(0x18020000) == 0:  # user | mount | IPC
    for name, text in [("setgroups", "deny"), ("uid_map", f"{{uid}} {{uid}} 1"), ("gid_map", f"{{gid}} {{gid}} 1")]:
        with open(f"/proc/self/{{name}}", "w") as f:
            f.write(text)
elif uid != 0 or libc.unshare(0x08020000) != 0:  # mount | IPC, for root
    sys.exit(1)
private = libc.mount(b"none", b"/", None, 1 << 14 | 1 << 18, None)  # MS_REC | MS_PRIVATE
sys.exit(private or libc.mount(b"t", {tempfile.gettempdir()!r}.encode(), b"tmpfs", 0, b"size=1m"))
"""
    try:
        return subprocess.run([sys.executable, "-I", "-c", code], stderr=subprocess.DEVNULL).returncode == 0
    except OSError:
        return False


def may_make_files() -> bool:
    """In its own tmpfs, or where no Landlock stops it; elsewhere Landlock lets it make no file (a bounded disk)."""
    return private_namespaces() or not LANDLOCK


def sysv_ipc() -> list[str]:
    """The System V IPC objects that exist on this machine (shared memory, semaphores, message queues)."""
    found = []
    for kind in ("shm", "sem", "msg"):
        with contextlib.suppress(OSError), open(f"/proc/sysvipc/{kind}") as f:
            found += [f"{kind} {line.split()[1]}" for line in f.readlines()[1:]]  # the id column
    return found


def sandbox_processes(caller: int | None = None) -> list[int]:
    """Pids of live sandboxed children of `caller` (this process by default): their command line carries
    this module's source and the caller's pid; children of other test runs on the machine do not count."""
    mark = re.compile(rb'"parent": %d\b' % (caller or os.getpid()))
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"_supervise(sys.argv[1])" in cmdline and mark.search(cmdline):
            found.append(int(entry))
    return found


def our_children() -> list[int]:
    """Pids whose parent is this process, zombies included."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # after "pid (comm)": state, ppid, ...
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid():
            found.append(int(entry))
    return found


def supervisor_open_files(monkeypatch, soft: int, hard: int | None = None) -> None:
    """Start this test's supervisors under a limit of `soft` open files (and `hard`, else the caller's own), as
    a caller with lower limits would: the supervisor inherits its caller's limits, and its children theirs."""
    import resource  # POSIX only
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1] if hard is None else hard
    limit = functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
    monkeypatch.setattr(subprocess, "Popen", functools.partial(subprocess.Popen, preexec_fn=limit))


@contextlib.contextmanager
def adopting_orphans():
    """Make this process the reaper of its orphaned descendants (PR_SET_CHILD_SUBREAPER).

    A process that escapes a run, even by double fork + setsid + exec, then becomes our child
    instead of init's, so `our_children` finds it whatever it turned into.
    """
    prctl, zero = ctypes.CDLL(None).prctl, ctypes.c_ulong(0)
    prctl(36, ctypes.c_ulong(1), zero, zero, zero)
    try:
        yield
    finally:
        prctl(36, zero, zero, zero, zero)


@pytest.fixture(autouse=True, scope="module")
def own_temp_dir(tmp_path_factory):
    """Working directories go in a directory of this run's, so that runs of others beside it are not counted."""
    previous, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("runs"))
    yield
    tempfile.tempdir = previous


def workdirs() -> set[str]:
    return {d for d in os.listdir(tempfile.gettempdir()) if d.startswith("nanoo1-sandbox-")}


def hostile(code: str, timeout: float = 1.0, **limits):
    """Run `code` and check what must hold for any program: bounded, nothing left, caller fine."""
    dirs_before, ipc_before = workdirs(), sysv_ipc()
    older = set(our_children()) if LINUX else set()  # children from before (e.g. multiprocessing's resource tracker)
    start = time.monotonic()
    with adopting_orphans() if LINUX else contextlib.nullcontext():
        result = run_python(code, timeout=timeout, **limits)
        escaped = sorted(set(our_children()) - older | set(sandbox_processes())) if LINUX else []
    for pid in escaped:  # do not leave them running, then fail
        os.kill(pid, signal.SIGKILL)
        if pid in our_children():
            os.waitpid(pid, 0)
    assert escaped == []
    assert time.monotonic() - start < timeout + 1.0
    assert result.seconds < timeout + 1.0
    assert len(result.stdout.encode()) <= limits.get("output_bytes", 64 * 1024)
    assert workdirs() <= dirs_before  # its directory is gone
    assert sysv_ipc() == ipc_before
    assert run_python("print(6 * 7)").stdout == "42\n"  # the caller keeps working
    return result


def attempt_each(attempts: dict) -> str:
    """A program that tries each attempt (name -> statements separated by '; ') and prints `name refused`
    where it raised OSError, `name done` where it did not."""
    return "import os\n" + "".join(
        f"try:\n    {line.replace('; ', chr(10) + '    ')}\n    print({name!r}, 'done')\n"
        f"except OSError:\n    print({name!r}, 'refused')\n" for name, line in attempts.items())


@pytest.fixture(params=[True, False], ids=["hook", "no-hook"])
def hook(request):
    """With and without the audit hook; without it only Linux has the kernel layers that still hold."""
    if not request.param and not KERNEL:
        pytest.skip("without the audit hook only the Linux kernel layers stop it, and this system has none")
    return request.param


# --- ordinary programs ------------------------------------------------------------------------------


def test_stdout_is_captured():
    r = run_python("print(1 + 1)\nprint('héllo')")
    assert (r.stdout, r.truncated, r.error, r.message, r.ok) == ("2\nhéllo\n", False, None, "", True)
    assert 0 < r.seconds < 5


def test_exception_type_and_message_and_output_before_it():
    r = run_python("print('step 1')\nx = 1 / 0")
    assert (r.stdout, r.error, r.message, r.ok) == ("step 1\n", "ZeroDivisionError", "division by zero", False)
    r = run_python("raise ValueError('bad step')")
    assert (r.error, r.message) == ("ValueError", "bad step")


def test_syntax_error():
    r = run_python("def f(:\n    return 1\n")
    assert r.error == "SyntaxError" and r.stdout == ""


def test_exit_codes():
    assert run_python("import sys; print('a'); sys.exit(0)").ok
    assert run_python("import sys; sys.exit()").ok
    r = run_python("import sys; sys.exit(3)")
    assert (r.error, r.message) == ("SystemExit", "3")
    r = run_python("import sys; sys.exit('no answer')")
    assert (r.error, r.message) == ("SystemExit", "no answer")
    r = run_python("import os; os._exit(5)")  # no report at all: the exit status speaks
    assert (r.error, r.message) == ("SystemExit", "5")


def test_atexit_handlers_do_not_run():
    # the child leaves with os._exit right after its report, so nothing of the program runs after it
    r = run_python("import atexit, sys\natexit.register(lambda: print('atexit ran'))\nsys.exit(4)")
    assert (r.error, r.message, r.stdout) == ("SystemExit", "4", "")


def test_ordinary_math():
    code = """
import math, itertools
from fractions import Fraction

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def depth(n):
    return 0 if n == 0 else 1 + depth(n - 1)

print(Fraction(1, 3) + Fraction(1, 6))            # 2/6 + 1/6 = 1/2
print(math.comb(10, 3))                           # 10*9*8/6 = 120
print(len(list(itertools.permutations(range(5)))))  # 5! = 120
print(fib(20))                                    # 6765
print(depth(500))                                 # moderate recursion
"""
    r = run_python(code)
    assert r.ok, r
    assert r.stdout.split() == ["1/2", "120", "120", "6765", "500"]


def test_numpy_and_sympy_import_under_the_limits():
    pytest.importorskip("numpy")
    pytest.importorskip("sympy")
    code = "import numpy, sympy\nprint(round(numpy.linalg.det([[2, 1], [1, 3]])))\nprint(sympy.factorint(360))"
    r = run_python(code, timeout=30)  # importing sympy takes seconds on a loaded machine
    assert r.ok, r
    assert r.stdout.splitlines() == ["5", "{2: 3, 3: 2, 5: 1}"]  # 2*3 - 1*1 = 5; 360 = 2^3 3^2 5


def test_stderr_is_kept_apart_from_stdout():
    """What a program writes to stderr (print(file=sys.stderr), a warning after its answer) is its own field, so
    the last line it printed is still the last line of stdout; its exception is error and message, not stderr."""
    r = run_python("import sys, warnings\nprint('out')\nprint('err', file=sys.stderr)\nwarnings.warn('late')")
    assert (r.ok, r.stdout, r.stderr.splitlines()[0]) == (True, "out\n", "err") and "UserWarning: late" in r.stderr
    r = run_python("import sys\nsys.stderr.write('no newline')\nprint(1)\n1 / 0")
    assert (r.stdout, r.stderr, r.error) == ("1\n", "no newline", "ZeroDivisionError")
    assert run_python("print(2)").stderr == ""


def test_fresh_working_directory_is_removed():
    code = ("import os\nprint(os.getcwd())\nprint(os.listdir())\n"
            "open('a.txt', 'w').write('x')\nprint(open('a.txt').read())")
    first, second = run_python(code), run_python(code)
    (dir1, *rest1), (dir2, *rest2) = first.stdout.splitlines(), second.stdout.splitlines()
    listing = "[]" if private_namespaces() else "['main.py']"  # its own empty tmpfs, or the directory it came in
    if may_make_files():
        assert first.ok and second.ok
        assert rest1 == rest2 == [listing, "x"]
    else:
        assert first.error == second.error == "PermissionError"
        assert rest1 == rest2 == [listing]
    assert dir1 != dir2
    assert not os.path.exists(dir1) and not os.path.exists(dir2)


def test_unreadable_directories_are_still_removed():
    # chmod is refused, but mkdir takes a mode: 0o300 can be written into and not listed
    r = run_python("import os\nos.mkdir('a', 0o300)\nos.mkdir('a/b', 0o300)\nopen('a/b/f', 'w').close()\n"
                   "os.mkdir('c', 0)\nprint(os.getcwd())")
    if may_make_files():
        assert r.ok, r
    else:
        assert r.error == "PermissionError"
    assert not os.path.exists(r.stdout.strip())


def test_removal_of_deep_unreadable_trees_with_long_paths(tmp_path):
    # what a program could leave where it may make directories: 1,100 levels, longer than PATH_MAX
    # (4096) as one path, an unlistable directory, and a link out that must not be followed
    outside = tmp_path / "outside.txt"
    outside.write_text("intact")
    # in memory where there is a tmpfs: on a disk 1,100 rmdirs can take seconds
    base = tempfile.mkdtemp(dir="/dev/shm") if os.access("/dev/shm", os.W_OK) else str(tmp_path)
    try:
        root = Path(base, "nanoo1-sandbox-deep")
        root.mkdir()
        fd = os.open(root, os.O_RDONLY)
        for level in range(1100):
            name = f"level-{level:04d}"
            os.mkdir(name, dir_fd=fd)
            open(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "w").close()
            if level == 500:
                os.symlink(tmp_path, "out", dir_fd=fd)
            fd, parent = os.open(name, os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
            if level in (600, 1099):
                os.chmod(fd, 0o300)  # can be written into, not listed
        os.close(fd)
        os.chmod(root, 0o300)  # the top one too
        remove_tree(str(root))
        assert not root.exists() and outside.read_text() == "intact"
        remove_tree(str(root))  # already gone: nothing to do, nothing raised
    finally:
        if base != str(tmp_path):
            shutil.rmtree(base, ignore_errors=True)


def test_removal_follows_no_link_and_leaves_no_descriptor_open(tmp_path):
    """remove_tree never follows a link, not even one given as the directory to remove, and closes every directory it
    opened on its way down and back up: the supervisor removes one directory per program, thousands in a search,
    and must not run out of file descriptors."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "kept.txt").write_text("intact")
    link = tmp_path / "nanoo1-sandbox-link"
    link.symlink_to(target)
    remove_tree(str(link))
    assert (target / "kept.txt").read_text() == "intact"
    tree = tmp_path / "nanoo1-sandbox-tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "c").mkdir()
    open_before = len(os.listdir("/dev/fd"))
    remove_tree(str(tree))
    assert not tree.exists() and len(os.listdir("/dev/fd")) == open_before


def test_no_inherited_file_descriptors():
    fd = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(fd, True)  # even an fd the caller marked inheritable stays behind
    try:
        r = run_python(f"import os\ntry:\n    os.fstat({fd})\n    print('open')\nexcept OSError:\n    print('closed')")
    finally:
        os.close(fd)
    assert r.stdout == "closed\n"


def test_its_directory_and_environment():
    """The program's directory is a new one in its batch's, a new one in the caller's temporary directory; HOME and
    TMPDIR name it (the one place it may write: libraries put their caches and temporary files there), PATH is the
    system's default, and BLAS libraries are told to use one thread (the program may start none)."""
    code = ("import os\nprint(os.path.dirname(os.path.dirname(os.getcwd())))\n"
            "print(*(os.path.realpath(os.environ[name]) == os.getcwd() for name in ('HOME', 'TMPDIR')))\n"
            "print(os.environ['PATH'], *(os.environ[f'{lib}_NUM_THREADS'] for lib in ('OMP', 'OPENBLAS', 'MKL')))")
    r = run_python(code)
    assert r.stdout.splitlines() == [os.path.realpath(tempfile.gettempdir()), "True True", f"{os.defpath} 1 1 1"]


def test_a_program_starts_with_only_its_standard_files():
    """The program holds stdin (/dev/null), stdout, stderr and its report (fd 3), nothing more: no
    descriptor left open by the supervisor, nor by its own confinement (Landlock's ruleset and paths)."""
    code = ("import os\nfds = []\nfor fd in range(64):\n    try:\n        os.fstat(fd)\n        fds.append(fd)\n"
            "    except OSError:\n        pass\nprint(fds, os.path.samestat(os.fstat(0), os.stat(os.devnull)))")
    assert run_python(code).stdout == "[0, 1, 2, 3] True\n"


@pytest.mark.skipif(not LINUX, reason="other systems may refuse some limits (macOS: RLIMIT_AS)")
def test_the_programs_resource_limits(monkeypatch):
    """The program's limits, as the kernel reports them to it: CPU time one second past the timeout rounded up (a
    backstop for the wall clock; SIGKILL a second later), memory_mb of address space, file_mb per file, 64 open
    files, no new processes, no core file. None is raised past the caller's hard limit: a caller allowed 32 open
    files gives its programs 32 (asking for more would fail, or, for root, lift the caller's own limit)."""
    import resource  # POSIX only
    code = ("import resource\nfor name in ('CPU', 'AS', 'FSIZE', 'NOFILE', 'NPROC', 'CORE'):\n"
            "    print(name, *resource.getrlimit(getattr(resource, 'RLIMIT_' + name)))")

    def line(name, soft, hard):  # no more than the caller has, which its supervisor inherits
        most = resource.getrlimit(getattr(resource, "RLIMIT_" + name))[1]
        return " ".join([name, *(str(n if most == resource.RLIM_INFINITY else min(n, most)) for n in (soft, hard))])
    r = run_python(code, timeout=2.5, memory_mb=300, file_mb=3)
    assert r.stdout.splitlines() == [line("CPU", 4, 5), line("AS", 300 << 20, 300 << 20),
                                     line("FSIZE", 3 << 20, 3 << 20), line("NOFILE", 64, 64), line("NPROC", 0, 0),
                                     line("CORE", 0, 0)]
    supervisor_open_files(monkeypatch, 32, 32)
    r = run_python(code)
    assert "NOFILE 32 32" in r.stdout.splitlines(), r


def test_file_size_limit():
    r = run_python("open('big', 'wb').write(b'x' * (2 << 20))", file_mb=1)
    if not may_make_files():
        assert r.error == "PermissionError"
        r = run_python("open('main.py', 'ab').write(b'x' * (2 << 20))", file_mb=1)  # the one file it has
    assert r.error == "OSError" and ("File too large" in r.message or "No space left" in r.message), r


def test_output_cap_is_exact():
    r = run_python("print('x' * 100)", output_bytes=10)
    assert (r.stdout, r.truncated, r.error) == ("x" * 10, True, "OutputLimit")


def test_output_of_exactly_the_cap_is_kept_whole():
    """A program may print exactly `output_bytes`: that is kept, not truncated, and not stopped; one byte more
    stops it, and the message says what the cap was."""
    r = run_python("print('x' * 9)", output_bytes=10)
    assert (r.stdout, r.truncated, r.error) == ("x" * 9 + "\n", False, None)
    r = run_python("print('x' * 10)", output_bytes=10)
    assert (r.stdout, r.truncated, r.error) == ("x" * 10, True, "OutputLimit")
    assert r.message == "printed more than 10 bytes"


def test_long_and_unprintable_exception_messages():
    """A message is cut at 2,000 characters (the program chooses its text, and a result stays small); an
    exception whose __str__ itself raises still ends in a result, with an empty message."""
    r = run_python("raise ValueError('x' * 3000)")
    assert (r.error, r.message) == ("ValueError", "x" * 2000)
    r = run_python("class Odd(Exception):\n    def __str__(self):\n        raise RuntimeError\nraise Odd()")
    assert (r.error, r.message) == ("Odd", "")


def test_the_programs_objects_are_freed_before_its_report():
    """The child frees the program's globals before it writes its report, so that a program that took all its
    memory leaves room for the report: its objects' finalizers run then, and what they print is kept."""
    r = run_python("class Held:\n    def __del__(self):\n        print('freed')\nheld = Held()\nprint('done')")
    assert (r.stdout, r.error) == ("done\nfreed\n", None)


def test_output_left_in_the_programs_buffers_is_kept():
    """The child leaves through os._exit, which flushes nothing, so it flushes stdout itself first: text the
    program left buffered (here with write-through turned off) is not lost."""
    r = run_python("import sys\nsys.stdout.reconfigure(write_through=False)\nprint('kept', end='')")
    assert (r.stdout, r.error) == ("kept", None)


def test_output_still_in_the_pipe_when_the_program_ends_is_kept():
    """A program is reaped only once both its pipes are read to their end: one that writes more than a pipe holds
    and exits leaves the rest in the pipe, which reaping it on exit would lose. 400 programs of 200 kB each, two
    at a time: reaping on exit lost the end of about one in 45 (programs cannot fork here, so no child of theirs
    can hold the pipe open to make the loss certain)."""
    results = run_many(["import sys\nsys.stdout.write('x' * 200_000)"] * 400, workers=2, output_bytes=1 << 20)
    assert [(len(r.stdout), r.error) for r in results] == [(200_000, None)] * 400


def test_a_program_that_loses_its_report_still_fails_by_its_exit_status():
    """The report goes to fd 3 of the program's, which it can point elsewhere: a program that does so and then
    raises does not pass for one that succeeded, since the child's exit status still says it failed."""
    r = run_python("import os\nr, w = os.pipe()\nos.dup2(w, 3)\nraise ValueError('lost')")
    assert (r.error, r.message) == ("SystemExit", "1")


def test_limits_are_checked():
    with pytest.raises(ValueError, match="timeout"):
        run_python("print(1)", timeout=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("print(1)", memory_mb=-1)
    with pytest.raises(ValueError, match="output_bytes"):
        run_python("print(1)", output_bytes=0)
    with pytest.raises(ValueError, match="file_mb"):  # a tmpfs of size 0 would be one without a limit
        run_python("print(1)", file_mb=0)
    for bad in [{"memory_mb": 256.5}, {"file_mb": 0.5}, {"memory_mb": True}, {"timeout": math.inf},
                {"timeout": math.nan}, {"timeout": "1"}, {"timeout": 1e9}, {"memory_mb": 2 ** 44},
                {"file_mb": 2 ** 44}]:  # refused before any program runs, the limit named
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a finite number > 0"):
            run_python("print(1)", **bad)
    assert run_python("print(1)", timeout=1e6, memory_mb=2 ** 30, file_mb=2 ** 30).stdout == "1\n"  # the largest


def test_a_caller_that_ignores_sigchld_still_gets_each_programs_result():
    """A caller started with SIGCHLD ignored (a daemon's child) hands that on to the supervisor through exec; the
    supervisor still reaps its children itself and reads how each ended."""
    before = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        results = run_many(["print(6 * 7)", "1 / 0", "import time\ntime.sleep(30)"], timeout=2)
    finally:
        signal.signal(signal.SIGCHLD, before)
    assert [(r.stdout, r.error) for r in results] == [("42\n", None), ("", "ZeroDivisionError"), ("", "Timeout")]


def test_a_deadline_that_passes_before_the_program_starts_still_stops_it():
    """A timeout shorter than a fork: the deadline comes before the child has its own process group, and the child
    alone is killed. Without that the supervisor would wait on a sleeping program past every deadline."""
    for _ in range(3):
        r = run_python("import time\ntime.sleep(60)", timeout=1e-6)
        assert r.error == "Timeout" and r.seconds < 5, r


def test_a_program_within_its_stderr_room_keeps_its_error_whatever_its_report():
    """Up to 32 KiB of stderr past output_bytes is truncated, not stopped: the report line that follows (as long as
    a long message escaped by json makes it) does not count against that room."""
    code = "import sys\nsys.stderr.write('w' * (1024 + 32767))\nraise ValueError('\\U0001f600' * 5000)"
    r = run_python(code, output_bytes=1024, timeout=10)
    assert (r.error, r.truncated, len(r.stderr)) == ("ValueError", True, 1024)
    assert r.message == "\U0001f600" * 2000


@pytest.mark.skipif(not LINUX, reason="finds the sandbox's processes in /proc")
def test_a_batch_interrupted_by_its_caller_leaves_no_directory():
    """Ctrl-C (any exception) in the caller kills the supervisor before it could remove its programs' directories,
    each holding the program: the caller removes them, as they lie in one directory of the batch's."""
    dirs_before = workdirs()

    def interrupt(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_many(["import time\ntime.sleep(30)"] * 4, workers=2, timeout=20)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    deadline = time.monotonic() + 2
    while sandbox_processes() and time.monotonic() < deadline:  # the programs die with their supervisor
        time.sleep(0.02)
    assert workdirs() - dirs_before == set() and sandbox_processes() == []


def test_pool_keeps_order_and_runs_in_parallel():
    # the later programs finish first; serially this takes 1.2 + 0.9 + 0.6 + 0.3 = 3.0 s, in parallel 1.2 s
    codes = [f"import time\ntime.sleep({0.3 * (4 - i):.1f})\nprint({i})" for i in range(4)]
    start = time.monotonic()
    results = run_many(codes, workers=4)
    assert time.monotonic() - start < 2.2
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]
    assert run_many([]) == []


def test_pool_runs_at_most_workers_programs_at_once():
    """`workers` bounds how many programs run at once (each may take memory_mb and a core): of three programs on
    two workers, the third starts only once one of the first two has ended; a count below one means one worker.
    The programs read the system's monotonic clock, which every process shares."""
    code = "import time\nprint(time.monotonic())\ntime.sleep(0.1)\nprint(time.monotonic())"
    spans = sorted(tuple(map(float, r.stdout.split())) for r in run_many([code] * 3, workers=2))
    assert spans[2][0] >= min(spans[0][1], spans[1][1])
    spans = sorted(tuple(map(float, r.stdout.split())) for r in run_many([code] * 2, workers=-1))
    assert spans[1][0] >= spans[0][1]


def test_an_empty_batch_starts_no_supervisor(monkeypatch):
    """An empty batch (a search round with nothing to run) is answered at once, without starting an interpreter."""
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: started.append(args))
    assert (run_many([]), run_many(iter([])), started) == ([], [], [])


def test_pool_never_closes_a_pipe_whose_number_a_later_program_got():
    # the first program closes its pipes and lives on; the third starts once the second ends and gets the
    # pipe numbers the first freed: reaping the first must not close them (the third would then time out)
    codes = ["import os, time\nos.closerange(0, 1024)\ntime.sleep(0.6)", "import time\ntime.sleep(0.2)\nprint('b')",
             "import time\ntime.sleep(1.0)\nprint('c')"]
    results = run_many(codes, workers=2, timeout=3.0)
    assert [(r.stdout, r.error) for r in results[1:]] == [("b\n", None), ("c\n", None)]
    assert results[0].error == "SystemExit" and results[2].seconds < 2.0  # the first lost its report: exit code 1


def test_pool_passes_limits():
    results = run_many(["while True: pass", "print(2)"], workers=2, timeout=0.5)
    assert [r.error for r in results] == ["Timeout", None]


def test_a_program_sees_nothing_of_its_batch_mates():
    # a child is a fork of the supervisor: up its stack (or through gc) lie the batch's code and output, unless
    # emptied. The third starts once the second has ended, while the first runs and the fourth waits.
    running, done, waiting = (uuid.uuid4().hex for _ in range(3))
    keys = ", ".join(f"{key[:16]!r} + {key[16:]!r}" for key in (running, done, waiting))  # no whole key in the code
    search = f"""
import gc, sys
def find(keys):
    texts, frame = [], sys._getframe(1)
    while frame:
        texts.append(repr(frame.f_locals))
        frame = frame.f_back
    texts += [repr(o) for o in gc.get_objects() if hasattr(type(o), "__dataclass_fields__")]  # the runs
    return [key for key in keys if any(key in text for text in texts)]
print(find([{keys}]))
"""
    codes = [f"import time\nprint({running[:16]!r} + {running[16:]!r}, flush=True)\ntime.sleep(0.8)",
             f"import time\ntime.sleep(0.3)\nprint({done[:16]!r} + {done[16:]!r})", search, f"# {waiting}"]
    results = run_many(codes, workers=2)
    assert [r.stdout for r in results] == [running + "\n", done + "\n", "[]\n", ""]


def test_a_failed_supervisor_ends_in_a_short_result(monkeypatch):
    # killed (the OOM killer, a bug): every program's result names how it ended and what to do
    dirs_before = workdirs()

    def kill_the_supervisor():  # our own child, once it has forked the program's
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = sandbox_processes()
            supervisor = [pid for pid in found if pid in our_children()]
            if supervisor and len(found) > 1:
                os.kill(supervisor[0], signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_supervisor)
    killer.start()
    r = run_python("import time\ntime.sleep(10)", timeout=10)
    killer.join()
    deadline = time.monotonic() + 2
    while sandbox_processes() and time.monotonic() < deadline:  # its child dies with it
        time.sleep(0.02)
    for d in workdirs() - dirs_before:  # what the killed supervisor could not remove
        shutil.rmtree(os.path.join(tempfile.gettempdir(), d))
    assert (r.error, r.message) == ("SandboxError", "the supervisor was killed by SIGKILL before it answered; "
                                                    "run the batch again")
    # stopped, it answers nothing in time; subprocess's own message would hold the whole command line
    communicate = subprocess.Popen.communicate

    def silent(self, input=None, timeout=None):
        if timeout is None:  # the call that reaps it, once killed
            return communicate(self, input)
        raise subprocess.TimeoutExpired(self.args, timeout)

    monkeypatch.setattr(subprocess.Popen, "communicate", silent)
    r = run_python("print(1)", timeout=5)
    assert (r.error, r.message) == ("SandboxError", "TimeoutError: the supervisor gave no answer in 17 s and was "
                                                    "killed; run the batch again")  # 1 wave of 5 + 2 s, + 10 s


def test_a_supervisor_that_gives_no_answer_is_killed_and_reaped(monkeypatch):
    """A supervisor that answers nothing in time (here one stopped by SIGSTOP) is killed with SIGKILL, which no
    process can catch or ignore, and reaped before run_many returns: nothing is left, not even a zombie. Its time
    allows every wave of the batch: three programs on two workers run in two. Each result says how long it took."""
    supervisors, communicate = [], subprocess.Popen.communicate

    def stopped(self, input=None, timeout=None):
        if timeout is None:  # the call that reaps it, once killed; the timeout only keeps a failure from hanging
            return communicate(self, input, timeout=30)
        supervisors.append(self)
        os.kill(self.pid, signal.SIGSTOP)
        raise subprocess.TimeoutExpired(self.args, timeout)

    monkeypatch.setattr(subprocess.Popen, "communicate", stopped)
    results = run_many(["print(1)"] * 3, workers=2, timeout=5)
    assert {(r.error, r.message) for r in results} == {  # 2 waves of 5 + 2 s, + 10 s
        ("SandboxError", "TimeoutError: the supervisor gave no answer in 24 s and was killed; run the batch again")}
    assert all(r.seconds > 0 for r in results)
    assert [s.returncode for s in supervisors] == [-signal.SIGKILL]


def test_a_supervisor_that_ends_without_answering_says_how(monkeypatch, tmp_path):
    """A supervisor that exits without a result for each program (a bug, an interpreter that cannot start) is
    named by its exit status, with the end of what it wrote to stderr: its last 500 characters, stripped."""
    quiet, loud = tmp_path / "quiet.py", tmp_path / "loud.py"
    quiet.write_text("")
    loud.write_text("import sys\nsys.stderr.write('\\n' + 'x' * 600 + ' the end\\n')\nsys.exit(3)\n")
    monkeypatch.setattr("nanoo1.sandbox.SUPERVISOR", quiet)
    r = run_python("print(1)")
    assert (r.error, r.message) == ("SandboxError", "the supervisor exited with status 0 before it answered; "
                                                    "run the batch again")
    monkeypatch.setattr("nanoo1.sandbox.SUPERVISOR", loud)
    r = run_python("print(1)")
    end = ("x" * 600 + " the end")[-500:]
    assert (r.error, r.message) == ("SandboxError", "the supervisor exited with status 3 before it answered; "
                                                    f"run the batch again: {end}")


def test_the_supervisor_imports_nothing_planted_in_its_directory(monkeypatch, tmp_path):
    """The supervisor runs in the temporary directory, where others may write: it starts isolated (python -I), so
    a module planted there is never imported in place of the standard library's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "selectors.py").write_text("raise SystemExit('the planted module ran')\n")
    r = run_python("print(6 * 7)")
    assert (r.stdout, r.error) == ("42\n", None), r


def test_the_supervisor_writes_no_bytecode_beside_its_sources(monkeypatch, tmp_path):
    """The supervisor loads confine.py by path, and writes no bytecode cache beside it: the package's directory
    may be read-only or shared, and is not the sandbox's to change."""
    for name in ("supervise.py", "confine.py"):
        shutil.copy(SUPERVISOR.with_name(name), tmp_path / name)
    monkeypatch.setattr("nanoo1.sandbox.SUPERVISOR", tmp_path / "supervise.py")
    assert run_python("print(6 * 7)").stdout == "42\n"
    assert sorted(os.listdir(tmp_path)) == ["confine.py", "supervise.py"]


@pytest.mark.skipif(not LINUX, reason="reads the supervisor's open files in /proc")
def test_the_supervisor_inherits_none_of_the_callers_files(tmp_path):
    """Only its pipes reach the supervisor: a file the caller marked inheritable is not open in it, which would
    otherwise hold the caller's files, pipes and sockets open for as long as a batch runs. The program waits, by
    stat (which it may do anywhere), until the test has looked."""
    marker, looked = tmp_path / "marker", tmp_path / "looked"
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT)
    os.set_inheritable(fd, True)
    seen = []

    def look():
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            for pid in set(sandbox_processes()) & set(our_children()):  # the supervisor, not its child
                with contextlib.suppress(OSError):
                    seen.append([os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")])
            time.sleep(0.01)
        looked.touch()

    looker = threading.Thread(target=look)
    looker.start()
    try:
        code = f"import os, time\nwhile not os.path.exists({str(looked)!r}):\n    time.sleep(0.01)"
        r = run_python(code, timeout=20)
    finally:
        looker.join()
        os.close(fd)
    assert r.ok, r
    assert seen and os.path.realpath(marker) not in seen[0]


def test_the_supervisor_closes_the_pipes_of_the_programs_it_stops(monkeypatch):
    """A program stopped at its output cap is reaped with a pipe still open, which the supervisor then closes: a
    long batch must not run it out of file descriptors, here 30 such programs under a limit of 16."""
    supervisor_open_files(monkeypatch, 16)
    results = run_many(["print('x' * 100)"] * 30, workers=1, output_bytes=10)
    assert {(r.error, r.stdout) for r in results} == {("OutputLimit", "x" * 10)}


# --- hostile programs ---------------------------------------------------------------------------------


def test_infinite_loop():
    r = hostile("while True:\n    pass", timeout=1.0)
    assert r.error == "Timeout" and r.seconds >= 1.0


def test_sleeping_forever_is_stopped_by_the_wall_clock():
    r = hostile("import time\nprint('started')\ntime.sleep(100)", timeout=1.0)
    assert (r.error, r.stdout) == ("Timeout", "started\n")  # output printed before the kill is kept


def test_closing_its_pipes_does_not_hang_the_caller():
    r = hostile("import os\nfor fd in range(10):\n    try:\n        os.close(fd)\n    except OSError:\n        pass\n"
                "while True:\n    pass", timeout=0.5)
    assert r.error == "Timeout"


def test_fork_bomb(hook):
    code = """
import os, subprocess, threading, time
started = []
for _ in range(50):
    try:
        pid = os.fork()
    except OSError as e:
        print("fork refused", type(e).__name__)
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    started.append(pid)
try:
    subprocess.Popen(["sleep", "30"])
    print("popen ran")
except OSError as e:
    print("popen refused", type(e).__name__)
try:
    threading.Thread(target=time.sleep, args=(30,)).start()
    print("thread ran")
except (OSError, RuntimeError) as e:
    print("thread refused")
print("started", started)
os.fork()
"""
    r = hostile(code, audit_hook=hook)
    lines = r.stdout.splitlines()
    assert lines[:2] == ["fork refused PermissionError", "popen refused PermissionError"]
    if KERNEL or (LINUX and os.geteuid() != 0):  # no threads either (seccomp; RLIMIT_NPROC for other users)
        assert lines[2] == "thread refused"
    assert lines[-1] == "started []"
    assert r.error == "PermissionError"  # the bare os.fork() at the end, refused by the hook or by seccomp
    assert r.message == ("sandbox: os.fork is not allowed" if hook else "[Errno 1] Operation not permitted")


def test_daemon_that_double_forks_and_calls_setsid(hook):
    code = """
import os, time
try:
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            print("daemon", os.getpid(), flush=True)
            time.sleep(30)
        os._exit(0)
    time.sleep(0.3)
except OSError as e:
    print("refused", type(e).__name__)
"""
    r = hostile(code, audit_hook=hook)
    assert r.stdout == "refused PermissionError\n"
    assert r.ok


@pytest.mark.skipif(not LINUX, reason="macOS does not enforce RLIMIT_AS")
def test_memory_bomb():
    r = hostile("x = bytearray(10 ** 11)", memory_mb=256)
    assert r.error == "MemoryError"
    r = hostile("chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))", memory_mb=256, timeout=2.0)
    assert r.error == "MemoryError"


@pytest.mark.skipif(not LINUX, reason="macOS does not enforce RLIMIT_AS")
def test_raising_its_own_limits(hook):
    code = """
import resource
try:
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print("raised")
except (OSError, ValueError) as e:
    print("refused")
x = bytearray(1 << 30)
"""
    r = hostile(code, memory_mb=256, audit_hook=hook)
    assert (r.stdout, r.error) == ("refused\n", "MemoryError")


def test_gigabyte_of_output():
    r = hostile("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)")
    assert (r.error, r.truncated, r.stdout) == ("OutputLimit", True, "x" * (64 * 1024))
    r = hostile("import os\nfor _ in range(1024):\n    os.write(2, b'y' * (1 << 20))")  # raw stderr too
    assert (r.error, r.truncated, r.stdout, r.stderr) == ("OutputLimit", True, "", "y" * (64 * 1024))


def test_writing_outside_its_directory(hook, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # world-writable like /tmp: a different uid alone would not stop these writes
    victim = tmp_path / "victim.txt"
    victim.write_text("intact")
    victim.chmod(0o666)
    in_tmp = os.path.join(tempfile.gettempdir(), f"nanoo1-escape-{uuid.uuid4().hex}")
    attempts = {
        "open": f"open({str(shared / 'a')!r}, 'w').write('x')",
        "os.open": f"os.open({str(shared / 'b')!r}, os.O_WRONLY | os.O_CREAT)",
        "tmp": f"open({in_tmp!r}, 'w').write('x')",
        "mkdir": f"os.mkdir({str(shared / 'c')!r})",
        "rename": f"open('mine', 'w').close(); os.rename('mine', {str(shared / 'd')!r})",
        "symlink": f"os.symlink({str(shared)!r}, 'link'); open('link/e', 'w').write('x')",
        "dotdot": f"open(os.path.join(os.getcwd(), '..', {os.path.basename(in_tmp)!r}), 'w').write('x')",
        "remove": f"os.remove({str(victim)!r})",
        "truncate": f"os.truncate({str(victim)!r}, 0)",
        "append": f"open({str(victim)!r}, 'a').write('changed')",
        "dir_fd": f"fd = os.open({str(shared)!r}, os.O_RDONLY); os.open('f', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
    }
    if LANDLOCK:  # no audit event exists for mkfifo: only Landlock stops it
        attempts["mkfifo"] = f"os.mkfifo({str(shared / 'g')!r})"
    code = attempt_each(attempts)
    if not hook and not LANDLOCK:
        pytest.skip("without the audit hook, writes are confined by Landlock, which this kernel lacks")
    r = hostile(code, audit_hook=hook)
    assert r.ok, r
    assert r.stdout.splitlines() == [f"{name} refused" for name in attempts]
    assert os.listdir(shared) == [] and not os.path.exists(in_tmp)
    assert victim.read_text() == "intact"


def test_reading_outside_through_a_directory_fd(hook, tmp_path):
    # the caller's own 0600 file beside the working directory: file permissions do not stop its own user
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("the-secret")
    secret.chmod(0o600)
    (outside / "public.txt").write_text("the-public")
    attempts = {
        "open": f"open({str(secret)!r}).read()",
        "public": f"open({str(outside / 'public.txt')!r}).read()",
        "dir_fd": f"fd = os.open({str(outside)!r}, os.O_RDONLY); os.read(os.open('secret.txt', 0, dir_fd=fd), 99)",
        "O_PATH": f"fd = os.open({str(outside)!r}, os.O_PATH); os.read(os.open('secret.txt', 0, dir_fd=fd), 99)",
        "listdir": f"os.listdir({str(outside)!r})",
        "dotdot": f"open(os.path.join(os.getcwd(), '..', '..', {os.path.relpath(secret, tempfile.gettempdir())!r})).read()",
        "home": "os.listdir(os.path.expanduser('~root'))",
    }
    code = attempt_each(attempts)
    if not hook and not LANDLOCK:
        pytest.skip("without the audit hook, reads are confined by Landlock, which this kernel lacks")
    r = hostile(code, audit_hook=hook)
    assert r.ok, r
    if not LANDLOCK:  # the audit hook alone guards opens: world-readable files, and listings, stay readable
        attempts.pop("public"), attempts.pop("home"), attempts.pop("listdir")
    assert [line for line in r.stdout.splitlines() if line.split()[0] in attempts] == \
        [f"{name} refused" for name in attempts]
    assert "the-secret" not in r.stdout


@pytest.mark.skipif(not LINUX, reason="the metadata calls are refused by seccomp, on Linux")
def test_changing_metadata_outside(hook, tmp_path):
    # Landlock's rights do not cover chmod, chown, utime or xattrs: seccomp refuses them, everywhere
    victim = tmp_path / "victim.txt"
    victim.write_text("intact")
    victim.chmod(0o600)
    before = os.stat(victim)
    attempts = {
        "chmod": f"os.chmod({str(victim)!r}, 0o777)",
        "chmod dir_fd": f"os.chmod('victim.txt', 0o777, dir_fd=os.open({str(tmp_path)!r}, os.O_PATH))",
        "fchmod": f"os.fchmod(os.open({str(victim)!r}, os.O_PATH), 0o777)",
        "chown": f"os.chown({str(victim)!r}, {os.getuid()}, {os.getgid()})",
        "utime": f"os.utime({str(victim)!r}, (0, 0))",
        "utime dir_fd": f"os.utime('victim.txt', (0, 0), dir_fd=os.open({str(tmp_path)!r}, os.O_PATH))",
        "setxattr": f"os.setxattr({str(victim)!r}, 'user.mark', b'1')",
        "removexattr": f"os.removexattr({str(victim)!r}, 'user.mark')",
        "fchmod own": "os.fchmod(os.open('mine', os.O_WRONLY | os.O_CREAT), 0o777)" if private_namespaces()
                      else "os.fchmod(os.open('main.py', os.O_WRONLY), 0o777)",
    }
    code = attempt_each(attempts)
    if not hook and not KERNEL:
        pytest.skip("without the audit hook, metadata calls are refused by seccomp, which has no table here")
    r = hostile(code, audit_hook=hook)
    assert r.ok, r
    assert r.stdout.splitlines() == [f"{name} refused" for name in attempts]
    after = os.stat(victim)
    assert (after.st_mode, after.st_uid, after.st_mtime_ns, after.st_ctime_ns) == \
        (before.st_mode, before.st_uid, before.st_mtime_ns, before.st_ctime_ns)  # ctime: no change at all
    assert victim.read_text() == "intact"


def test_real_time_signals_end_in_a_result():
    r = hostile("import signal\nsignal.raise_signal(40)")
    assert (r.error, r.message) == (f"Signal SIGRTMIN+{40 - signal.SIGRTMIN}", "")
    r = hostile("import signal\nsignal.raise_signal(signal.SIGRTMAX)")  # the one that has a name
    assert r.error == "Signal SIGRTMAX"


@pytest.mark.skipif(not LINUX, reason="real-time signals are Linux's")
def test_signal_names():
    """How a result names the signal that ended a program or the supervisor: by its name, real-time ones from
    SIGRTMIN, and a number that is no signal as that number."""
    assert signal_name(signal.SIGKILL) == "SIGKILL"
    assert signal_name(signal.SIGRTMIN + 3) == "SIGRTMIN+3"
    assert signal_name(signal.SIGRTMAX + 1) == str(signal.SIGRTMAX + 1)


def test_a_program_that_cannot_be_written_is_a_result():
    r = hostile("print('\ud800')")  # a lone surrogate has no UTF-8
    assert r.error == "SandboxError" and "UnicodeEncodeError" in r.message


def test_forged_report_ends_in_a_result():
    # the report pipe is fd 3 (the first the child dups); nesting deep enough to make json recurse past its limit
    r = hostile("import os\nos.write(3, b'\\n' + b'[' * 60000)\nos._exit(0)")
    assert (r.error, r.message) == (None, "")
    r = hostile("import os\nos.write(3, b'\\n{\"error\": [1], \"message\": 2}\\n')\nos._exit(1)")
    assert (r.error, r.message) == ("[1]", "2")  # it can lie about itself, and only that


def test_every_text_of_a_result_is_utf8():
    # lone surrogates in a message, an exit code and a forged report: JSON carries them, no text encoder takes them
    forged = r"""import os
os.write(3, b'\n{"error": "\\ud800", "message": "\\udc00"}\n')
os._exit(1)"""
    results = run_many(["raise ValueError(chr(0xd800))", "import sys\nsys.exit(chr(0xdfff) + 'x')", forged])
    assert [(r.error, r.message) for r in results] == [("ValueError", "?"), ("SystemExit", "?x"), ("?", "?")]
    for r in results:
        (r.stdout + r.error + r.message).encode("utf-8")


def test_nested_directories(hook):
    # past the recursion limit, each unlistable: what broke the cleanup before
    code = ("import os\ntop = os.getcwd()\nfor _ in range(1100):\n    os.mkdir('d', 0o300)\n    os.chdir('d')\n"
            "print(os.getcwd()[len(top):].count('/d'))")
    if not private_namespaces() and not LANDLOCK:
        pytest.skip("without a tmpfs or Landlock the directories land on the disk, whose removal time varies")
    r = hostile(code, audit_hook=hook, timeout=2.0)
    if private_namespaces():
        assert (r.error, r.stdout) == (None, "1100\n")
    else:
        assert r.error == "PermissionError"


def test_number_of_files_is_capped(hook):
    code = ("made = 0\ntry:\n    for i in range(5000):\n        open(f'f{i}', 'w').close()\n        made += 1\n"
            "finally:\n    print(made)")
    if not private_namespaces() and not LANDLOCK:
        pytest.skip("without a tmpfs or Landlock only the time limit bounds the number of files")
    r = hostile(code, audit_hook=hook, timeout=2.0)
    if private_namespaces():  # its tmpfs holds MAX_FILES inodes, its root among them
        assert (r.error, r.message) == ("OSError", f"[Errno 28] No space left on device: 'f{MAX_FILES - 1}'")
        assert r.stdout == f"{MAX_FILES - 1}\n"
    else:
        assert (r.error, r.stdout) == ("PermissionError", "0\n")


@pytest.mark.parametrize("namespaces", [True, False], ids=["private-fs", "no-namespaces"])
def test_total_disk_is_capped(hook, namespaces):
    # file_mb caps all its files together, not each one: 1 MB files, one after another
    code = """
import errno, os
written, chunk, reason = 0, b'x' * (1 << 20), None
for i in range(64):
    try:  # main.py until it is full (the file the program came in, or a new one), then 1 MB files
        fd = os.open('main.py' if i == 0 else f'f{i}', os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        while True:
            written += os.write(fd, chunk)
            if i > 0:
                break
    except OSError as e:
        reason = errno.errorcode[e.errno]
        if i > 0:
            break
print(written, reason)
"""
    if namespaces and not private_namespaces():
        pytest.skip("this system refuses the sandbox user and mount namespaces")
    if not namespaces and not LANDLOCK:
        pytest.skip("without namespaces the total is bounded by Landlock, which this kernel lacks")
    r = hostile(code, audit_hook=hook, file_mb=4, namespaces=namespaces)
    written, reason = r.stdout.split()
    assert int(written) <= 4 << 20
    # private tmpfs: main.py is hidden beneath it, and the files fill it; without: main.py up to
    # RLIMIT_FSIZE, then no new file may be made
    assert reason == ("ENOSPC" if namespaces else "EACCES")
    assert r.ok


@pytest.mark.skipif(not KERNEL, reason="System V IPC is refused by seccomp, which has no syscall table here")
def test_ipc_does_not_outlive_the_program(hook):
    # ctypes past the audit hook: shared memory, semaphores, message queues, POSIX queues, keyrings
    code = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
calls = [("shmget", lambda: libc.shmget(0, 256 << 20, 0o1600)), ("semget", lambda: libc.semget(0, 1, 0o1600)),
         ("msgget", lambda: libc.msgget(0, 0o1600)),
         ("mq_open", lambda: libc.mq_open(b"/nanoo1", 0o100 | 2, 0o600, None)),  # O_CREAT | O_RDWR
         ("keyctl", lambda: libc.syscall(248, b"user", b"nanoo1", b"x", 1, -3))]  # add_key to the user keyring
for name, call in calls:
    print(name, call(), ctypes.get_errno())
"""
    r = hostile(code, audit_hook=hook)
    if hook:
        assert (r.error, r.message) == ("PermissionError", "sandbox: ctypes.dlsym is not allowed")
    else:
        names = ["shmget", "semget", "msgget", "mq_open", "keyctl"]
        assert r.stdout.splitlines() == [f"{name} -1 1" for name in names]  # each refused: EPERM
    # hostile() has checked that /proc/sysvipc lists nothing new


def test_reading_the_parents_environment(hook, monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("NANOO1_TEST_SECRET", secret)
    code = f"""
import os
print(sorted(os.environ))
print(os.environ.get("NANOO1_TEST_SECRET"))
for pid in (os.getppid(), {os.getpid()}):
    try:
        print(open(f"/proc/{{pid}}/environ", "rb").read())
    except OSError:
        print("refused")
"""
    if not hook and not LANDLOCK:
        pytest.skip("without the audit hook, /proc/<parent> is guarded by Landlock, which this kernel lacks")
    r = hostile(code, audit_hook=hook)
    assert secret not in r.stdout
    keys, value, *proc = r.stdout.splitlines()
    assert set(ast.literal_eval(keys)) <= {"PATH", "HOME", "TMPDIR", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "MKL_NUM_THREADS", "LC_CTYPE"}  # LC_CTYPE: Python's own (PEP 538)
    assert value == "None"
    if LINUX:
        assert proc == ["refused", "refused"]


@pytest.mark.skipif(not LINUX, reason="/proc/self/environ is Linux's")
def test_the_environment_the_program_started_with_is_clean_too(monkeypatch):
    """/proc/self/environ shows the environment a process was started with, which clearing os.environ does not
    change: the supervisor itself starts with the scrubbed environment, so the caller's secrets are not there
    either. Read without the audit hook, which refuses the file (it is not world-readable)."""
    secret = uuid.uuid4().hex
    monkeypatch.setenv("NANOO1_TEST_SECRET", secret)
    r = run_python("print(open('/proc/self/environ', 'rb').read())", audit_hook=False)
    assert r.ok, r
    assert secret not in r.stdout and "NANOO1_TEST_SECRET" not in r.stdout


def test_signalling_the_parent(hook):
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))  # a failure must not kill pytest
    code = f"""
import os, signal
for name, send in [("ppid", lambda: os.kill(os.getppid(), signal.SIGUSR1)),
                   ("pid", lambda: os.kill({os.getpid()}, signal.SIGUSR1)),
                   # signal 0 only asks whether it could: a failure here must not hit the test runner
                   ("group", lambda: os.killpg(os.getpgid({os.getpid()}), 0)),
                   ("everyone", lambda: os.kill(-1, 0))]:
    try:
        send()
        print(name, "sent")
    except OSError:
        print(name, "refused")
"""
    try:
        r = hostile(code, audit_hook=hook)
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert r.stdout.split() == ["ppid", "refused", "pid", "refused", "group", "refused", "everyone", "refused"]
    assert received == []


@pytest.mark.skipif(not LINUX, reason="F_SETOWN_EX and F_SETSIG are Linux's")
def test_signalling_through_a_file_owner(hook):
    # a file with an owner signals it (SIGIO, or F_SETSIG's) when I/O becomes possible on an O_ASYNC file;
    # the target is a process of the test's, which either signal would end
    target = subprocess.Popen(["sleep", "30"])
    pipe = "r, w = os.pipe(); "
    go = "; fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC); os.write(w, b'x')"
    code = "import fcntl, signal, struct\n" + attempt_each({
        "owner": f"{pipe}fcntl.fcntl(r, fcntl.F_SETOWN, {target.pid}){go}",
        "owner_ex": f"{pipe}fcntl.fcntl(r, 15, struct.pack('ii', 1, {target.pid})){go}",  # F_SETOWN_EX, F_OWNER_PID
        "signal": f"{pipe}fcntl.fcntl(r, fcntl.F_SETSIG, signal.SIGTERM)",
        "async": f"{pipe.rstrip('; ')}{go}"})  # no owner: nobody is signalled
    try:
        r = hostile(code, audit_hook=hook)
        time.sleep(0.1)
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()
    assert r.stdout.split() == ["owner", "refused", "owner_ex", "refused", "signal", "refused", "async", "done"]


def test_cpu_time_limit_is_a_backstop():
    # a program that lowers its own CPU limit shows what happens should the wall clock ever fail: its 1 s of CPU
    # ends it (SIGXCPU), long before the wall clock would ("ran longer than"), on a busy machine too
    code = "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1, 2))\nwhile True:\n    pass"
    r = hostile(code, timeout=30.0, audit_hook=False)
    assert (r.error, r.message) == ("Timeout", "used up its CPU time")


CLEAR_PDEATHSIG = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print(libc.prctl(1, 0, 0, 0, 0), ctypes.get_errno(), flush=True)  # PR_SET_PDEATHSIG, 0: "outlive my caller"
"""


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux only")
def test_clearing_the_parent_death_signal_is_refused(hook):
    r = hostile(CLEAR_PDEATHSIG, audit_hook=hook)
    if hook:
        assert r.error == "PermissionError"
    elif KERNEL:
        assert r.stdout == "-1 1\n"  # EPERM from seccomp


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux only")
@pytest.mark.parametrize("program", ["plain", "clears-pdeathsig", "ignores-signals"])
def test_child_dies_with_its_caller(program):
    # a caller killed outright cannot clean up; the kernel then kills its sandboxed child, even one that
    # tried to clear its parent-death signal past the audit hook, or ignores every signal it may (SIGKILL ends it)
    if program == "clears-pdeathsig" and not KERNEL:
        pytest.skip("only seccomp refuses prctl(PR_SET_PDEATHSIG, 0), and it has no syscall table here")
    ignore = ("import signal\nfor s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):\n"
              "    signal.signal(s, signal.SIG_IGN)\n")
    code = {"plain": "", "clears-pdeathsig": CLEAR_PDEATHSIG, "ignores-signals": ignore}[program]
    code += "import time\ntime.sleep(60)"
    dirs_before = workdirs()
    module = os.path.join(os.path.dirname(os.path.dirname(__file__)), "nanoo1", "sandbox.py")
    script = ("import importlib.util\n"
              f"spec = importlib.util.spec_from_file_location('sandbox', {module!r})\n"
              "sandbox = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(sandbox)\n"
              f"sandbox.run_python({code!r}, timeout=60, audit_hook=False)")
    caller = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "TMPDIR": tempfile.gettempdir()})
    try:
        deadline = time.monotonic() + 10
        while not sandbox_processes(caller.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sandbox_processes(caller.pid) != []
        time.sleep(0.2)  # let it reach its prctl and its sleep
    finally:
        caller.kill()
        caller.wait()
    deadline = time.monotonic() + 2
    while sandbox_processes(caller.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    survivors = sandbox_processes(caller.pid)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.1 if survivors else 0)
    for d in workdirs() - dirs_before:  # what the killed caller could not remove
        shutil.rmtree(os.path.join(tempfile.gettempdir(), d))
    assert survivors == []


def test_deep_recursion():
    r = hostile("def f(n):\n    return f(n + 1)\nf(0)")
    assert r.error == "RecursionError"
    # with the limit lifted it ends in whatever runs out first: the C stack (SIGSEGV), memory (3.11 keeps
    # Python frames on the heap and reports SystemError), or time; any of them, but bounded
    r = hostile("import sys\nsys.setrecursionlimit(10 ** 9)\ndef f(n):\n    return f(n + 1)\nf(0)", memory_mb=64)
    assert r.error is not None


def test_opening_a_socket(hook):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = f"""
import socket
address = ("127.0.0.1", {port})
for name, attempt in [("tcp", lambda: socket.create_connection(address, timeout=0.5)),
                      ("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", address)),
                      ("pair", lambda: socket.socketpair())]:
    try:
        attempt()
        print(name, "open")
    except OSError:
        print(name, "refused")
"""
        r = hostile(code, audit_hook=hook)
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody connected
    assert r.stdout.split() == ["tcp", "refused", "udp", "refused", "pair", "refused"]


def test_segfault(hook):
    r = hostile("import ctypes\nctypes.memmove(0, b'x', 1)", audit_hook=hook)  # no audit event for memmove
    assert r.error in (("Signal SIGSEGV",) if LINUX else ("Signal SIGSEGV", "Signal SIGBUS"))
    r = hostile("import faulthandler\nfaulthandler._sigsegv()", audit_hook=hook)
    assert r.error == "Signal SIGSEGV"
    r = hostile("import ctypes\nctypes.string_at(0)", audit_hook=hook)
    assert r.error == ("PermissionError" if hook else "Signal SIGSEGV")


def test_ctypes_cannot_reach_c_functions():
    r = hostile("import ctypes\nlibc = ctypes.CDLL(None)\nlibc.fork()")
    assert (r.error, r.message) == ("PermissionError", "sandbox: ctypes.dlsym is not allowed")
    if KERNEL:  # and where it could, the kernel refuses what it asks for
        code = "import ctypes\nprint(ctypes.CDLL(None, use_errno=True).fork(), ctypes.get_errno())"
        r = hostile(code, audit_hook=False)
        assert r.stdout == "-1 1\n"  # EPERM


# --- the layers, one by one ----------------------------------------------------------------------------


def test_audit_hook_policy(tmp_path):
    import fcntl  # POSIX only
    work = tmp_path / "work"
    work.mkdir()
    outside_dir = tmp_path / "out"
    outside_dir.mkdir()
    public = outside_dir / "public.txt"
    public.write_text("x")
    public.chmod(0o644)
    secret = outside_dir / "secret.txt"
    secret.write_text("x")
    secret.chmod(0o600)
    os.symlink(outside_dir, work / "link")
    hook = tripwire(os.path.realpath(work))
    w, r = os.O_WRONLY | os.O_CREAT | os.O_TRUNC, os.O_RDONLY

    allowed = [("open", (str(work / "a.txt"), "w", w)), ("open", (str(work / "sub" / ".." / "b.txt"), None, w)),
               ("open", (str(public), "r", r)), ("open", (5, "w", w)),  # an fd it already holds
               ("os.mkdir", (str(work / "d"), 0o777, -1)), ("os.rename", (str(work / "a"), str(work / "b"), -1, -1)),
               ("ctypes.dlopen", (None,)), ("import", ("math", None, [], [], [])), ("os.listdir", ("/",)),
               ("fcntl.fcntl", (3, fcntl.F_SETFL, os.O_ASYNC)), ("open", (str(work), None, r))]  # its own directory
    for event, args in allowed:
        hook(event, args)  # no exception

    refused = [("os.fork", ()), ("os.exec", ("/bin/sh", ["sh"], None)), ("os.system", (b"true",)),
               ("subprocess.Popen", ("sh", ["sh"], None, None)), ("os.kill", (1, 0)), ("os.killpg", (1, 0)),
               ("socket.__new__", (None, 2, 1, 0)), ("socket.connect", (None, ("127.0.0.1", 80))),
               ("ctypes.dlopen", ("libc.so.6",)), ("ctypes.dlsym", (None, "fork")), ("ctypes.cdata", (0,)),
               ("resource.setrlimit", (9, (-1, -1))), ("os.symlink", ("a", "b", -1)),
               ("open", (str(outside_dir / "new"), "w", w)),                  # outside
               ("open", (str(work / ".." / "out" / "new"), "a", os.O_APPEND)),  # outside through ..
               ("open", (str(work / "link" / "new"), None, w)),               # outside through a link
               ("open", (str(public), "r+", os.O_RDWR)),                      # read-write outside
               ("open", (str(outside_dir), None, r)),                         # a directory fd outside
               ("open", (str(secret), "r", r)),                               # not world-readable
               ("os.remove", (str(public), -1)), ("os.rename", (str(work / "a"), str(outside_dir / "a"), -1, -1)),
               ("os.chmod", (str(public), 0o777, -1)), ("shutil.rmtree", (str(outside_dir), None)),
               # metadata is refused everywhere, since a dir_fd= form hides where the path is
               ("os.chmod", (str(work / "a.txt"), 0o777, -1)), ("os.chmod", (3, 0o777, -1)),
               ("os.utime", ("x", None, None, 3)), ("os.setxattr", ("x", "user.a", b"1", 0, 3)),
               ("os.chown", ("x", 0, 0, 3)), ("fcntl.fcntl", (3, fcntl.F_SETOWN, 1)),  # a file signalling pid 1
               ("os.posix_spawn", ("/bin/sh", ["sh"], None)),
               ("os.link", (str(public), str(work / "l"), -1, -1, True)),
               ("os.truncate", (str(public), 0)), ("sqlite3.connect", (str(outside_dir / "db"),)),
               ("open", (str(outside_dir / "new"), None, os.O_CREAT)),     # made, though opened read-only
               ("open", (str(tmp_path / "work2" / "a"), "w", w))]           # a neighbour whose name begins alike
    if LINUX:  # a file's signal, and an owner given as a struct (F_SETSIG, F_SETOWN_EX)
        refused += [("fcntl.fcntl", (3, fcntl.F_SETSIG, signal.SIGTERM)), ("fcntl.fcntl", (3, 15, b"\0" * 8))]
    for event, args in refused:
        with pytest.raises(PermissionError, match="sandbox"):
            hook(event, args)


def test_audit_hook_judges_relative_paths_where_dir_fd_resolves_them(tmp_path):
    """`open`'s audit event does not say which directory a relative path starts from: os.open(..., dir_fd=top)
    resolves it from `top`, the hook from the working directory. So the hook refuses a relative path that climbs
    out with "..": one that stays beneath where it starts stays inside from any directory the program holds, and
    a change of working directory is checked like any path. Here the program sits in work/a/b, a directory of the
    hook's working directory, and holds a fd of work: "../escaped" from there is outside."""
    work = tmp_path / "work"
    (work / "a" / "b").mkdir(parents=True)
    program = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from nanoo1.confine import tripwire
work = {str(work.resolve())!r}
os.chdir(work + "/a/b")
top = os.open(work, os.O_RDONLY)
sys.addaudithook(tripwire(work))
for name, attempt in [
        ("write", lambda: os.open("../escaped", os.O_WRONLY | os.O_CREAT, dir_fd=top)),
        ("read", lambda: os.open("../..", os.O_RDONLY, dir_fd=top)),  # a directory fd outside
        ("mkdir", lambda: os.mkdir("../made", dir_fd=top)),
        ("chdir", lambda: os.chdir("..")), ("chdir out", lambda: os.chdir("/")),
        ("fchdir", lambda: os.fchdir(top))]:  # a directory fd it holds is inside: allowed
    try:
        attempt()
        print(name, "allowed")
    except PermissionError as e:
        print(name, "refused" if "sandbox" in str(e) else e)
os.close(os.open("a/b/c.txt", os.O_WRONLY | os.O_CREAT, dir_fd=top))  # beneath where it starts: allowed
print(sorted(os.listdir(os.path.dirname(work))), sorted(os.listdir(work + "/a/b")))
"""
    r = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    lines = r.stdout.split("\n")
    assert lines[:5] == [f"{name} refused" for name in ("write", "read", "mkdir", "chdir", "chdir out")], r
    assert lines[5:7] == ["fchdir allowed", "['work'] ['c.txt']"], r


def run_bpf(prog, nr: int, arch: int, arg0: int = 0, arg1: int = 0) -> int:
    """A tiny classic-BPF interpreter for the four instructions the seccomp filter uses."""
    data = {0: nr, 4: arch, 16: arg0 & 0xFFFFFFFF, 24: arg1 & 0xFFFFFFFF}
    a, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x20:  # load word
            a, pc = data[k], pc + 1
        elif code == 0x15:  # jump if equal
            pc += 1 + (jt if a == k else jf)
        elif code == 0x35:  # jump if greater or equal
            pc += 1 + (jt if a >= k else jf)
        elif code == 0x06:  # return
            return k
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x}")


def test_seccomp_filter_answers():
    ALLOW, EPERM, KILL = 0x7FFF0000, 0x00050001, 0x80000000
    x86, arm = 0xC000003E, 0xC00000B7
    prog = seccomp_filter("x86_64", pid=4242)
    # x86_64 numbers: read 0, getpid 39, socket 41, clone 56, fork 57, execve 59, kill 62, ptrace 101,
    # tgkill 234, prlimit64 302, clone3 435, io_uring_setup 425
    assert run_bpf(prog, 0, x86) == ALLOW
    assert run_bpf(prog, 39, x86) == ALLOW
    for nr in (41, 56, 57, 59, 101, 425, 435):
        assert run_bpf(prog, nr, x86) == EPERM, nr
    assert run_bpf(prog, 62, x86, arg0=4242) == ALLOW  # kill(itself)
    assert run_bpf(prog, 62, x86, arg0=0) == ALLOW     # kill(its own group: only itself)
    assert run_bpf(prog, 62, x86, arg0=4241) == EPERM  # kill(another process)
    assert run_bpf(prog, 62, x86, arg0=-1) == EPERM    # kill(everyone)
    assert run_bpf(prog, 234, x86, arg0=4242) == ALLOW and run_bpf(prog, 234, x86, arg0=1) == EPERM
    assert run_bpf(prog, 302, x86, arg0=0) == ALLOW and run_bpf(prog, 302, x86, arg0=1) == EPERM
    # metadata: chmod 90, fchmod 91, fchmodat 268, utimensat 280, setxattr 188, fchownat 260; IPC and what
    # outlives it: shmget 29, semget 64, msgget 68, mq_open 240, keyctl 250, memfd_create 319; mount 165
    for nr in (90, 91, 268, 280, 188, 260, 29, 64, 68, 240, 250, 319, 165):
        assert run_bpf(prog, nr, x86) == EPERM, nr
    assert run_bpf(prog, 157, x86, arg0=1) == EPERM   # prctl(PR_SET_PDEATHSIG)
    assert run_bpf(prog, 157, x86, arg0=15) == ALLOW  # prctl(PR_SET_NAME)
    for cmd in (8, 15, 10):  # fcntl(F_SETOWN, F_SETOWN_EX, F_SETSIG): a file that would signal another process
        assert run_bpf(prog, 72, x86, arg0=3, arg1=cmd) == EPERM, cmd
    assert run_bpf(prog, 72, x86, arg0=8, arg1=4) == ALLOW  # fcntl(F_SETFL) of fd 8
    assert run_bpf(prog, 0x40000000 + 57, x86) == EPERM  # the x32 alias of fork
    assert run_bpf(prog, 0x40000000, x86) == EPERM       # the first x32 number (read): every one is refused
    assert run_bpf(prog, 2, 0x40000003) == KILL          # i386 ABI (int 0x80): fork is 2 there
    prog = seccomp_filter("aarch64", pid=7)
    # aarch64 numbers: close 57 (fork on x86_64), socket 198, clone 220, execve 221, kill 129
    assert run_bpf(prog, 57, arm) == ALLOW
    for nr in (198, 220, 221):
        assert run_bpf(prog, nr, arm) == EPERM, nr
    assert run_bpf(prog, 129, arm, arg0=7) == ALLOW and run_bpf(prog, 129, arm, arg0=8) == EPERM
    for nr in (53, 194, 279):  # fchmodat, shmget, memfd_create
        assert run_bpf(prog, nr, arm) == EPERM, nr
    assert run_bpf(prog, 167, arm, arg0=1) == EPERM and run_bpf(prog, 167, arm, arg0=15) == ALLOW  # prctl
    assert run_bpf(prog, 25, arm, arg1=8) == EPERM and run_bpf(prog, 25, arm, arg1=4) == ALLOW  # fcntl
    assert run_bpf(prog, 220, x86) == KILL  # a syscall from another ABI


@pytest.mark.skipif(landlock_abi() < 6, reason="Landlock scopes signals from ABI 6 (Linux 6.12)")
def test_landlock_keeps_signals_in_the_domain(tmp_path):
    # Landlock alone (no seccomp, no hook): kill, and a file's SIGIO, reach no process outside the domain
    target = subprocess.Popen(["sleep", "30"])
    module = os.path.join(os.path.dirname(os.path.dirname(__file__)), "nanoo1", "confine.py")
    script = f"""
import ctypes, fcntl, importlib.util, os, signal
spec = importlib.util.spec_from_file_location("confine", {module!r})
confine = importlib.util.module_from_spec(spec)
spec.loader.exec_module(confine)
libc, zero = confine.open_libc(), ctypes.c_ulong(0)
libc.prctl(38, ctypes.c_ulong(1), zero, zero, zero)  # PR_SET_NO_NEW_PRIVS
confine.landlock(libc, {os.path.realpath(tmp_path)!r}, False)
os.kill(os.getpid(), 0)  # itself: allowed
""" + attempt_each({"kill": f"os.kill({target.pid}, signal.SIGTERM)",  # the owner is allowed; the SIGIO is not sent
                    "sigio": f"r, w = os.pipe(); fcntl.fcntl(r, fcntl.F_SETOWN, {target.pid}); "
                             "fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC); os.write(w, b'x')"})
    try:
        r = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=30)
        time.sleep(0.1)
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()
    assert (r.stdout, r.returncode) == ("kill refused\nsigio done\n", 0), r.stderr


@pytest.mark.skipif(not LINUX, reason="Landlock is Linux's")
def test_landlock_abi_finds_landlock_where_the_kernel_has_it():
    """landlock_abi decides whether a sandbox uses Landlock at all (and these tests what to expect of it): wherever
    the kernel has landlock_create_ruleset and Landlock turned on, asked here without its version flag (it fails
    otherwise than ENOSYS, no such call, or EOPNOTSUPP, turned off), the ABI version is at least 1."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(0))  # no attributes, no flags
    assert result == -1
    assert (landlock_abi() >= 1) == (ctypes.get_errno() not in (errno.ENOSYS, errno.EOPNOTSUPP))


def test_read_roots_open_no_more_than_they_name(monkeypatch, tmp_path):
    """Landlock grants reads beneath each of read_roots, so none is "/" nor a directory above the working directory
    (either would open its neighbours), here as an interpreter's prefix; a path that does not exist is left out,
    since no rule can name it."""
    work = tmp_path / "runs" / "work"
    work.mkdir(parents=True)
    monkeypatch.setattr(sys, "prefix", "/")
    monkeypatch.setattr(sys, "exec_prefix", str(tmp_path / "runs"))
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path / "missing"))
    roots = read_roots(os.path.realpath(work))
    assert "/" not in roots and not [root for root in roots if root.startswith(os.path.realpath(tmp_path))]
    assert os.path.realpath(sys.base_exec_prefix) in roots  # the one left as it was


def test_without_namespaces_it_may_rewrite_the_file_it_came_in():
    """Where there is no private tmpfs, the program may make no file but may write main.py, truncating it
    included (open for 'w'); RLIMIT_FSIZE bounds its size."""
    r = run_python("open('main.py', 'w').write('rewritten')\nprint(open('main.py').read())", namespaces=False)
    assert (r.stdout, r.error) == ("rewritten\n", None)


@pytest.mark.skipif(not LINUX, reason="Linux only")
def test_sandboxed_process_is_confined_by_the_kernel():
    # what the kernel says about the child itself: no capabilities, no new privileges, a seccomp filter
    r = run_python("for line in open('/proc/self/status'):\n    print(line.replace(':', ' ', 1), end='')")
    assert r.ok, r
    status = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines() if len(line.split()) > 1}
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0 and status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == ("2" if KERNEL else "0")  # 2 = SECCOMP_MODE_FILTER
    if not private_namespaces():
        pytest.skip("this system refuses the sandbox user and mount namespaces")
    code = ("import os\nst = os.statvfs('.')\nprint(st.f_blocks * st.f_frsize, st.f_files)\n"
            "print(*[os.readlink(f'/proc/self/ns/{ns}') for ns in ('user', 'mnt', 'ipc')])")
    r = run_python(code, file_mb=3)
    assert r.ok, r
    size, namespaces = r.stdout.splitlines()
    assert size.split() == [str(3 << 20), str(MAX_FILES)]  # its directory: a tmpfs of file_mb, MAX_FILES inodes
    ours = [os.readlink(f"/proc/self/ns/{ns}") for ns in ("user", "mnt", "ipc")]
    assert all(theirs != mine for theirs, mine in zip(namespaces.split(), ours))


@pytest.mark.skipif(not LINUX, reason="Linux only")
def test_its_tmpfs_and_ids_in_its_namespaces():
    """Its tmpfs takes no set-user-id bits, device files or executables (nosuid, nodev, noexec) and is open to its
    owner only (mode 0700); in its user namespace the program keeps the caller's user and group ids, not root's."""
    if not private_namespaces():
        pytest.skip("this system refuses the sandbox user and mount namespaces")
    code = ("import os, stat\nprint(os.statvfs('.').f_flag & (os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC), "
            "oct(stat.S_IMODE(os.stat('.').st_mode)), os.getuid(), os.getgid())")
    r = run_python(code)
    flags = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC
    assert r.stdout.split() == [str(flags), "0o700", str(os.getuid()), str(os.getgid())]


@pytest.mark.parametrize("args", [["--help"], [], ["a", "b"]])
def test_the_supervisor_run_by_hand_says_what_it_is(args):
    # supervise.py is started by run_many only; by hand it says so, without a traceback
    run = subprocess.run([sys.executable, "-m", "nanoo1.supervise", *args], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60, cwd=Path(__file__).parent.parent)  # the repository
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "sandbox's supervisor" in run.stderr and "run_python" in run.stderr
