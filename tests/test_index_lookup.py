"""The C list lookup (gateway/lists/_lookup.c) against the pure-Python reference in index.py.

Every test here compares the accelerated ListIndex with a pure one over the same bytes, or pins
what the C object adds (its blake2b, close(), bounds on a corrupt file). Without a compiler the
extension is absent and these tests skip, unless SAFEGATE_EXPECT_COMPILED=1 (the compiled CI
pass) where a missing extension is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import sys
from array import array
from pathlib import Path
from types import ModuleType
from typing import Any

import dns.rcode
import pytest

from gateway.lists import SCOPE_BOTH, SCOPE_SELF, SCOPE_SUBS, Action, Rule
from gateway.lists.index import MAGIC, PREFIX, ListIndex, layout
from gateway.lists.index_builder import IndexBuilder
from tests.support import unbound as ub


@pytest.fixture(scope="module")
def lookup() -> ModuleType:
    try:
        from gateway.lists import _lookup
    except ImportError as exc:
        if os.environ.get("SAFEGATE_EXPECT_COMPILED") == "1":
            pytest.fail(f"SAFEGATE_EXPECT_COMPILED=1 but the C lookup is not built: {exc}")
        pytest.skip(f"C lookup not built (python setup.py build_ext --inplace): {exc}")
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
        pytest.skip("the C lookup is little-endian only")
    return _lookup


def pair(data: bytes) -> tuple[ListIndex, ListIndex]:
    """(C, pure) indexes over the same bytes."""
    fast, pure = ListIndex.from_bytes(data, pure=False), ListIndex.from_bytes(data, pure=True)
    assert fast.accelerated and not pure.accelerated
    return fast, pure


def rule(category: str, scope: int = SCOPE_BOTH, action: Action = Action.DEFAULT,
         mandatory: bool = False) -> Rule:
    return Rule(category, scope, action, mandatory)


RULES = [rule(c, s, a, m) for c in ("adult", "csam", "ads") for s in (SCOPE_SELF, SCOPE_SUBS,
         SCOPE_BOTH) for a in (Action.DEFAULT, Action.NXDOMAIN) for m in (False, True)]
# Keys whose suffix walk has odd offsets: hashed and looked up like any other key.
ODD_KEYS = [b"", b".", b"..", b"a..b", b".b", b"b", b"trail.", b".lead.test", b"x" * 255,
            (b"a." * 127)[:255], b"\xc3\xa9t\xc3\xa9.test", b"\x00.\xff", b"UPPER.test"]


def sample_index(n: int, *, seed: int, filler: int = 0, rules: list[Rule] = RULES,
                 ) -> tuple[bytes, list[bytes]]:
    """An index over `n` names at 1-4 levels, several rules on some (combos), plus ODD_KEYS
    and `filler` random hashes (to reach a wider directory); returns (bytes, names)."""
    rng = random.Random(seed)
    b = IndexBuilder()
    names = [b".".join(b"l%d" % rng.randrange(n) for _ in range(rng.randrange(1, 4)))
             + b".test" for _ in range(n)]
    names += [b"test", *ODD_KEYS]
    for name in names:
        for r in rng.sample(rules, rng.choice((1, 1, 1, 2, 3))):
            b.add(name, r)
    if filler:
        b.add_hashes([rng.getrandbits(64) for _ in range(filler)], rules[0])
    return b.to_bytes(), names


def queries(names: list[bytes], seed: int) -> list[bytes]:
    """Each name, names under it (hits at deeper levels), and near misses."""
    rng = random.Random(seed)
    out = list(ODD_KEYS)
    for name in names:
        out += [name, b"www." + name, b"a.b." + name, name + b"x", b"x" + name,
                name.upper(), name + b"."]
        if rng.random() < 0.1:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80))))
    return out


def assert_same(fast: ListIndex, pure: ListIndex, keys: list[bytes]) -> None:
    hits = 0
    for key in keys:
        got = fast.match(key)
        assert got == pure.match(key), key
        assert fast.probe(key) == pure.probe(key), key
        hits += bool(got)
    assert hits, "the query set never hit: it tests nothing"


def test_blake2b64_equals_hashlib(lookup: ModuleType) -> None:
    rng = random.Random(12)
    lengths = [rng.randrange(0, 301) for _ in range(10_000 - 12)]
    lengths += [0, 1, 127, 128, 129, 255, 256, 257, 383, 384, 385, 300]  # block edges
    for n in lengths:
        data = rng.randbytes(n)
        want = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
        assert lookup.blake2b64(data) == want, (n, data.hex())
    assert lookup.blake2b64(bytearray(b"example.com")) == 0x6626CFC10513C513  # any buffer


def test_c_equals_pure_on_a_large_index(lookup: ModuleType) -> None:
    data, names = sample_index(60_000, seed=1)
    fast, pure = pair(data)
    assert (fast.header["dir_bits"], fast.header["hi_bytes"]) == (15, 8)
    keys = queries(names, seed=2)
    assert len(keys) >= 50_000 * 7
    assert_same(fast, pure, keys)
    # every level hits, and SELF vs SUBS scopes differ between offset 0 and above
    found = [m for key in keys for m in fast.match(key)]
    assert len({off for off, _ in found}) > 5
    assert any(off == 0 and r.scope == SCOPE_SELF for off, rules in found for r in rules)
    assert any(off and r.scope == SCOPE_SUBS for off, rules in found for r in rules)
    assert any(len(rules) > 1 for _, rules in found)


def test_c_equals_pure_with_a_wide_directory(lookup: ModuleType) -> None:
    # dir_bits >= 16 stores hi as uint32 (the other hi width)
    data, names = sample_index(5_000, seed=3, filler=120_000)
    fast, pure = pair(data)
    assert (fast.header["dir_bits"], fast.header["hi_bytes"]) == (16, 4)
    assert_same(fast, pure, queries(names, seed=4))


def revalue(data: bytes, val_bytes: int) -> bytes:
    """The same index re-encoded with `val_bytes`-wide combo ids (the reader accepts any)."""
    magic, header_len = PREFIX.unpack_from(data, 0)
    header = json.loads(data[PREFIX.size : PREFIX.size + header_len])
    count, bits, hi_bytes = header["count"], header["dir_bits"], header["hi_bytes"]
    old = layout(PREFIX.size + header_len, count, bits, hi_bytes, header["val_bytes"])
    vals = array({1: "B", 2: "H", 4: "I"}[header["val_bytes"]],
                 data[old[2] : old[2] + header["val_bytes"] * count])
    header["val_bytes"] = val_bytes
    blob = json.dumps(header).encode()
    start = PREFIX.size + len(blob)
    new = layout(start, count, bits, hi_bytes, val_bytes)
    out = bytearray(new[4])
    out[: start] = PREFIX.pack(magic, len(blob)) + blob
    out[new[0] : new[2]] = data[old[0] : old[2]]  # hi then lo (and their padding)
    out[new[2] : new[2] + val_bytes * count] = array({1: "B", 2: "H", 4: "I"}[val_bytes],
                                                     vals).tobytes()
    out[new[3] :] = data[old[3] :]
    return bytes(out)


@pytest.mark.parametrize("val_bytes", [1, 2, 4])
def test_c_equals_pure_for_each_combo_id_width(lookup: ModuleType, val_bytes: int) -> None:
    data, names = sample_index(3_000, seed=5, rules=RULES[::5])  # < 256 combos: ids fit in 1
    fast, pure = pair(revalue(data, val_bytes))
    assert fast.header["val_bytes"] == val_bytes
    assert_same(fast, pure, queries(names, seed=6))


def test_two_byte_combo_ids_from_the_builder(lookup: ModuleType) -> None:
    many = [rule(f"c{i}", (SCOPE_SELF, SCOPE_SUBS, SCOPE_BOTH)[i % 3]) for i in range(300)]
    data, names = sample_index(3_000, seed=7, rules=many)
    fast, pure = pair(data)
    assert fast.header["val_bytes"] == 2
    assert_same(fast, pure, queries(names, seed=8))


def test_one_entry_and_empty_indexes(lookup: ModuleType) -> None:
    one = IndexBuilder()
    one.add(b"only.test", rule("adult"))
    fast, pure = pair(one.to_bytes())
    assert_same(fast, pure, [b"only.test", b"www.only.test", b"test", *ODD_KEYS])
    assert fast.match(b"a.only.test") == [(2, (rule("adult"),))]
    fast, pure = pair(IndexBuilder().to_bytes())
    for key in [b"only.test", *ODD_KEYS]:
        assert fast.match(key) == pure.match(key) == []
        assert fast.probe(key) is pure.probe(key) is None


def test_hits_at_every_one_of_many_levels(lookup: ModuleType) -> None:
    # 60 levels: more than one batch of suffixes in the C walk, a hit at each, in order
    deep = b"".join(b"l%d." % i for i in range(60)) + b"test"
    b = IndexBuilder()
    offsets = [0] + [i + 1 for i, c in enumerate(deep) if c == ord(".")]
    for n, off in enumerate(offsets):
        b.add(deep[off:], RULES[n % len(RULES)])
    fast, pure = pair(b.to_bytes())
    got = fast.match(deep)
    assert got == pure.match(deep)
    assert [off for off, _ in got] == [o for n, o in enumerate(offsets)
                                       if RULES[n % len(RULES)].scope & (SCOPE_SUBS if o else
                                                                        SCOPE_SELF)]
    assert len(got) > 32
    assert_same(fast, pure, [deep[off:] for off in offsets] + [b"www." + deep])


def test_results_are_the_index_tuples_not_copies(lookup: ModuleType) -> None:
    b = IndexBuilder()
    b.add(b"a.test", rule("adult"))
    b.add(b"a.test", rule("csam", SCOPE_SELF))
    idx = ListIndex.from_bytes(b.to_bytes(), pure=False)
    combo = idx.probe(b"a.test")
    assert combo is not None and any(combo is c for c in idx.combos)
    (off, self_rules), = idx.match(b"a.test")
    (_, again), = idx.match(b"a.test")
    assert off == 0 and self_rules is again and set(self_rules) == set(combo)
    (off, subs_rules), = idx.match(b"x.a.test")
    assert off == 2 and subs_rules == (rule("adult"),)
    with pytest.raises(TypeError, match="bytes"):
        idx.match("a.test")  # type: ignore[arg-type]


def test_close_releases_the_mapping_and_later_lookups_raise(
        lookup: ModuleType, tmp_path: Path) -> None:
    b = IndexBuilder()
    b.add(b"a.test", rule("adult"))
    b.write(tmp_path / "i.sgidx")
    idx = ListIndex.open(tmp_path / "i.sgidx", pure=False)
    match, probe = idx.match, idx.probe  # what a stale reference would hold
    assert match(b"a.test") == [(0, (rule("adult"),))]
    idx.close()  # would raise BufferError if the C object still held the views
    assert idx._buffer.closed  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="closed"):
        match(b"a.test")
    with pytest.raises(ValueError, match="closed"):
        probe(b"a.test")
    idx.close()  # twice is harmless
    with ListIndex.from_bytes(b.to_bytes(), pure=False) as mem:
        assert mem.probe(b"a.test") == (rule("adult"),)
    with pytest.raises(ValueError, match="closed"):
        mem.probe(b"a.test")


def _with_dir(data: bytes, values: list[int]) -> bytes:
    magic, header_len = PREFIX.unpack_from(data, 0)
    header = json.loads(data[PREFIX.size : PREFIX.size + header_len])
    dir_at = layout(PREFIX.size + header_len, header["count"], header["dir_bits"],
                    header["hi_bytes"], header["val_bytes"])[3]
    assert magic == MAGIC and len(values) == (1 << header["dir_bits"]) + 1
    return data[:dir_at] + struct.pack(f"<{len(values)}I", *values)


def test_a_corrupt_directory_is_never_read_past(lookup: ModuleType) -> None:
    data, names = sample_index(200, seed=9)
    n = 1 + (1 << json.loads(data[PREFIX.size : PREFIX.size + PREFIX.unpack_from(data, 0)[1]])
                          ["dir_bits"])
    # a bucket that ends past the arrays: an error, not a read of whatever lies beyond
    idx = ListIndex.from_bytes(_with_dir(data, [i * 1_000_000 for i in range(n)]), pure=False)
    for key in names[:50]:
        with pytest.raises(ValueError, match="corrupt list index"):
            idx.match(key)
        with pytest.raises(ValueError, match="corrupt list index"):
            idx.probe(key)
    # a decreasing directory: empty buckets, as the pure path reads it
    fast, pure = pair(_with_dir(data, [0xFFFFFFFF - i for i in range(n)]))
    for key in names[:50]:
        assert fast.match(key) == pure.match(key) == []


def test_a_combo_id_past_the_combos_is_an_error(lookup: ModuleType) -> None:
    b = IndexBuilder()
    b.add(b"a.test", rule("adult"))
    data = bytearray(b.to_bytes())
    header_len = PREFIX.unpack_from(data, 0)[1]
    vals_at = layout(PREFIX.size + header_len, 1, 4, 8, 1)[2]
    data[vals_at] = 7  # one combo only
    for pure in (False, True):
        idx = ListIndex.from_bytes(bytes(data), pure=pure)
        with pytest.raises(IndexError):
            idx.match(b"a.test")
        with pytest.raises(IndexError):
            idx.probe(b"a.test")


def test_constructor_refuses_arrays_that_disagree(lookup: ModuleType) -> None:
    with pytest.raises(ValueError, match="do not match"):
        lookup.Matcher(b"\0" * 8, b"\0" * 4, b"\0", b"\0" * 4 * 17, 8, 1, 60, [], [], [])
    with pytest.raises(ValueError, match="hi width"):
        lookup.Matcher(b"", b"", b"", b"\0" * 4 * 17, 4, 1, 60, [], [], [])


def test_safegate_pure_selects_the_pure_path(lookup: ModuleType,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = IndexBuilder().to_bytes()
    monkeypatch.delenv("SAFEGATE_PURE", raising=False)
    assert ListIndex.from_bytes(data).accelerated
    monkeypatch.setenv("SAFEGATE_PURE", "0")
    assert ListIndex.from_bytes(data).accelerated
    monkeypatch.setenv("SAFEGATE_PURE", "1")
    idx = ListIndex.from_bytes(data)
    assert not idx.accelerated and "lookup=python" in repr(idx)
    assert ListIndex.from_bytes(data, pure=False).accelerated  # an explicit choice wins


POLICY = """\
tiers:
  kids: {block: [adult], answer: nxdomain}
networks:
  - {name: lab, cidrs: ["127.0.0.1/32", "::1/128"], tier: kids}
"""


@pytest.mark.integration
@pytest.mark.parametrize(("env", "says"), [({}, "(C list lookup)"),
                                           ({"SAFEGATE_PURE": "1"}, "(pure-Python list lookup)")])
def test_a_real_gateway_and_its_worker_answer_alike_on_either_path(
        lookup: ModuleType, unbound: Any, safegate_factory: Any, env: dict[str, str],
        says: str) -> None:
    # dns.workers: 2 also maps the index in a worker process, which reads the same variable.
    gw = safegate_factory(
        upstream_port=unbound.port, policies={"p.yaml": POLICY},
        lists={"adult.txt": "adult-site.test\ngamble.test\n"},
        lists_yaml="categories:\n  adult:\n    - {path: adult.txt, format: domains}\n",
        extra={"dns": {"workers": 2}, "limits": {"rrl": {"enabled": False}}},
        env={"SAFEGATE_PURE": "", **env})
    assert says in gw.stderr_text()
    for _ in range(20):  # both processes share the socket: enough queries to reach each
        for name in ("adult-site.test", "www.adult-site.test", "a.b.gamble.test"):
            assert gw.query(name).rcode() == dns.rcode.NXDOMAIN, name
        reply = gw.query(ub.ALLOWED)
        assert reply.rcode() == dns.rcode.NOERROR
        assert [r.address for rrset in reply.answer for r in rrset] == [ub.ALLOWED_A]
