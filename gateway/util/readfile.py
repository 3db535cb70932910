"""Bounded reads of the files an admin names: never a device, a FIFO or a directory.

Why: a path like /dev/zero read whole ends in a MemoryError, a FIFO blocks the reader forever,
and a directory used to read as "not found". Every configuration or list file goes through
here, so each gets the same checks and the same `file: problem` message.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from gateway.errors import ConfigError


def _problem(mode: int) -> str | None:
    """Why a file of this mode cannot be read as a configuration or list file (None: it can)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory (expected a file)"
    return "is not a regular file (a device, FIFO or socket)"


def file_problem(path: str | Path, limit: int, limit_key: str) -> str | None:
    """Stat-only check: why `path` is not a regular file of at most `limit` bytes (None: it is).

    For checks at configuration time; the read itself checks again (open_regular).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    problem = _problem(st.st_mode)
    if problem is None and st.st_size > limit:
        problem = too_large(limit, limit_key)
    return problem


def too_large(limit: int, limit_key: str) -> str:
    return f"larger than {limit} bytes ({limit_key})"


@contextlib.contextmanager
def open_regular(path: str | Path, limit: int, limit_key: str) -> Iterator[BinaryIO]:
    """Open `path` for reading if it is a regular file within `limit` bytes.

    O_NONBLOCK so that a FIFO fails the check instead of blocking the open until a writer
    comes; the type is checked on the open descriptor, so a swap after a stat cannot slip by.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError("file not found", str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", str(path)) from None
    try:
        st = os.fstat(fd)
        problem = _problem(st.st_mode)
        if problem is not None:
            raise ConfigError(problem, str(path))
        if st.st_size > limit:
            raise ConfigError(too_large(limit, limit_key), str(path))
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_capped(path: str | Path, limit: int, limit_key: str) -> bytes:
    """The whole file, refused if it is not a regular file or grows past `limit` bytes."""
    with open_regular(path, limit, limit_key) as f:
        try:
            data = f.read(limit + 1)   # a file growing while we read is still bounded
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", str(path)) from None
    if len(data) > limit:
        raise ConfigError(too_large(limit, limit_key), str(path))
    return data


def line_of(data: bytes, offset: int) -> int:
    """1-based line number of byte `offset` in `data`."""
    return data.count(b"\n", 0, offset) + 1
