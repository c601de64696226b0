"""Atomic file writes: a crash or a kill leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path, data) -> Path:
    """Write `data` to `path` through a temp file in the same folder, flushed to disk, then renamed over it.

    data: str (UTF-8 text), bytes, or a function that writes the file at the path it is given
    (`lambda p: torch.save(obj, p)`, `lambda p: save_file(tensors, p)`), so large files stream to disk."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            os.write(fd, data.encode("utf-8") if isinstance(data, str) else data)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
