"""gateway/util/atomic.py: a replaced file is the old one or the new one, never a mix."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.util.atomic import atomic_write, durable_replace


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_writes_bytes_text_and_chunks(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file.bin"          # a missing parent is created
    atomic_write(path, b"one")
    assert path.read_bytes() == b"one"
    atomic_write(path, "zwei\n")
    assert path.read_text() == "zwei\n"
    atomic_write(path, (b"dr", bytearray(b"e"), memoryview(b"i")))
    assert path.read_bytes() == b"drei"
    assert _siblings(path) == ["file.bin"]        # no temporary left behind


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    """A write that fails half way (a full disk, a crash of the producer) leaves the old
    file whole and no temporary file beside it."""
    path = tmp_path / "feed.json"
    path.write_bytes(b"old contents")

    def chunks() -> Iterator[bytes]:
        yield b"new, half "
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, chunks())
    assert path.read_bytes() == b"old contents"
    assert _siblings(path) == ["feed.json"]


def test_a_reader_holding_the_old_file_keeps_reading_it(tmp_path: Path) -> None:
    """The target is replaced by a rename, never rewritten in place: an open (or mapped)
    old file, like the gateway's list index, keeps its bytes."""
    path = tmp_path / "lists.sgidx"
    atomic_write(path, b"A" * 4096)
    with open(path, "rb") as old:
        atomic_write(path, b"B" * 10)
        assert old.read() == b"A" * 4096
    assert path.read_bytes() == b"B" * 10


def test_mode_is_exact_and_private_from_the_start(tmp_path: Path) -> None:
    secret = tmp_path / "reports-csrf.key"
    atomic_write(secret, "00" * 32, mode=0o600)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    export = tmp_path / "zone.rpz"
    old = os.umask(0o077)
    try:
        atomic_write(export, "zone\n", mode=0o644)   # read by a resolver running as another user
    finally:
        os.umask(old)
    assert stat.S_IMODE(export.stat().st_mode) == 0o644


def test_default_mode_follows_the_umask_like_open(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a", b"x")
        with open(tmp_path / "b", "wb"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode == (tmp_path / "b").stat().st_mode


def test_durable_replace_moves_a_checked_file_into_place(tmp_path: Path) -> None:
    src, dst = tmp_path / ".subscribers.csv.new", tmp_path / "subscribers.csv"
    dst.write_text("old\n")
    src.write_text("new\n")
    durable_replace(src, dst)
    assert dst.read_text() == "new\n" and not src.exists()
