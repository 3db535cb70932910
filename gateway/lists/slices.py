"""Cutting list files into slices parsed on their own (maybe in worker processes).

Why slices: a national list is hundreds of MB; parsed whole it would be millions of Python
strings at once. A slice of ~2 MB ends after a newline, knows its first line number (for
error messages), and is re-read by whoever parses it, so only offsets cross processes.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import BinaryIO, NamedTuple, TypeVar

from gateway.errors import ConfigError
from gateway.lists.catalog import LIST_BYTES_KEY, Catalog, list_file_error
from gateway.util.readfile import open_regular

__all__ = ["Task", "bounded_map", "slice_tasks"]

T = TypeVar("T")
R = TypeVar("R")


class Task(NamedTuple):
    """One slice of one list file, parsed and hashed on its own (maybe in a worker)."""

    source: int
    path: str
    format: str
    start: int  # byte offset, always at a line start
    stop: int
    first_line: int  # 1-based number of the slice's first line
    limit: int  # limits.files.list_bytes: the file is opened again, and checked again


def _slices(f: BinaryIO, slice_bytes: int) -> Iterator[tuple[int, int, int]]:
    """(start, stop, first line) of slices of about `slice_bytes`, cut after a newline;
    read in blocks, so a national-size file is never held whole."""
    start, first_line, pos, lines = 0, 1, 0, 0
    while True:
        block = f.read(max(slice_bytes, 1 << 16))
        if not block:
            break
        cut = 0
        while True:
            want = start + slice_bytes - pos
            nl = block.find(b"\n", max(cut, want)) if want < len(block) else -1
            if nl < 0:
                break
            lines += block.count(b"\n", cut, nl + 1)
            yield start, pos + nl + 1, first_line
            first_line += lines
            lines = 0
            start = pos + nl + 1
            cut = nl + 1
        lines += block.count(b"\n", cut)
        pos += len(block)
    if pos > start or pos == 0:
        yield start, pos, first_line


def slice_tasks(catalog: Catalog, slice_bytes: int) -> Iterator[Task]:
    """Every source in slices of about `slice_bytes` (RPZ files whole: RPZ carries state
    across lines); slices bound the memory of parsing, and let workers share a file."""
    for n, source in enumerate(catalog.sources()):
        path = str(source.path)
        try:
            with open_regular(source.path, catalog.list_bytes, LIST_BYTES_KEY) as f:
                size = os.fstat(f.fileno()).st_size
                pieces = ([(0, size, 1)] if source.format == "rpz"
                          else list(_slices(f, slice_bytes)))
        except ConfigError as exc:
            raise list_file_error(source.path, exc.message, str(catalog.path),
                                  source.line) from None
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", path) from None
        for start, stop, first_line in pieces:
            yield Task(n, path, source.format, start, stop, first_line, catalog.list_bytes)


def bounded_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int
                ) -> Iterator[R]:
    """pool.map, but with at most `ahead` results waiting: parsed slices that the builder has
    not taken yet would otherwise pile up in memory when the workers outrun it."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
