"""Confining a process on Linux: rlimits, namespaces, Landlock, seccomp, and a Python audit hook.

The sandbox's child (supervise.py) calls `confine` before it runs the program; each layer below holds on its own, and
the program cannot undo one once set (seccomp refuses the syscalls that would):

  rlimits     CPU time, address space, size of each file, open files, processes, core files
  namespaces  a user + mount + IPC namespace of its own: its working directory becomes a tmpfs of
              `file_mb` (every file together, at most MAX_FILES of them) that vanishes with the process,
              and System V IPC it makes dies with it (unshare(2), mount(2), namespaces(7))
  Landlock    reads only beneath the working directory and the interpreter's own and system libraries;
              writes only in the working directory; no ptrace-like access to processes outside; from
              Linux 6.12 (ABI 6) no signal to them, SIGIO included, nor to their abstract Unix sockets
              (Linux 5.13+, https://docs.kernel.org/userspace-api/landlock.html)
  seccomp     a BPF filter returning EPERM for new processes and threads, exec, signals to others
              (kill and its kin, and naming a file's signal owner: fcntl F_SETOWN, F_SETOWN_EX, F_SETSIG),
              sockets, file metadata (chmod, chown, utime, xattrs), SysV/POSIX IPC, keyrings, memfd,
              mounts, and clearing the parent-death signal (seccomp(2), classic BPF)
  tripwire    an audit hook (PEP 578) that turns the same attempts into clear PermissionErrors

Everything is reached through ctypes, and this file imports only the standard library: the supervisor loads
it by path, since importing the package would import torch under the program's limits.
"""

import ctypes
import errno
import math
import os
import signal
import stat
import sys

MAX_FILES = 4096  # inodes of the private tmpfs: files and directories the program may make

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER = 0x20000, 0x08000000, 0x10000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS = 1, 22, 38
# fcntl commands that make a file signal a process of the caller's choosing when I/O is possible
# (O_ASYNC) or a lease breaks: its owner, or the signal sent (fcntl(2), Linux values)
_F_SETOWN, _F_SETSIG, _F_SETOWN_EX = 8, 10, 15

# Landlock file-system rights (linux/landlock.h), by the ABI version that added them.
_LANDLOCK_EXECUTE, _LANDLOCK_WRITE_FILE, _LANDLOCK_READ_FILE, _LANDLOCK_READ_DIR = 1, 2, 4, 8
_LANDLOCK_TRUNCATE = 1 << 14
_LANDLOCK_RIGHTS = {1: (1 << 13) - 1,         # EXECUTE, WRITE_FILE, READ_FILE, READ_DIR, REMOVE_*, MAKE_*
                    2: 1 << 13,               # REFER: link or move across directories
                    3: _LANDLOCK_TRUNCATE}
_LANDLOCK_FILE_RIGHTS = _LANDLOCK_EXECUTE | _LANDLOCK_WRITE_FILE | _LANDLOCK_READ_FILE | _LANDLOCK_TRUNCATE
_LANDLOCK_CREATE_RULESET, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT_SELF = 444, 445, 446  # same on every arch
# ABI 6 (Linux 6.12): what a process may not reach outside its domain: abstract Unix sockets, signals
_LANDLOCK_SCOPED = 1 | 2  # LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL

# Syscalls the program is refused (EPERM), as (x86_64, aarch64) numbers; None where an arch lacks one.
SECCOMP_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # AUDIT_ARCH_* of the syscall ABI
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
    # file metadata, which Landlock does not cover (anywhere, so also through a dir_fd or an fd)
    "chmod": (90, None), "fchmod": (91, 52), "fchmodat": (268, 53), "fchmodat2": (452, 452),
    "chown": (92, None), "fchown": (93, 55), "lchown": (94, None), "fchownat": (260, 54),
    "utime": (132, None), "utimes": (235, None), "futimesat": (261, None), "utimensat": (280, 88),
    "setxattr": (188, 5), "lsetxattr": (189, 6), "fsetxattr": (190, 7), "removexattr": (197, 14),
    "lremovexattr": (198, 15), "fremovexattr": (199, 16), "setxattrat": (463, 463),
    "removexattrat": (466, 466), "file_setattr": (469, 469),
    # what outlives a process: System V and POSIX IPC, kernel keyrings; and memory outside RLIMIT_AS
    "shmget": (29, 194), "shmat": (30, 196), "shmctl": (31, 195), "semget": (64, 190), "semop": (65, 193),
    "semctl": (66, 191), "semtimedop": (220, 192), "msgget": (68, 186), "msgsnd": (69, 189),
    "msgrcv": (70, 188), "msgctl": (71, 187), "mq_open": (240, 180), "mq_unlink": (241, 181),
    "mq_timedsend": (242, 182), "mq_timedreceive": (243, 183), "mq_notify": (244, 184),
    "add_key": (248, 217), "request_key": (249, 218), "keyctl": (250, 219),
    "memfd_create": (319, 279), "memfd_secret": (447, 447), "userfaultfd": (323, 282),
    # mounts (it holds capabilities in its user namespace until they are dropped), and paths by handle
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442), "open_tree_attr": (467, 467),
    "open_by_handle_at": (304, 265), "bpf": (321, 280), "perf_event_open": (298, 241),
}
# ... these only when aimed at another process (first argument neither 0 nor its own pid) ...
_SECCOMP_SELF_ONLY = {"kill": (62, 129), "tgkill": (234, 131), "rt_sigqueueinfo": (129, 138),
                      "rt_tgsigqueueinfo": (297, 240), "prlimit64": (302, 261)}
# ... and these only with one of these values of an argument (by its index): prctl(PR_SET_PDEATHSIG), which
# would let it outlive its caller; fcntl making a file signal another process (neither arch has fcntl64).
_SECCOMP_DENY_IF = {"prctl": ((157, 167), 0, (_PR_SET_PDEATHSIG,)),
                    "fcntl": ((72, 25), 1, (_F_SETOWN, _F_SETOWN_EX, _F_SETSIG))}


def confine(workdir: str, *, timeout: float, memory_mb: int, file_mb: int, parent: int,
            namespaces: bool = True, audit_hook: bool = True) -> None:
    """Confine this process to `workdir` with every layer this system has; raise if one that exists fails.

    parent: the caller's pid (the process is killed when it dies); namespaces=False skips them, as on a
    system that refuses unprivileged user namespaces (then no file may be made: Landlock bounds the disk).
    """
    set_limits(timeout, memory_mb, file_mb)
    if sys.platform == "linux":
        libc, ulong = open_libc(), ctypes.c_ulong
        private = namespaces and private_namespaces(libc, workdir, file_mb)
        # killed with the caller, should the caller die first (then nobody would enforce the wall clock)
        die_with_parent(libc, parent)
        # needed by Landlock and seccomp without privileges
        _call(libc.prctl(_PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)), "PR_SET_NO_NEW_PRIVS")
        if landlock_abi(libc):
            landlock(libc, workdir, private)
        # no capabilities: not root's, nor those it holds in its own user namespace
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        _call(libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")  # effective, permitted, inheritable = {}
        if os.uname().machine in SECCOMP_ARCH:
            seccomp(libc, seccomp_filter(os.uname().machine, os.getpid()))
    if audit_hook:
        sys.addaudithook(tripwire(workdir))


def die_with_parent(libc, parent: int) -> None:
    """SIGKILL this process when its parent dies (PR_SET_PDEATHSIG); exit at once if `parent` already has."""
    zero = ctypes.c_ulong(0)
    _call(libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), zero, zero, zero), "PR_SET_PDEATHSIG")
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def set_limits(timeout: float, memory_mb: int, file_mb: int) -> None:
    import resource  # POSIX only

    cpu = math.ceil(timeout) + 1
    for limit, soft, hard in [
        (resource.RLIMIT_CPU, cpu, cpu + 1),                    # backstop for the wall clock: SIGXCPU, then SIGKILL
        (resource.RLIMIT_AS, memory_mb << 20, memory_mb << 20),  # a memory bomb gets MemoryError
        (resource.RLIMIT_FSIZE, file_mb << 20, file_mb << 20),  # each file; a bigger write fails (EFBIG)
        (resource.RLIMIT_NOFILE, 64, 64),                       # cannot use up the system's open files
        (resource.RLIMIT_NPROC, 0, 0),                          # no new processes, for any user but root
        (resource.RLIMIT_CORE, 0, 0),                           # a crash writes no core file
    ]:
        current = resource.getrlimit(limit)[1]
        if current != resource.RLIM_INFINITY:  # never ask for more than we have
            soft, hard = min(soft, current), min(hard, current)
        try:
            resource.setrlimit(limit, (soft, hard))
        except (ValueError, OSError):
            if sys.platform == "linux":  # Linux has them all; other systems may refuse some (macOS: RLIMIT_AS)
                raise


def private_namespaces(libc, workdir: str, file_mb: int) -> bool:
    """New user, mount and IPC namespaces, and a tmpfs of file_mb over workdir; False if the system refuses."""
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWIPC) == 0:  # the same ids inside as outside
        maps = [("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")]
    elif uid == 0 and libc.unshare(_CLONE_NEWNS | _CLONE_NEWIPC) == 0:  # root may do without a user namespace
        maps = []
    else:
        return False
    try:
        for name, text in maps:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        # nothing mounted here reaches the caller's namespace
        _call(libc.mount(b"none", b"/", None, ctypes.c_ulong(_MS_REC | _MS_PRIVATE), None), "mount(private)")
        _call(libc.mount(b"tmpfs", os.fsencode(workdir), b"tmpfs", ctypes.c_ulong(_MS_NOSUID | _MS_NODEV | _MS_NOEXEC),
                         f"size={file_mb}m,nr_inodes={MAX_FILES},mode=700".encode()), "mount(tmpfs)")
    except OSError:  # a user namespace without the rights to use it (Ubuntu's AppArmor restriction)
        return False
    os.chdir(workdir)  # into the tmpfs; the old working directory is beneath it
    return True


def landlock_abi(libc=None) -> int:
    """The kernel's Landlock ABI version, 0 when it has none (before Linux 5.13, or disabled)."""
    if sys.platform != "linux":
        return 0
    libc = libc or open_libc()
    abi = libc.syscall(ctypes.c_long(_LANDLOCK_CREATE_RULESET), None, ctypes.c_long(0), ctypes.c_long(1))
    return max(abi, 0)


def read_roots(workdir: str) -> list[str]:
    """What the program may read besides its directory: the interpreter's installation (its venv and base,
    site-packages included; not what a .pth file adds), system libraries, CPU information, itself.

    Never "/" nor a directory holding the working directory (that would open its neighbours)."""
    candidates = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
                  "/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime", "/dev/null", "/dev/urandom",
                  "/sys/devices/system/cpu", "/proc/self"]
    roots = []
    for path in candidates:
        real = os.path.realpath(path) if path else ""
        if real and real != "/" and not (workdir + os.sep).startswith(real + os.sep) and os.path.exists(real):
            roots.append(real)
    return sorted(set(roots))


def landlock(libc, workdir: str, private: bool) -> None:
    """Handle every right this ABI knows; grant reads beneath read_roots, and all rights in workdir. From ABI 6
    also scope signals and abstract Unix sockets: the process reaches none outside its own domain.

    Without a private tmpfs the program gets no right to make files: it can write only main.py, whose
    size RLIMIT_FSIZE caps, so the disk stays bounded."""
    abi = landlock_abi(libc)
    handled = sum(bits for version, bits in _LANDLOCK_RIGHTS.items() if version <= abi)
    reads = _LANDLOCK_EXECUTE | _LANDLOCK_READ_FILE | _LANDLOCK_READ_DIR
    long = ctypes.c_long
    # struct landlock_ruleset_attr: handled_access_fs, handled_access_net (ABI 4, none handled), scoped (ABI 6);
    # the kernel takes a prefix of it, the first field alone for every ABI
    attr = (ctypes.c_uint64 * 3)(handled, 0, _LANDLOCK_SCOPED if abi >= 6 else 0)
    size = ctypes.sizeof(attr) if abi >= 6 else 8
    ruleset = _call(libc.syscall(long(_LANDLOCK_CREATE_RULESET), ctypes.byref(attr), long(size), long(0)),
                    "landlock_create_ruleset")

    class PathBeneath(ctypes.Structure):  # struct landlock_path_beneath_attr
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    own = handled if private else reads | _LANDLOCK_WRITE_FILE | _LANDLOCK_TRUNCATE
    rules = [(root, reads) for root in read_roots(workdir)] + [(workdir, own)]
    for path, rights in rules:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _LANDLOCK_FILE_RIGHTS  # a rule on a file may hold file rights only
        _call(libc.syscall(long(_LANDLOCK_ADD_RULE), long(ruleset), long(1),  # LANDLOCK_RULE_PATH_BENEATH
                           ctypes.byref(PathBeneath(rights & handled, fd)), long(0)), f"landlock_add_rule({path})")
        os.close(fd)
    _call(libc.syscall(long(_LANDLOCK_RESTRICT_SELF), long(ruleset), long(0)), "landlock_restrict_self")
    os.close(ruleset)


def seccomp_filter(arch: str, pid: int) -> list[tuple[int, int, int, int]]:
    """A classic-BPF seccomp filter as (code, jump_if_true, jump_if_false, k) instructions.

    It reads struct seccomp_data (nr at offset 0, arch at 4, args[i] at 16 + 8 i, low half first) and answers
    ALLOW, ERRNO(EPERM), or KILL for a syscall made through another ABI. Jumps count instructions skipped.
    """
    LOAD, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    ALLOW, DENY, KILL = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x80000000
    column = 0 if arch == "x86_64" else 1
    prog = [(LOAD, 0, 0, 4), (JEQ, 1, 0, SECCOMP_ARCH[arch]), (RET, 0, 0, KILL),  # e.g. 32-bit int 0x80 calls
            (LOAD, 0, 0, 0)]                                                      # A = syscall number
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
    for numbers, arg, values in _SECCOMP_DENY_IF.values():
        n = len(values)
        prog += [(JEQ, 0, n + 3, numbers[column]), (LOAD, 0, 0, 16 + 8 * arg)]  # A = low 32 bits of args[arg]
        prog += [(JEQ, n - i, 0, value) for i, value in enumerate(values)]     # any of them: to the DENY
        prog += [(RET, 0, 0, ALLOW), (RET, 0, 0, DENY)]
    return prog + [(RET, 0, 0, ALLOW)]


def seccomp(libc, prog) -> None:
    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    filters = (SockFilter * len(prog))(*prog)
    ulong, mode = ctypes.c_ulong, 2  # SECCOMP_MODE_FILTER
    _call(libc.prctl(_PR_SET_SECCOMP, ulong(mode), ctypes.byref(SockFprog(len(prog), filters)), ulong(0), ulong(0)),
          "seccomp")


def tripwire(workdir: str):
    """An audit hook refusing, with a clear PermissionError, what the kernel layers refuse anyway.

    It is not a wall: a program can get around any in-process check (ctypes can rewrite memory)."""
    blocked = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
               "subprocess.Popen",                              # new processes
               "os.kill", "os.killpg", "signal.pthread_kill",   # signals
               "resource.setrlimit", "resource.prlimit",        # its own limits
               "os.symlink",                                    # a link inside could point outside
               "os.chmod", "os.chown", "os.utime", "os.setxattr", "os.removexattr"}  # metadata, anywhere
    path_events = {"os.chdir", "os.link", "os.mkdir", "os.remove", "os.rename", "os.rmdir", "os.truncate",
                   "shutil.rmtree", "sqlite3.connect"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    signal_owner = {_F_SETOWN, _F_SETSIG, _F_SETOWN_EX} if sys.platform == "linux" else {6}  # macOS: F_SETOWN

    def climbs(path) -> bool:
        # A relative path leaving the directory it starts from. A `dir_fd=` call starts it from that fd's
        # directory, which the `open` event does not name, and the checks here from the working directory. One
        # that stays beneath where it starts stays inside from either, since every directory the program can
        # hold (its working directory, a directory fd) is inside: a directory outside is never opened, and
        # chdir and fchdir (an fd it holds) are checked like any path.
        path = os.fsdecode(path)
        return not os.path.isabs(path) and os.path.normpath(path).split(os.sep)[0] == ".."

    def inside(path) -> bool:
        real = os.path.realpath(os.fsdecode(path))  # through every link and ".."
        return not climbs(path) and (real == workdir or real.startswith(workdir + os.sep))

    def is_path(arg) -> bool:
        return isinstance(arg, (str, bytes, os.PathLike))

    def hook(event: str, args: tuple) -> None:
        if event in blocked or event.startswith("socket."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        # `import ctypes` must work (sympy needs it) and opens the main program (None); finding a C
        # function by name, loading a library or reading raw memory must not
        if event.startswith("ctypes.") and not (event == "ctypes.dlopen" and args[0] is None):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "fcntl.fcntl" and args[1] in signal_owner:  # a file that would signal another process
            raise PermissionError(f"sandbox: fcntl command {args[1]} is not allowed")
        if event == "open" and is_path(args[0]) and not inside(args[0]):
            path, mode, flags = args
            if climbs(path):
                raise PermissionError(f"sandbox: a relative path out of the directory it starts from: {path!r}")
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


def open_libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _call(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} failed: {os.strerror(err)}")
    return result
