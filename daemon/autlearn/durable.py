"""Durable writes and safe reads: atomic replace with file and directory fsync, capped reads that never block.

One guarantee for every file the daemon writes: after ``write_atomic`` returns, a power cut leaves the new
content under ``path``; before it returns, the old content (or no file). The data goes to a hidden temporary
name in the same directory (``.<name>.<pid>.<thread>.tmp``: the scan skips hidden and ``*.tmp`` names), is
fsynced, renamed over ``path``, and the directory is fsynced so that the rename itself survives. A failed write
(a full disk) removes its temporary file and raises the OSError.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path
from typing import BinaryIO, Callable

Writer = Callable[[BinaryIO], None]


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename or a new file in it) to the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(top: str | os.PathLike) -> None:
    """Flush every file and directory below `top` (and `top`), e.g. before the tree is renamed into place."""
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def write_atomic(path: str | os.PathLike, data: bytes | Writer) -> None:
    """Replace `path` with `data` (bytes, or a function that writes to the open binary file) durably."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def remove_temporaries(directory: str | os.PathLike) -> int:
    """Remove the temporary files that writes cut short by a crash left below `directory`; returns how many."""
    n = 0
    for dirpath, _, filenames in os.walk(directory):
        for name in filenames:
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    n += 1
                except OSError:
                    pass
    return n


def read_regular_file(path: str | os.PathLike, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """Read at most `max_bytes` + 1 bytes of a regular file, never blocking.

    Opened with O_NONBLOCK and checked with fstat *after* opening, so a FIFO, socket or device that took the
    file's place between a listing and the read is refused (OSError EINVAL) instead of hanging the caller;
    the cap keeps a file that grew meanwhile from filling memory. Returns the bytes and the opened file's stat
    (a caller that sees more than `max_bytes` bytes knows the file is over its limit)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)
