"""The compiled list index: a sorted array of 64-bit name hashes, mmap-able and shared.

This module is the file format and its reader (every worker); index_builder.py writes it.

Why this shape: a Python set of 1M names costs 100+ MB and must be rebuilt in every worker.
Here each name costs ~9 bytes (a 6-byte hash residue, a 1-byte combo id when there are at most
256 combos, ~2 bytes of bucket directory), lives in a file that every worker maps read-only
(the page cache holds one copy), and a lookup is one blake2b hash, one directory read and a
bisect over ~2 entries, whatever the list size.

File layout (little-endian; each array starts 8-byte aligned, zero padding between):
    magic b"SGIDX1\\0\\0" | uint64 header length | JSON header |
    hi uint{32|64}[count] | lo uint16[count] | vals uint{8|16|32}[count] (combo ids) |
    dir uint32[2**dir_bits + 1]
A key's 64-bit hash h is stored as its bucket b = h >> (64 - dir_bits) (implicit: the entry
sits in dir[b]..dir[b+1]) and its residue r = h mod 2**(64 - dir_bits), split as
hi = r >> 16, lo = r & 0xffff; entries are sorted by h. `hi` is uint32 when dir_bits >= 16
(every index over ~90k names), else uint64. So the full 64 bits are kept: two names whose
hashes collide would share an entry; with 5M names the chance that any pair collides is
~7e-7 and a random miss false-matches with probability ~3e-13 (as in version 1, which
stored h whole in 12 bytes and is refused here, so an old file is recompiled, not misread).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from gateway.lists import SCOPE_SELF, SCOPE_SUBS, Action, Rule

try:  # the optional C lookup (setup.py builds it where a compiler exists)
    from gateway.lists import _lookup
except ImportError:  # pragma: no cover - depends on the install
    _lookup = None  # type: ignore[assignment]

__all__ = ["FORMAT_VERSION", "MAGIC", "PREFIX", "Combo", "ListIndex", "Match", "align8",
           "key_hash", "layout"]

MAGIC = b"SGIDX1\0\0"
FORMAT_VERSION = 2
HI_FORMATS = {4: "I", 8: "Q"}
VAL_FORMATS = {1: "B", 2: "H", 4: "I"}
PREFIX = struct.Struct("<8sQ")

Combo = tuple[Rule, ...]
Match = list[tuple[int, Combo]]
IntArray = Sequence[int]


def key_hash(key: bytes) -> int:
    """The 64-bit hash a dotted key (b"www.example.com") is stored under."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def align8(n: int) -> int:
    """Where an array starts: 8-byte aligned for the uint64 view."""
    return (n + 7) & ~7


def layout(start: int, count: int, bits: int, hi_bytes: int, val_bytes: int
           ) -> tuple[int, int, int, int, int]:
    """Offsets of (hi, lo, vals, dir, end) for arrays starting at `start` (index.py's layout)."""
    hi_at = align8(start)
    lo_at = align8(hi_at + hi_bytes * count)
    vals_at = align8(lo_at + 2 * count)
    dir_at = align8(vals_at + val_bytes * count)
    return hi_at, lo_at, vals_at, dir_at, dir_at + 4 * ((1 << bits) + 1)


class ListIndex:
    """A read-only compiled index, backed by an mmap'd file or by bytes in memory.

    `match(key)` walks every suffix of a canonical key (lowercase, no trailing dot) from the
    full name down to the TLD and returns `[(offset, rules), ...]` for each level that has
    rules applying there: SELF-scoped rules only at offset 0, SUBS-scoped only above it.
    `probe(key)` returns the exact key's combo, or None.

    Both run in C (gateway/lists/_lookup.c, `accelerated` is True) when that extension is
    built and the host is little-endian, unless `pure` is set; `pure=None` reads
    SAFEGATE_PURE from the environment (1 forces the pure-Python closures, the reference).
    """

    match: Callable[[bytes], Match]
    probe: Callable[[bytes], Combo | None]

    def __init__(self, buffer: bytes | mmap.mmap, *, source: str = "<bytes>",
                 pure: bool | None = None) -> None:
        self.source = source
        self._buffer = buffer
        if pure is None:
            pure = os.environ.get("SAFEGATE_PURE", "") not in ("", "0")
        self.accelerated = not pure and _lookup is not None and sys.byteorder == "little"
        self._matcher: _lookup.Matcher | None = None
        base = memoryview(buffer)
        self._views: list[memoryview] = [base]
        try:
            self._load(base)
        except BaseException:
            self.close()
            raise

    def _load(self, base: memoryview) -> None:
        if len(base) < PREFIX.size:
            raise ValueError(f"{self.source}: not a SafeGate list index (too short)")
        magic, header_len = PREFIX.unpack_from(base, 0)
        if magic != MAGIC:
            raise ValueError(f"{self.source}: not a SafeGate list index (bad magic)")
        end = PREFIX.size + header_len
        try:
            header = json.loads(bytes(base[PREFIX.size : end]))
            version = header.get("version")
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"{self.source}: corrupt index header ({exc})") from None
        if version != FORMAT_VERSION:
            raise ValueError(f"{self.source}: unsupported index version {version}")
        try:
            count = int(header["count"])
            bits = int(header["dir_bits"])
            hi_fmt = HI_FORMATS[int(header["hi_bytes"])]
            val_bytes = int(header["val_bytes"])
            val_fmt = VAL_FORMATS[val_bytes]
            raw_combos = header["combos"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.source}: corrupt index header ({exc})") from None
        if not 0 < bits < 48 or (hi_fmt == "I") != (bits >= 16):
            raise ValueError(f"{self.source}: corrupt index header (dir_bits {bits})")
        hi_bytes = int(header["hi_bytes"])
        hi_at, lo_at, vals_at, dir_at, total = layout(end, count, bits, hi_bytes, val_bytes)
        if len(base) != total:
            raise ValueError(f"{self.source}: truncated or corrupt index ({len(base)} != {total})")
        spans = ((hi_at, hi_at + hi_bytes * count, hi_fmt), (lo_at, lo_at + 2 * count, "H"),
                 (vals_at, vals_at + val_bytes * count, val_fmt), (dir_at, total, "I"))
        self.header: dict[str, Any] = header
        self.size = count
        self.combos: list[Combo] = [
            tuple(Rule(str(c), int(s), Action(int(a)), bool(m)) for c, s, a, m in combo)
            for combo in raw_combos
        ]
        self.entries_by_category: dict[str, int] = {
            str(k): int(v) for k, v in header.get("entries_by_category", {}).items()
        }
        self.build: dict[str, Any] = header.get("build", {})
        self_rules = [tuple(r for r in c if r.scope & SCOPE_SELF) for c in self.combos]
        subs_rules = [tuple(r for r in c if r.scope & SCOPE_SUBS) for c in self.combos]
        if self.accelerated:
            hi, lo, vals, dirv = (base[start:stop] for start, stop, _ in spans)
            self._views += (hi, lo, vals, dirv)
            self._matcher = _lookup.Matcher(hi, lo, vals, dirv, hi_bytes, val_bytes, 64 - bits,
                                            self_rules, subs_rules, self.combos)
            self.match = self._matcher.match
            self.probe = self._matcher.probe
            return
        his, los, values, directory = (self._view(base, *span) for span in spans)
        keys = _Keys(his, los, 64 - bits)
        self.match = _make_match(keys, values, directory, self_rules, subs_rules)
        self.probe = _make_probe(keys, values, directory, self.combos)

    def _view(self, base: memoryview, start: int, stop: int, fmt: str) -> IntArray:
        """A typed view of [start, stop); a copied, byte-swapped array on big-endian hosts."""
        view = base[start:stop]
        self._views.append(view)
        if sys.byteorder == "little":
            cast: memoryview = view.cast(fmt)  # type: ignore[call-overload]
            self._views.append(cast)
            return cast
        swapped = array(fmt, view.tobytes())  # pragma: no cover - no big-endian CI
        swapped.byteswap()  # pragma: no cover
        return swapped  # pragma: no cover

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, pure: bool | None = None) -> ListIndex:
        """Map a compiled index file read-only; pages are shared with every other mapper."""
        path = os.fspath(path)
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise ValueError(f"{path}: empty file, not a SafeGate list index")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            mm.madvise(mmap.MADV_RANDOM)  # lookups are random: readahead would only bloat RSS
        return cls(mm, source=path, pure=pure)

    @classmethod
    def from_bytes(cls, data: bytes, *, pure: bool | None = None) -> ListIndex:
        """An index held in memory (tests, tiny lists, `to_bytes()` output)."""
        return cls(bytes(data), pure=pure)

    def close(self) -> None:
        """Release the mapping now instead of at garbage collection (lookups then fail)."""
        if self._matcher is not None:
            self._matcher.close()  # drops its buffer exports, else release() below fails
        for view in reversed(self._views):
            view.release()
        self._views.clear()
        if isinstance(self._buffer, mmap.mmap) and not self._buffer.closed:
            self._buffer.close()

    def __enter__(self) -> ListIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return (f"<ListIndex {self.source} entries={self.size} combos={len(self.combos)}"
                f" lookup={'c' if self.accelerated else 'python'}>")


class _Keys(NamedTuple):
    """The sorted key arrays and how a hash splits into bucket, hi and lo."""

    hi: IntArray
    lo: IntArray
    shift: int  # 64 - dir_bits: h >> shift is the bucket, h & (2**shift - 1) the residue


def _make_find(keys: _Keys, dirv: IntArray) -> Callable[[int], int]:
    """Where hash `h` is stored, or -1: the bucket's slice of `hi` is bisected, then the few
    entries with an equal `hi` (almost always one) compare `lo`."""
    his, los, shift = keys
    rmask = (1 << shift) - 1
    bisect = bisect_left

    def find(h: int) -> int:
        b = h >> shift
        lo = dirv[b]
        end = dirv[b + 1]
        if lo == end:
            return -1
        r = h & rmask
        t = r >> 16
        i = bisect(his, t, lo, end)
        if i == end or his[i] != t:
            return -1
        low = r & 0xFFFF
        while los[i] != low:
            i += 1
            if i == end or his[i] != t:
                return -1
        return i

    return find


def _make_match(
    keys: _Keys,
    vals: IntArray,
    dirv: IntArray,
    self_rules: list[Combo], subs_rules: list[Combo]
) -> Callable[[bytes], Match]:
    """The per-query lookup, as a closure so every name it touches is a fast local."""
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes
    his, los, shift = keys
    rmask = (1 << shift) - 1
    bisect = bisect_left

    def match(key: bytes) -> Match:
        out: Match = []
        off = 0
        rules_at = self_rules
        find = key.find
        while True:
            h = from_bytes(blake2b(key[off:] if off else key, digest_size=8).digest(), "little")
            b = h >> shift
            lo = dirv[b]
            end = dirv[b + 1]
            if lo != end:
                r = h & rmask
                t = r >> 16
                i = bisect(his, t, lo, end)
                if i < end and his[i] == t:  # inlined _make_find: this is the query path
                    low = r & 0xFFFF
                    while los[i] != low:
                        i += 1
                        if i == end or his[i] != t:
                            break
                    else:
                        rules = rules_at[vals[i]]
                        if rules:
                            out.append((off, rules))
            off = find(b".", off) + 1
            if not off:
                return out
            rules_at = subs_rules

    return match


def _make_probe(
    keys: _Keys, vals: IntArray, dirv: IntArray, combos: list[Combo]
) -> Callable[[bytes], Combo | None]:
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes
    find = _make_find(keys, dirv)

    def probe(key: bytes) -> Combo | None:
        i = find(from_bytes(blake2b(key, digest_size=8).digest(), "little"))
        return None if i < 0 else combos[vals[i]]

    return probe
