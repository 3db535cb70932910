"""Builds a compiled list index file (the format index.py reads); for a short-lived compiler."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import accumulate, compress, islice, repeat
from operator import and_, eq, lshift, or_, rshift
from typing import Any, NamedTuple

from gateway.lists import Action, Rule
from gateway.lists.index import FORMAT_VERSION, MAGIC, PREFIX, Combo, align8, key_hash
from gateway.util.atomic import atomic_write

_MIN_DIR_BITS = 4
_MAX_DIR_BITS = 30
_RULE_BITS = 16  # the builder packs `hash << 16 | rule id` into one int
_RULE_MASK = (1 << _RULE_BITS) - 1


def _dir_bits(count: int) -> int:
    """Bucket count ~ count/2 (nearest power of two): ~2 keys per bucket, ~2 dir bytes a key."""
    if count < 2:
        return _MIN_DIR_BITS
    return max(_MIN_DIR_BITS, min(_MAX_DIR_BITS, round(math.log2(count / 2))))


class _Built(NamedTuple):
    keys: array[int]
    vals: array[int]
    combos: list[Combo]
    uses: Counter[int]


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


class IndexBuilder:
    """Accumulates (key, rule) pairs and writes an index; meant for a short-lived process.

    The same key from several sources gets one entry whose combo is the merge of its rules
    (identical category/action/mandatory merge their scopes with OR); combos are interned.
    Why runs of packed ints rather than a dict: each add is then a C-speed list append of
    `hash << 16 | rule id`, one sort orders everything (runs that arrive sorted, e.g. from
    parallel workers, merge almost for free), and duplicates come out adjacent.
    """

    def __init__(self, build: Mapping[str, Any] | None = None) -> None:
        self.build: dict[str, Any] = dict(build or {})
        self._rules: list[Rule] = []
        self._rule_ids: dict[Rule, int] = {}
        self._runs: list[list[int]] = []
        self._done: _Built | None = None

    def __len__(self) -> int:
        return len(self._finish().keys)

    def _rule_id(self, rule: Rule) -> int:
        rid = self._rule_ids.get(rule)
        if rid is None:
            rid = len(self._rules)
            if rid > _RULE_MASK:
                raise ValueError(f"more than {_RULE_MASK + 1} distinct rules")
            self._rules.append(rule)
            self._rule_ids[rule] = rid
        return rid

    def add(self, key: bytes, rule: Rule) -> None:
        """Record that `rule` applies to the canonical `key`."""
        self.add_hashes((key_hash(key),), rule)

    def add_many(self, keys: Iterable[bytes], rule: Rule) -> None:
        """Record `rule` for every key (the compiler's inner loop: one comprehension)."""
        rid = self._rule_id(rule)
        blake2b = hashlib.blake2b
        from_bytes = int.from_bytes
        self._done = None
        self._runs.append([
            from_bytes(blake2b(key, digest_size=8).digest(), "little") << _RULE_BITS | rid
            for key in keys
        ])

    def add_hashes(self, hashes: Iterable[int], rule: Rule) -> None:
        """Record `rule` for keys already hashed with `key_hash` (e.g. by a worker process)."""
        rid = self._rule_id(rule)
        self._done = None
        self._runs.append(list(map(or_, map(lshift, hashes, repeat(_RULE_BITS)), repeat(rid))))

    def _finish(self) -> _Built:
        """Sort, merge duplicate keys into combos, drop unused combos; cached until next add."""
        if self._done is not None:
            return self._done
        packed: list[int] = []
        for run in self._runs:
            packed += run
        packed.sort()
        keys = array("Q", map(rshift, packed, repeat(_RULE_BITS)))
        vals = array("I", map(and_, packed, repeat(_RULE_MASK)))
        del packed
        # combo i == (rule i,) for single-rule keys; merged combos are appended after
        combos: list[Combo] = [(r,) for r in self._rules]
        dups = list(compress(range(1, len(keys)), map(eq, islice(keys, 1, None), keys)))
        if dups:
            keys, vals = self._merge_duplicates(keys, vals, dups, combos)
        uses = Counter(vals)
        used = sorted(uses)
        if len(used) != len(combos):  # some rule only ever appears merged with others
            renumber = {old: new for new, old in enumerate(used)}
            vals = array("I", map(renumber.__getitem__, vals))
            combos = [combos[cid] for cid in used]
            uses = Counter({renumber[cid]: n for cid, n in uses.items()})
        self._done = _Built(keys, vals, combos, uses)
        return self._done

    def _merge_duplicates(
        self, keys: array[int], vals: array[int], dups: list[int], combos: list[Combo]
    ) -> tuple[array[int], array[int]]:
        """Collapse each run of equal keys into its first slot, with the merged combo."""
        keep = bytearray(b"\1") * len(keys)
        interned: dict[frozenset[int], int] = {}
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

    def _arrays(self) -> tuple[bytes, array[int], array[int], array[int]]:
        """(header bytes, keys, vals, dir) ready to write."""
        built = self._finish()
        keys, vals, combos = built.keys, built.vals, built.combos
        count = len(keys)
        bits = _dir_bits(count)
        per_bucket = Counter(map(rshift, keys, repeat(64 - bits)))
        dirv = array("I", accumulate(map(per_bucket.get, range(1 << bits), repeat(0)), initial=0))
        header = {
            "version": FORMAT_VERSION,
            "count": count,
            "dir_bits": bits,
            "hash": "blake2b-64-le",
            "categories": sorted({r.category for combo in combos for r in combo}),
            "entries_by_category": _count_categories(combos, built.uses),
            "combos": [
                [[r.category, r.scope, int(r.action), r.mandatory] for r in combo]
                for combo in combos
            ],
            "build": self.build,
        }
        blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
        prefix = PREFIX.pack(MAGIC, len(blob)) + blob
        prefix += b"\0" * (align8(len(prefix)) - len(prefix))
        if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
            keys, vals = array("Q", keys), array("I", vals)
            for arr in (keys, vals, dirv):
                arr.byteswap()
        return prefix, keys, vals, dirv

    def entries_by_category(self) -> dict[str, int]:
        """How many keys carry at least one rule of each category."""
        built = self._finish()
        return _count_categories(built.combos, built.uses)

    def to_bytes(self) -> bytes:
        """The whole index file as bytes (for `ListIndex.from_bytes`)."""
        prefix, keys, vals, dirv = self._arrays()
        return b"".join((prefix, keys.tobytes(), vals.tobytes(), dirv.tobytes()))

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: readers see the old file or the complete new one, never a mix."""
        path = os.fspath(path)
        prefix, keys, vals, dirv = self._arrays()
        atomic_write(path, (prefix, memoryview(keys), memoryview(vals), memoryview(dirv)))
