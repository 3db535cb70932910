"""Cutting list files into slices parsed on their own (maybe in worker processes).

Why slices: a national list is hundreds of MB; parsed whole it would be millions of Python
strings at once. A slice of ~2 MB ends after a newline, knows its first line number (for
error messages), and is re-read by whoever parses it, so only offsets cross processes.

RPZ files are sliced too, though a zone file carries state across lines ($ORIGIN, the SOA
owner, the previous owner, parentheses): the parent scans the file once, cuts only outside
parentheses, and hands each slice the state in force there. Only slices that can change
$ORIGIN, the apex or the parentheses (they hold a `$`, `(`, `)`, `"` or an SOA token) are
parsed in the parent; those it cuts anywhere, passing the owner too. A plain slice (a
national list of `name CNAME .` lines) is only searched, and cut before a line that names
its own owner; if none comes within another `slice_bytes`, the parent parses on, so a slice
never grows much past twice the size asked whatever the file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import BinaryIO, NamedTuple, TypeVar

from gateway.errors import ConfigError
from gateway.lists.catalog import LIST_BYTES_KEY, Catalog, list_file_error
from gateway.lists.rpz import RpzState, one_line_record, parse_rpz
from gateway.util.readfile import open_regular

__all__ = ["RpzStart", "Task", "bounded_map", "decode_lines", "slice_tasks"]

T = TypeVar("T")
R = TypeVar("R")
RpzStart = tuple[str | None, str | None, str | None, str]  # $ORIGIN, first, apex, owner

# What can change the state a slice of RPZ needs: a directive, parentheses, a quote (which
# hides parentheses), an SOA token. Searched with bytes.find, not a regex: ~50x faster, and
# the parent searches every byte of a national list.
_STATEFUL_BYTES = (b"$", b"(", b")", b'"', b"\xc5\xbf")  # U+017F has upper case S: "ſoa"
# Bytes no SOA token can have next to it: "soa" between them is part of a name (soap.test)
_IN_NAME = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.*@-")
# First bytes of a line that surely starts a record naming its own owner
_OWNER_FIRST = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789*_.@-")


class Task(NamedTuple):
    """One slice of one list file, parsed and hashed on its own (maybe in a worker)."""

    source: int
    path: str
    format: str
    start: int  # byte offset, always at a line start
    stop: int
    first_line: int  # 1-based number of the slice's first line
    limit: int  # limits.files.list_bytes: the file is opened again, and checked again
    rpz: RpzStart | None = None  # RPZ only: the state in force at `start`


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


def decode_lines(data: bytes, at_file_start: bool) -> tuple[list[str], list[int]]:
    """Lines of a UTF-8 file (or slice), and the 1-based numbers of lines that were not
    valid UTF-8 (those are blanked, so the parser never sees U+FFFD)."""
    try:
        text = data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        valid = False
    if at_file_start and text.startswith("\ufeff"):
        text = text[1:]
    # split("\n"), not splitlines(): line numbers must agree with editors and grep
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the text ends with a newline; that is not one more line
    bad: list[int] = []
    if not valid:
        bad = [no for no, line in enumerate(lines, 1) if "\ufffd" in line]
        for no in bad:
            lines[no - 1] = ""
    return lines, bad


class _Reader:
    """A file read forward in blocks, handed out as runs of whole lines."""

    def __init__(self, f: BinaryIO, block: int) -> None:
        self.f, self.block = f, block
        self.buf, self.i, self.pos, self.eof = b"", 0, 0, False  # pos: file offset of i

    def _more(self) -> bool:
        """One more block onto the buffer (what was taken is dropped); False at the end."""
        more = b"" if self.eof else self.f.read(self.block)
        if not more:
            self.eof = True
            return False
        self.buf, self.i = self.buf[self.i:] + more, 0
        return True

    def take(self, n: int, peek: bool = False) -> bytes:
        """At least `n` bytes (fewer at the end), through the end of the line they end in;
        with `peek`, they are left to be taken again."""
        while len(self.buf) - self.i < n and self._more():
            pass
        rel = max(n, 1) - 1  # relative to i, which _more moves
        while True:
            nl = self.buf.find(b"\n", self.i + rel)
            if nl >= 0:
                end = nl + 1
                break
            rel = max(rel, len(self.buf) - self.i)
            if not self._more():
                end = len(self.buf)
                break
        out = self.buf[self.i:end]
        if not peek:
            self.i = end
            self.pos += len(out)
        return out


def _last_stateful(data: bytes) -> int:
    """Offset of the last byte in `data` that may change $ORIGIN, the apex or the
    parentheses, or -1 (a false hit costs only some parsing in the parent)."""
    last = max(data.rfind(b) for b in _STATEFUL_BYTES)
    low = data.lower()
    i = low.find(b"soa", last + 1)
    while i >= 0:
        if (i == 0 or low[i - 1] not in _IN_NAME) and (i + 3 == len(low)
                                                       or low[i + 3] not in _IN_NAME):
            last = i
        i = low.find(b"soa", i + 1)
    return last


def _owner_line(line: bytes) -> bool:
    """True if `line` (met outside parentheses) is a whole record that sets the owner
    whatever came before: a slice may start there without knowing the previous owner."""
    if not line or line[0] not in _OWNER_FIRST:
        return False
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return False  # blanked as not UTF-8: it would set no owner
    if "\ufffd" in text:
        return False  # blanked too if the file (or slice) has a bad byte anywhere
    # one-line: an unbalanced record would set no owner
    return one_line_record(text) if '"' in text or "(" in text or ")" in text else True


def _rpz_slices(f: BinaryIO, slice_bytes: int) -> Iterator[tuple[int, int, int, RpzStart]]:
    """(start, stop, first line, state at start) of slices of an RPZ file of about
    `slice_bytes` (see the module docstring); memory stays within about two slices."""
    reader = _Reader(f, max(slice_bytes, 1 << 16))
    state = RpzState()
    start, first_line = 0, 1

    def feed(data: bytes, at_file_start: bool) -> None:
        for _ in parse_rpz(decode_lines(data, at_file_start)[0], state, keep_open=True):
            pass

    while True:
        begin = state.start()  # its owner is stale after a plain slice, and not needed
        chunk = reader.take(slice_bytes, peek=True)
        if not chunk and start > 0:
            return
        last = _last_stateful(chunk)
        parsing = last >= 0
        if parsing:  # parse through the last line that may change the state, cut right after
            nl = chunk.find(b"\n", last)
            chunk = reader.take(len(chunk) if nl < 0 else nl + 1)
            feed(chunk, start == 0)
        else:
            chunk = reader.take(len(chunk))
        parts, size = [chunk], len(chunk)
        while True:  # extend the slice to a line where the next one can start
            nxt = reader.take(1, peek=True)
            if not nxt:
                break
            if parsing and state.pending is None:
                break  # the owner is known exactly: it goes with the slice
            if not parsing and _owner_line(nxt):
                break
            line = reader.take(1)
            parts.append(line)
            size += len(line)
            if parsing:
                feed(line, False)
            elif size > 2 * slice_bytes or _last_stateful(line) >= 0:
                feed(b"".join(parts), start == 0)  # the slice so far, then line by line
                parsing = True
        yield start, reader.pos, first_line, begin
        first_line += sum(p.count(b"\n") for p in parts)
        start = reader.pos
        if not chunk:
            return


def slice_tasks(catalog: Catalog, slice_bytes: int) -> Iterator[Task]:
    """Every source in slices of about `slice_bytes` (RPZ ones with the state each needs);
    slices bound the memory of parsing, and let workers share a file."""
    for n, source in enumerate(catalog.sources()):
        path = str(source.path)
        try:
            with open_regular(source.path, catalog.list_bytes, LIST_BYTES_KEY) as f:
                pieces: list[tuple[int, int, int, RpzStart | None]]
                if source.format == "rpz":
                    pieces = list(_rpz_slices(f, slice_bytes))
                else:
                    pieces = [(a, b, c, None) for a, b, c in _slices(f, slice_bytes)]
        except ConfigError as exc:
            raise list_file_error(source.path, exc.message, str(catalog.path),
                                  source.line) from None
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", path) from None
        for start, stop, first_line, rpz in pieces:
            yield Task(n, path, source.format, start, stop, first_line, catalog.list_bytes,
                       rpz)


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
