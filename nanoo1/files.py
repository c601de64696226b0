"""Atomic file writes: a crash or a kill leaves either the old file or the new one, never half of one; and the
check that a directory a run will write to can be made, done before the run's work."""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path


_LEFTOVER = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # `atomic_write`'s temp file: mkstemp(prefix=".{name}.", suffix=".tmp")


def _mode(path: Path) -> int:
    """The permissions the file should get: the old file's, else those open() gives a new file (0o666 less the
    umask). mkstemp's temp file is 0o600, which would keep every other user from reading a checkpoint."""
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, data) -> Path:
    """Write `data` to `path` through a temp file in the same folder, flushed to disk, then renamed over it.

    data: str (UTF-8 text), bytes, or a function that writes the file at the path it is given
    (`lambda p: torch.save(obj, p)`, `lambda p: save_file(tensors, p)`), so large files stream to disk.
    The file gets the old file's permissions, or a new file's."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            fd = os.open(tmp, os.O_RDWR)  # to flush it: Windows flushes only a descriptor open for writing
        else:  # os.write may write less than asked (a full disk, 2 GB a call): on from where it stopped
            view = memoryview(data.encode("utf-8") if isinstance(data, str) else data)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(tmp, _mode(path))
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def remove_leftovers(directory) -> list[Path]:
    """Delete the temp files `atomic_write` left under `directory` (at any depth) when a kill (SIGKILL, the OOM
    killer, a preempted job) stopped it before its rename: mkstemp's names, `.{name}.` and 8 characters of
    [a-z0-9_] then `.tmp`; returns them. Only for a directory nothing writes to now: a resumed run's, before it
    writes."""
    found = [p for p in Path(directory).rglob(".*.tmp") if p.is_file() and _LEFTOVER.fullmatch(p.name)]
    for p in found:
        p.unlink()
    return found


def check_directory(path) -> None:
    """NotADirectoryError when a file stands at `path` or above it, so that a run that would write its results
    there fails before its work, not after."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"{path}: {p} is a file, not a directory")
            return
