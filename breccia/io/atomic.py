"""Atomic file writes: a failed write never leaves a half-written file in
place of a good one (DESIGN.md section 8)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator, Union

__all__ = ["atomic_write", "write_json_atomic"]

PathLike = Union[str, "os.PathLike[str]"]


def _fsync_dir(directory: str) -> None:
    # the rename is only durable once the directory entry is on disk; some
    # platforms (Windows) cannot open a directory: nothing to do there
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing; on success flush,
    fsync and ``os.replace`` it onto ``path``. On any error the temporary file
    is removed and an existing ``path`` is left untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp makes 0600 files; keep an existing file's mode, else 0644
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def write_json_atomic(path: PathLike, obj: Any) -> None:
    """``obj`` as indented JSON in ``path``, atomically."""
    with atomic_write(path) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


