"""Builds a compiled list index file (the format index.py reads) with bounded memory.

The (hash, rule) pairs are sorted externally (runs.py); each merged block has every rule of
its keys, so duplicates merge into combos there, and the merged stream goes to two scratch
files that the final pass turns into the index's arrays.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from itertools import compress, islice, repeat
from operator import add, and_, eq, lshift, rshift
from typing import Any, NamedTuple

from gateway.lists import Action, Rule
from gateway.lists.index import (
    FORMAT_VERSION,
    HI_FORMATS,
    MAGIC,
    PREFIX,
    VAL_FORMATS,
    Combo,
    key_hash,
    layout,
)
from gateway.lists.runs import RULE_BITS, RULE_MASK, RUN_ENTRIES, PackedRuns, read_array
from gateway.util.atomic import atomic_write

_MIN_DIR_BITS = 4
_MAX_DIR_BITS = 30
_CHUNK = 1 << 18  # entries per read/write of the merged stream


def _dir_bits(count: int) -> int:
    """Bucket count ~ count/2 (nearest power of two): ~2 keys per bucket, ~2 dir bytes a key."""
    if count < 2:
        return _MIN_DIR_BITS
    return max(_MIN_DIR_BITS, min(_MAX_DIR_BITS, round(math.log2(count / 2))))


def _merge_rules(rules: Iterable[Rule]) -> Combo:
    """One combo from several rules: same category/action/mandatory merge scopes with OR."""
    scopes: dict[tuple[str, Action, bool], int] = {}
    for r in rules:
        slot = (r.category, r.action, r.mandatory)
        scopes[slot] = scopes.get(slot, 0) | r.scope
    return tuple(sorted(
        (Rule(c, scope, a, m) for (c, a, m), scope in scopes.items()),
        key=lambda r: (r.category, int(r.action), r.mandatory, r.scope),
    ))


def _intern(combos: list[Combo], combo: Combo) -> int:
    try:
        return combos.index(combo)  # few combos: a scan is fine and keeps ids stable
    except ValueError:
        combos.append(combo)
        return len(combos) - 1


def _count_categories(combos: list[Combo], uses: Counter[int]) -> dict[str, int]:
    by_category: Counter[str] = Counter()
    for cid, n in uses.items():
        for category in {r.category for r in combos[cid]}:
            by_category[category] += n
    return dict(sorted(by_category.items()))


class _Merged(NamedTuple):
    entries: int
    combos: list[Combo]
    uses: Counter[int]


class IndexBuilder:
    """Accumulates (key, rule) pairs and writes an index; meant for a short-lived process.

    The same key from several sources gets one entry whose combo is the merge of its rules
    (identical category/action/mandatory merge their scopes with OR); combos are interned.
    Temporary files go to `tmp_dir` (the system's by default; the compiler passes the state
    directory); `close()` removes them. Adding after the index was produced is an error.
    """

    def __init__(self, build: Mapping[str, Any] | None = None, *,
                 run_entries: int = RUN_ENTRIES,
                 tmp_dir: str | os.PathLike[str] | None = None) -> None:
        self.build: dict[str, Any] = dict(build or {})
        self._packed = PackedRuns(run_entries, tmp_dir)
        self._rules: list[Rule] = []
        self._rule_ids: dict[Rule, int] = {}
        self._done: _Merged | None = None

    def __len__(self) -> int:
        return self._finish().entries

    @property
    def runs(self) -> int:
        """How many sorted runs were spilled to disk so far (tests check the path taken)."""
        return self._packed.runs

    def _rule_id(self, rule: Rule) -> int:
        if self._done is not None:
            raise RuntimeError("IndexBuilder: add after the index was built")
        rid = self._rule_ids.get(rule)
        if rid is None:
            rid = len(self._rules)
            if rid > RULE_MASK:
                raise ValueError(f"more than {RULE_MASK + 1} distinct rules")
            self._rules.append(rule)
            self._rule_ids[rule] = rid
        return rid

    def add(self, key: bytes, rule: Rule) -> None:
        """Record that `rule` applies to the canonical `key`."""
        self.add_hashes((key_hash(key),), rule)

    def add_many(self, keys: Iterable[bytes], rule: Rule) -> None:
        """Record `rule` for every key."""
        blake2b = hashlib.blake2b
        from_bytes = int.from_bytes
        self.add_hashes((from_bytes(blake2b(key, digest_size=8).digest(), "little")
                         for key in keys), rule)

    def add_hashes(self, hashes: Iterable[int], rule: Rule) -> None:
        """Record `rule` for keys already hashed with `key_hash` (e.g. by a worker process)."""
        self._packed.add(hashes, self._rule_id(rule))

    def _finish(self) -> _Merged:
        """Merge the runs, duplicate keys into combos; the result is two temporary files."""
        if self._done is not None:
            return self._done
        # combo i == (rule i,) for single-rule keys; merged combos are appended after
        combos: list[Combo] = [(r,) for r in self._rules]
        interned: dict[frozenset[int], int] = {}
        uses: Counter[int] = Counter()
        count = 0
        tmp = self._packed.directory()
        with open(tmp / "keys", "wb") as kf, open(tmp / "vals", "wb") as vf:
            for packed in self._packed.blocks():
                keys = array("Q", map(rshift, packed, repeat(RULE_BITS)))
                vals = array("I", map(and_, packed, repeat(RULE_MASK)))
                del packed
                dups = list(compress(range(1, len(keys)), map(eq, islice(keys, 1, None), keys)))
                if dups:
                    keys, vals = self._merge_duplicates(keys, vals, dups, combos, interned)
                uses.update(vals)
                count += len(keys)
                keys.tofile(kf)
                vals.tofile(vf)
        self._done = _Merged(count, combos, uses)
        return self._done

    def _merge_duplicates(
        self, keys: array[int], vals: array[int], dups: list[int], combos: list[Combo],
        interned: dict[frozenset[int], int],
    ) -> tuple[array[int], array[int]]:
        """Collapse each run of equal keys into its first slot, with the merged combo."""
        keep = bytearray(b"\1") * len(keys)
        k = 0
        while k < len(dups):
            start = dups[k] - 1
            end = dups[k]
            while k + 1 < len(dups) and dups[k + 1] == end + 1:
                k += 1
                end = dups[k]
            k += 1
            rids = frozenset(vals[start : end + 1])
            cid = interned.get(rids)
            if cid is None:
                cid = interned[rids] = _intern(combos, _merge_rules(self._rules[r] for r in rids))
            vals[start] = cid
            keep[start + 1 : end + 1] = bytes(end - start)
        return array("Q", compress(keys, keep)), array("I", compress(vals, keep))

    def _chunks(self) -> Iterator[memoryview | bytes]:
        """The whole index file, piece by piece: header, hi, lo, vals, dir."""
        merged = self._finish()
        count = merged.entries
        used = sorted(merged.uses)
        renumber = {old: new for new, old in enumerate(used)}
        combos = [merged.combos[cid] for cid in used]
        uses = Counter({renumber[cid]: n for cid, n in merged.uses.items()})
        bits = _dir_bits(count)
        shift = 64 - bits
        hi_bytes = 4 if bits >= 16 else 8
        val_bytes = 1 if len(combos) <= 1 << 8 else 2 if len(combos) <= 1 << 16 else 4
        header = {
            "version": FORMAT_VERSION,
            "count": count,
            "dir_bits": bits,
            "hi_bytes": hi_bytes,
            "val_bytes": val_bytes,
            "hash": "blake2b-64-le",
            "categories": sorted({r.category for combo in combos for r in combo}),
            "entries_by_category": _count_categories(combos, uses),
            "combos": [
                [[r.category, r.scope, int(r.action), r.mandatory] for r in combo]
                for combo in combos
            ],
            "build": self.build,
        }
        blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
        prefix = PREFIX.pack(MAGIC, len(blob)) + blob
        offsets = layout(len(prefix), count, bits, hi_bytes, val_bytes)
        written = len(prefix)
        yield prefix
        swap = sys.byteorder != "little"
        rmask = (1 << shift) - 1
        dirv = array("I", bytes(4 * ((1 << bits) + 1)))
        tmp = self._packed.directory()
        identity = used == list(range(len(used)))

        def section(at: int, name: str, fmt: str, convert: Any) -> Iterator[memoryview | bytes]:
            nonlocal written
            yield bytes(at - written)
            written = at
            src_fmt = "Q" if name == "keys" else "I"
            fd = os.open(tmp / name, os.O_RDONLY)
            try:
                for base in range(0, count, _CHUNK):
                    chunk = read_array(fd, src_fmt, min(_CHUNK, count - base), 8 * base
                                        if src_fmt == "Q" else 4 * base)
                    out = array(fmt, convert(chunk, base))
                    if swap:  # pragma: no cover - no big-endian CI
                        out.byteswap()
                    written += len(out) * out.itemsize
                    yield memoryview(out)
            finally:
                os.close(fd)

        next_b = 0

        def hi(chunk: array[int], base: int) -> Iterator[int]:
            nonlocal next_b
            # dir[b] = index of the first key whose bucket is >= b; keys are sorted
            top = chunk[-1] >> shift
            firsts = map(bisect_left, repeat(chunk), map(lshift, range(next_b, top + 1),
                                                          repeat(shift)))
            dirv[next_b : top + 1] = array("I", map(add, firsts, repeat(base)))
            next_b = top + 1
            return map(rshift, map(and_, chunk, repeat(rmask)), repeat(16))

        yield from section(offsets[0], "keys", HI_FORMATS[hi_bytes], hi)
        dirv[next_b:] = array("I", [count]) * (len(dirv) - next_b)
        yield from section(offsets[1], "keys", "H",
                           lambda chunk, _: map(and_, chunk, repeat(0xFFFF)))
        yield from section(offsets[2], "vals", VAL_FORMATS[val_bytes],
                           (lambda chunk, _: chunk) if identity else
                           (lambda chunk, _: map(renumber.__getitem__, chunk)))
        yield bytes(offsets[3] - written)
        if swap:  # pragma: no cover
            dirv.byteswap()
        yield memoryview(dirv)

    def entries_by_category(self) -> dict[str, int]:
        """How many keys carry at least one rule of each category."""
        merged = self._finish()
        return _count_categories(merged.combos, merged.uses)

    def to_bytes(self) -> bytes:
        """The whole index file as bytes (for `ListIndex.from_bytes`)."""
        return b"".join(self._chunks())

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: readers see the old file or the complete new one, never a mix."""
        atomic_write(path, self._chunks())

    def close(self) -> None:
        """Remove the temporary files now rather than at garbage collection."""
        self._packed.close()

    def __enter__(self) -> IndexBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
