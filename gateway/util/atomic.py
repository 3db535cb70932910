"""Replacing a file so that a reader, or the file after a power cut, is the old one or the new
one, never a mix or an empty file: write a temporary file in the same directory, fsync it,
rename it over the target, fsync the directory (the rename itself must reach the disk)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

Chunk = bytes | bytearray | memoryview


def atomic_write(path: str | os.PathLike[str], data: str | Chunk | Iterable[Chunk], *,
                 mode: int | None = None, encoding: str = "utf-8") -> None:
    """Replace `path` with `data` (text is encoded with `encoding`; an iterable of buffers is
    written piece by piece, so a large array is never copied into one bytes object).

    `mode`: the new file's exact permissions, set before any byte is in it (0o600 keeps a
    secret private from the start; 0o644 lets a resolver running as another user read an
    export whatever the umask); None creates it as open() would. The parent directory is
    created if missing. On any error the temporary file is removed and `path` is untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_temp(target, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, str):
                f.write(data.encode(encoding))
            elif isinstance(data, bytes | bytearray | memoryview):
                f.write(data)
            else:
                for chunk in data:
                    f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def durable_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename `src` (a file written and checked aside) over `dst`, with `src`'s bytes and the
    rename both on disk when this returns."""
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or a new name in `directory` durable (where directories can be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(target: Path, mode: int | None) -> tuple[Path, int]:
    """A new, uniquely named file beside `target` (two writers never share a temporary)."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o666 if mode is None else mode & 0o600)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        if mode is not None:
            try:
                os.fchmod(fd, mode)
            except BaseException:
                os.close(fd)
                tmp.unlink()
                raise
        return tmp, fd
