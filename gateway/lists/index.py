"""The compiled list index: a sorted array of 64-bit name hashes, mmap-able and shared.

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
import math
import mmap
import os
import struct
import sys
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import accumulate, compress, islice, repeat
from operator import and_, eq, lshift, or_, rshift
from typing import Any, Literal, NamedTuple

from gateway.lists import SCOPE_SELF, SCOPE_SUBS, Action, Rule
from gateway.util.atomic import atomic_write

__all__ = ["MAGIC", "IndexBuilder", "ListIndex", "Match", "key_hash"]

MAGIC = b"SGIDX1\0\0"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sQ")
_MIN_DIR_BITS = 4
_MAX_DIR_BITS = 30
_RULE_BITS = 16  # builder packs `hash << 16 | rule id` into one int
_RULE_MASK = (1 << _RULE_BITS) - 1

Combo = tuple[Rule, ...]
Match = list[tuple[int, Combo]]
IntArray = Sequence[int]


def key_hash(key: bytes) -> int:
    """The 64-bit hash a dotted key (b"www.example.com") is stored under."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _dir_bits(count: int) -> int:
    """Bucket count ~ count/2 (nearest power of two): ~2 keys per bucket, ~2 dir bytes a key."""
    if count < 2:
        return _MIN_DIR_BITS
    return max(_MIN_DIR_BITS, min(_MAX_DIR_BITS, round(math.log2(count / 2))))


def _align8(n: int) -> int:
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
        if len(base) < _PREFIX.size:
            raise ValueError(f"{self.source}: not a SafeGate list index (too short)")
        magic, header_len = _PREFIX.unpack_from(base, 0)
        if magic != MAGIC:
            raise ValueError(f"{self.source}: not a SafeGate list index (bad magic)")
        end = _PREFIX.size + header_len
        try:
            header = json.loads(bytes(base[_PREFIX.size : end]))
            count = int(header["count"])
            bits = int(header["dir_bits"])
            raw_combos = header["combos"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.source}: corrupt index header ({exc})") from None
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"{self.source}: unsupported index version {header.get('version')}")
        keys_at = _align8(end)
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
        prefix = _PREFIX.pack(MAGIC, len(blob)) + blob
        prefix += b"\0" * (_align8(len(prefix)) - len(prefix))
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
