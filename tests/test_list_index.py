"""The compiled index: suffix semantics, merging, file round-trip, and a set oracle."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.lists import SCOPE_BOTH, SCOPE_SELF, SCOPE_SUBS, Action, Rule
from gateway.lists.index import MAGIC, ListIndex, key_hash
from gateway.lists.index_builder import IndexBuilder
from gateway.util.names import suffix_offsets

ADULT = Rule("adult", SCOPE_BOTH, Action.DEFAULT, False)
ADULT_SELF = Rule("adult", SCOPE_SELF, Action.DEFAULT, False)
ADULT_SUBS = Rule("adult", SCOPE_SUBS, Action.DEFAULT, False)
ADS_OK = Rule("ads", SCOPE_BOTH, Action.PASSTHRU, False)
CSAM = Rule("csam", SCOPE_SELF, Action.NXDOMAIN, True)


def build(entries: list[tuple[bytes, Rule]]) -> ListIndex:
    b = IndexBuilder()
    for key, rule in entries:
        b.add(key, rule)
    return ListIndex.from_bytes(b.to_bytes())


@pytest.fixture
def index() -> ListIndex:
    return build([
        (b"example.com", ADULT),
        (b"self.test", ADULT_SELF),
        (b"subs.test", ADULT_SUBS),
        (b"ok.example.com", ADS_OK),
        (b"csam-test.invalid", CSAM),
        (b"test", Rule("games", SCOPE_SUBS, Action.NODATA, False)),  # a whole TLD
    ])


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"example.com", [(0, (ADULT,))]),
        (b"www.example.com", [(4, (ADULT,))]),
        (b"a.b.c.example.com", [(6, (ADULT,))]),
        (b"ample.com", []),  # suffix at label boundaries only
        (b"xexample.com", []),
        (b"example.com.evil", []),
        (b"com", []),
        (b"ok.example.com", [(0, (ADS_OK,)), (3, (ADULT,))]),  # most specific level first
        (b"x.ok.example.com", [(2, (ADS_OK,)), (5, (ADULT,))]),
        (b"csam-test.invalid", [(0, (CSAM,))]),
        (b"www.csam-test.invalid", []),  # SELF only
        (b"nothing.invalid", []),
    ],
)
def test_match(index: ListIndex, key: bytes, expected: list[object]) -> None:
    assert index.match(key) == expected


def test_self_and_subs_scopes(index: ListIndex) -> None:
    games = Rule("games", SCOPE_SUBS, Action.NODATA, False)
    assert index.match(b"self.test") == [(0, (ADULT_SELF,)), (5, (games,))]
    assert index.match(b"www.self.test") == [(9, (games,))]  # SELF does not reach below
    assert index.match(b"subs.test") == [(5, (games,))]
    assert index.match(b"www.subs.test") == [(4, (ADULT_SUBS,)), (9, (games,))]
    assert index.match(b"test") == []  # a SUBS-only rule does not match the name itself


def test_probe_is_exact(index: ListIndex) -> None:
    assert index.probe(b"example.com") == (ADULT,)
    assert index.probe(b"self.test") == (ADULT_SELF,)
    assert index.probe(b"www.example.com") is None
    assert index.probe(b"") is None


def test_keys_are_case_sensitive_bytes(index: ListIndex) -> None:
    # The index sees canonical keys only: callers lowercase (normalize_name / wire parser).
    assert index.match(b"Example.com") == []


def test_merged_combos() -> None:
    idx = build([
        (b"both.test", ADULT_SELF),
        (b"both.test", ADULT_SUBS),  # same category/action/mandatory: scopes OR together
        (b"both.test", ADULT_SELF),  # duplicates are idempotent
        (b"multi.test", ADULT),
        (b"multi.test", CSAM),  # different categories: both kept, one key
        (b"multi.test", Rule("adult", SCOPE_BOTH, Action.NXDOMAIN, False)),  # other action
    ])
    assert idx.size == 2
    assert idx.probe(b"both.test") == (ADULT,)
    assert idx.probe(b"multi.test") == (
        ADULT, Rule("adult", SCOPE_BOTH, Action.NXDOMAIN, False), CSAM,
    )
    assert idx.match(b"www.multi.test") == [
        (4, (ADULT, Rule("adult", SCOPE_BOTH, Action.NXDOMAIN, False))),
    ]
    assert idx.entries_by_category == {"adult": 2, "csam": 1}
    assert len(idx.combos) == 2  # only combos in use are stored


def test_combos_are_interned() -> None:
    b = IndexBuilder()
    for i in range(1000):
        b.add(b"n%d.test" % i, ADULT)
        if i % 2:
            b.add(b"n%d.test" % i, CSAM)
    idx = ListIndex.from_bytes(b.to_bytes())
    assert idx.size == 1000
    assert sorted(idx.combos) == sorted([(ADULT,), (ADULT, CSAM)])
    assert idx.entries_by_category == {"adult": 1000, "csam": 500}
    assert idx.header["categories"] == ["adult", "csam"]


def test_empty_index(tmp_path: Path) -> None:
    empty = IndexBuilder()
    idx = ListIndex.from_bytes(empty.to_bytes())
    assert idx.size == 0 and len(idx) == 0
    assert idx.match(b"www.example.com") == []
    assert idx.probe(b"example.com") is None
    assert idx.entries_by_category == {}
    empty.write(tmp_path / "empty.sgidx")
    with ListIndex.open(tmp_path / "empty.sgidx") as mapped:
        assert mapped.match(b"a.b") == []


def test_file_round_trip_via_mmap(tmp_path: Path) -> None:
    b = IndexBuilder({"note": "round trip"})
    names = [b"host%d.example.test" % i for i in range(5000)]
    b.add_many(names, ADULT)
    b.add(b"csam-test.invalid", CSAM)
    path = tmp_path / "lists.sgidx"
    b.write(path)
    assert not (tmp_path / "lists.sgidx.tmp").exists()
    assert path.read_bytes() == b.to_bytes()
    assert path.read_bytes().startswith(MAGIC)
    idx = ListIndex.open(path)
    try:
        assert idx.size == 5001
        assert idx.build == {"note": "round trip"}
        assert idx.match(b"www.host42.example.test") == [(4, (ADULT,))]
        assert idx.match(b"host5000.example.test") == []
        assert idx.probe(b"csam-test.invalid") == (CSAM,)
    finally:
        idx.close()
    with pytest.raises(ValueError):
        idx.match(b"host1.example.test")  # released: fails loudly, never reads freed memory


def test_write_replaces_atomically_while_old_is_mapped(tmp_path: Path) -> None:
    path = tmp_path / "lists.sgidx"
    first = IndexBuilder()
    first.add(b"old.test", ADULT)
    first.write(path)
    old = ListIndex.open(path)
    second = IndexBuilder()
    second.add(b"new.test", ADULT)
    second.write(path)
    new = ListIndex.open(path)
    assert old.probe(b"old.test") == (ADULT,)  # the old mapping still sees the old file
    assert new.probe(b"old.test") is None
    assert new.probe(b"new.test") == (ADULT,)
    old.close()
    new.close()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"", "too short"),
        (lambda d: b"NOTANIDX" + d[8:], "bad magic"),
        (lambda d: d[:-4], "truncated or corrupt"),
        (lambda d: d + b"\0" * 8, "truncated or corrupt"),
        (lambda d: d[:16] + b"x" + d[17:], "corrupt index header"),
    ],
)
def test_corrupt_files_are_rejected(mutate: object, message: str) -> None:
    b = IndexBuilder()
    b.add(b"a.test", ADULT)
    data = b.to_bytes()
    assert callable(mutate)
    with pytest.raises(ValueError, match=message):
        ListIndex.from_bytes(mutate(data))


def test_open_empty_file(tmp_path: Path) -> None:
    (tmp_path / "zero").write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        ListIndex.open(tmp_path / "zero")


def test_key_hash_is_stable() -> None:
    # The file format depends on it: changing the hash must change the format version.
    assert key_hash(b"example.com") == 0x6626CFC10513C513
    assert key_hash(b"example.com") != key_hash(b"example.org")


def _oracle(entries: dict[bytes, int], key: bytes) -> list[int]:
    """Offsets that match, computed the slow obvious way."""
    hits = []
    for off in suffix_offsets(key):
        scope = entries.get(key[off:], 0)
        if (off == 0 and scope & SCOPE_SELF) or (off > 0 and scope & SCOPE_SUBS):
            hits.append(off)
    return hits


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_a_set_oracle(seed: int) -> None:
    rng = random.Random(seed)
    labels = [b"a", b"b", b"ab", b"ba", b"x-y", b"_s", b"test", b"example"]

    def name() -> bytes:
        return b".".join(rng.choice(labels) for _ in range(rng.randint(1, 4)))

    entries: dict[bytes, int] = {}
    b = IndexBuilder()
    for _ in range(300):
        key = name()
        scope = rng.choice((SCOPE_SELF, SCOPE_SUBS, SCOPE_BOTH))
        entries[key] = entries.get(key, 0) | scope
        b.add(key, Rule("c", scope, Action.DEFAULT, False))
    idx = ListIndex.from_bytes(b.to_bytes())
    assert idx.size == len(entries)
    for _ in range(3000):
        key = name()
        got = idx.match(key)
        assert [off for off, _ in got] == _oracle(entries, key), key
        for off, rules in got:
            assert rules == (Rule("c", entries[key[off:]], Action.DEFAULT, False),)


def test_large_index_directory_is_consistent(tmp_path: Path) -> None:
    # Enough keys for a multi-bit directory: every key is found, near misses are not.
    b = IndexBuilder()
    keys = [b"k%d.example" % i for i in range(50_000)]
    b.add_many(keys, ADULT)
    b.write(tmp_path / "big.sgidx")
    with ListIndex.open(tmp_path / "big.sgidx") as idx:
        assert idx.header["dir_bits"] == 15  # ~ n/2 buckets
        assert all(idx.probe(k) == (ADULT,) for k in keys)
        assert not any(idx.probe(b"m%d.example" % i) for i in range(50_000))


def _random_hashes(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(n)]


def test_compact_layout_for_large_lists(tmp_path: Path) -> None:
    # Over ~90k names the directory fixes >= 16 top bits: 4-byte hi + 2-byte lo + 1-byte combo
    b = IndexBuilder()
    keys = [b"k%d.example" % i for i in range(2000)]
    b.add_many(keys, ADULT)
    b.add_hashes(_random_hashes(150_000, 7), CSAM)
    b.write(tmp_path / "big.sgidx")
    size = (tmp_path / "big.sgidx").stat().st_size
    with ListIndex.open(tmp_path / "big.sgidx") as idx:
        assert (idx.header["dir_bits"], idx.header["hi_bytes"], idx.header["val_bytes"]) == (
            16, 4, 1)
        assert size <= 10 * idx.size
        assert all(idx.probe(k) == (ADULT,) for k in keys)
        assert not any(idx.probe(b"m%d.example" % i) for i in range(20_000))
        assert idx.match(b"www.k5.example") == [(4, (ADULT,))]


@pytest.mark.parametrize("flip", [1, 1 << 15, 1 << 16, 1 << 40])
def test_neighbours_in_a_bucket_are_told_apart(flip: int) -> None:
    # hashes that differ only in lo (flip < 2**16) share bucket and hi: lo must decide
    h = key_hash(b"a.test")
    filler = _random_hashes(100_000, 3)
    with_key = IndexBuilder()
    with_key.add_hashes([*filler, h ^ flip, h ^ (flip * 3)], ADULT)
    with_key.add_hashes([h], CSAM)
    idx = ListIndex.from_bytes(with_key.to_bytes())
    assert idx.header["hi_bytes"] == 4
    assert idx.probe(b"a.test") == (CSAM,)
    assert idx.match(b"x.a.test") == []  # CSAM is SELF-scoped
    without = IndexBuilder()
    without.add_hashes([*filler, h ^ flip, h ^ (flip * 3)], ADULT)
    idx = ListIndex.from_bytes(without.to_bytes())
    assert idx.probe(b"a.test") is None
    assert idx.match(b"a.test") == []


def test_streaming_build_equals_in_memory(tmp_path: Path) -> None:
    # Runs of 64 entries spill to disk and merge; duplicates straddle runs and merge blocks.
    rng = random.Random(5)
    rules = [Rule(c, s, Action.DEFAULT, m) for c in ("adult", "csam", "ads")
             for s in (SCOPE_SELF, SCOPE_SUBS, SCOPE_BOTH) for m in (False, True)]
    entries = [(b"n%d.test" % rng.randrange(3000), rng.choice(rules)) for _ in range(10_000)]
    entries[5000:5000] = [(b"hot.test", Rule(f"c{i}", SCOPE_BOTH, Action.DEFAULT, False))
                          for i in range(300)]  # one key filling whole runs and merge blocks
    memory, streamed = IndexBuilder(), IndexBuilder(run_entries=64, tmp_dir=tmp_path)
    for key, rule in entries:
        memory.add(key, rule)
        streamed.add(key, rule)
    data = streamed.to_bytes()
    assert memory.runs == 0 and streamed.runs > 100
    assert data == memory.to_bytes()
    assert len(streamed) == len(memory) == len({k for k, _ in entries})
    idx = ListIndex.from_bytes(data)
    hot = idx.probe(b"hot.test")
    assert hot is not None and sorted(r.category for r in hot) == sorted(
        f"c{i}" for i in range(300))
    streamed.close()
    assert list(tmp_path.iterdir()) == []  # the runs and merge files are gone


def test_version_1_index_is_refused(tmp_path: Path) -> None:
    # The 12-byte-per-name layout of version 1, as the old builder wrote it: the reader must
    # refuse it (the server then compiles a new index), not read its arrays as version 2's.
    import json
    import struct
    header = json.dumps({"version": 1, "count": 1, "dir_bits": 4, "hash": "blake2b-64-le",
                         "combos": [[["adult", 3, 0, False]]]}).encode()
    prefix = MAGIC + struct.pack("<Q", len(header)) + header
    prefix += b"\0" * (-len(prefix) % 8)
    h = key_hash(b"a.test")
    dirv = [0] * ((h >> 60) + 1) + [1] * (16 - (h >> 60))
    data = prefix + struct.pack("<QI", h, 0) + struct.pack(f"<{len(dirv)}I", *dirv)
    (tmp_path / "old.sgidx").write_bytes(data)
    with pytest.raises(ValueError, match="unsupported index version 1"):
        ListIndex.open(tmp_path / "old.sgidx")
