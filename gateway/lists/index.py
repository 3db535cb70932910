"""The compiled list index: a sorted array of 64-bit name hashes, mmap-able and shared.

This module is the file format and its reader (every worker); index_builder.py writes it.

Why this shape: a Python set of 1M names costs 100+ MB and must be rebuilt in every worker.
Here each name costs 12 bytes of hash and combo id plus ~2 bytes of bucket directory, lives in
a file that every worker maps read-only (the page cache holds one copy), and a lookup is one
blake2b hash, one directory read and a bisect over ~2 entries, whatever the list size.

File layout (little-endian):
    magic b"SGIDX1\\0\\0" | uint64 header length | JSON header | zero padding to 8 |
    keys uint64[count] (sorted) | vals uint32[count] (combo ids) | dir uint32[2**dir_bits + 1]
`dir[b]` is the index of the first key whose top `dir_bits` bits are >= b.

Two names whose 64-bit hashes collide would share an entry; with 5M names the chance that
any pair collides is ~7e-7 and a random miss false-matches with probability ~3e-13.
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
from typing import Any, Literal

from gateway.lists import SCOPE_SELF, SCOPE_SUBS, Action, Rule

__all__ = ["FORMAT_VERSION", "MAGIC", "PREFIX", "Combo", "ListIndex", "Match", "align8",
           "key_hash"]

MAGIC = b"SGIDX1\0\0"
FORMAT_VERSION = 1
PREFIX = struct.Struct("<8sQ")

Combo = tuple[Rule, ...]
Match = list[tuple[int, Combo]]
IntArray = Sequence[int]


def key_hash(key: bytes) -> int:
    """The 64-bit hash a dotted key (b"www.example.com") is stored under."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def align8(n: int) -> int:
    """Where the key array starts after the header: 8-byte aligned for the uint64 view."""
    return (n + 7) & ~7


class ListIndex:
    """A read-only compiled index, backed by an mmap'd file or by bytes in memory.

    `match(key)` walks every suffix of a canonical key (lowercase, no trailing dot) from the
    full name down to the TLD and returns `[(offset, rules), ...]` for each level that has
    rules applying there: SELF-scoped rules only at offset 0, SUBS-scoped only above it.
    `probe(key)` returns the exact key's combo, or None.
    """

    match: Callable[[bytes], Match]
    probe: Callable[[bytes], Combo | None]

    def __init__(self, buffer: bytes | mmap.mmap, *, source: str = "<bytes>") -> None:
        self.source = source
        self._buffer = buffer
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
            count = int(header["count"])
            bits = int(header["dir_bits"])
            raw_combos = header["combos"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.source}: corrupt index header ({exc})") from None
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"{self.source}: unsupported index version {header.get('version')}")
        keys_at = align8(end)
        vals_at = keys_at + 8 * count
        dir_at = vals_at + 4 * count
        total = dir_at + 4 * ((1 << bits) + 1)
        if len(base) != total:
            raise ValueError(f"{self.source}: truncated or corrupt index ({len(base)} != {total})")
        keys = self._view(base, keys_at, vals_at, "Q")
        vals = self._view(base, vals_at, dir_at, "I")
        dirv = self._view(base, dir_at, total, "I")
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
        self.match = _make_match(keys, vals, dirv, 64 - bits, self_rules, subs_rules)
        self.probe = _make_probe(keys, vals, dirv, 64 - bits, self.combos)

    def _view(self, base: memoryview, start: int, stop: int, fmt: Literal["Q", "I"]) -> IntArray:
        """A typed view of [start, stop); a copied, byte-swapped array on big-endian hosts."""
        view = base[start:stop]
        self._views.append(view)
        if sys.byteorder == "little":
            cast = view.cast(fmt)
            self._views.append(cast)
            return cast
        swapped = array(fmt, view.tobytes())  # pragma: no cover - no big-endian CI
        swapped.byteswap()  # pragma: no cover
        return swapped  # pragma: no cover

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ListIndex:
        """Map a compiled index file read-only; pages are shared with every other mapper."""
        path = os.fspath(path)
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise ValueError(f"{path}: empty file, not a SafeGate list index")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            mm.madvise(mmap.MADV_RANDOM)  # lookups are random: readahead would only bloat RSS
        return cls(mm, source=path)

    @classmethod
    def from_bytes(cls, data: bytes) -> ListIndex:
        """An index held in memory (tests, tiny lists, `to_bytes()` output)."""
        return cls(bytes(data))

    def close(self) -> None:
        """Release the mapping now instead of at garbage collection (lookups then fail)."""
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
        return f"<ListIndex {self.source} entries={self.size} combos={len(self.combos)}>"


def _make_match(
    keys: IntArray,
    vals: IntArray,
    dirv: IntArray,
    shift: int,
    self_rules: list[Combo], subs_rules: list[Combo]
) -> Callable[[bytes], Match]:
    """The per-query lookup, as a closure so every name it touches is a fast local."""
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes
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
            hi = dirv[b + 1]
            if lo != hi:
                i = bisect(keys, h, lo, hi)
                if i < hi and keys[i] == h:
                    rules = rules_at[vals[i]]
                    if rules:
                        out.append((off, rules))
            off = find(b".", off) + 1
            if not off:
                return out
            rules_at = subs_rules

    return match


def _make_probe(
    keys: IntArray, vals: IntArray, dirv: IntArray, shift: int, combos: list[Combo]
) -> Callable[[bytes], Combo | None]:
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes

    def probe(key: bytes) -> Combo | None:
        h = from_bytes(blake2b(key, digest_size=8).digest(), "little")
        b = h >> shift
        hi = dirv[b + 1]
        i = bisect_left(keys, h, dirv[b], hi)
        if i < hi and keys[i] == h:
            return combos[vals[i]]
        return None

    return probe

