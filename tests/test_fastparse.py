"""The C fast path (gateway/dns/_fastparse.c) against dns/fastpath.py's `parse` and `reply`.

The Python is the reference: the C parse must return the same tuple, and None in exactly the
same cases, for every input; the C reply the same bytes. The parse is compared over every query
tests/test_fastpath.py builds, random mutations of valid queries (bit flips, truncations,
extensions, odd labels, OPT variants, long names) and random bytes; the reply over random
answer modes, offsets, EDE codes and texts. Without a compiler the extension is absent and
these tests skip, unless SAFEGATE_EXPECT_COMPILED=1 (the compiled CI pass) where a missing
extension is a failure.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import dns.edns
import dns.message
import dns.rcode
import pytest

from gateway.dns import fastpath, wire
from gateway.dns.answers import BlockAnswers
from tests.support.builders import make_profile, make_resolver
from tests.support.queries import ODD_SHAPES
from tests.support.queries import queries as fastpath_queries

MUTATIONS = 200_000
RANDOM = 50_000


@pytest.fixture(scope="module")
def cparse() -> ModuleType:
    try:
        from gateway.dns import _fastparse
    except ImportError as exc:
        if os.environ.get("SAFEGATE_EXPECT_COMPILED") == "1":
            pytest.fail(f"SAFEGATE_EXPECT_COMPILED=1 but the C parse is not built: {exc}")
        pytest.skip(f"C parse not built (python setup.py build_ext --inplace): {exc}")
    return _fastparse


def check(c: Callable[[bytes], object], packets: Iterator[bytes]) -> tuple[int, int]:
    """Assert C == Python on every packet; (packets, how many parsed to a tuple)."""
    total = parsed = 0
    ref = fastpath.parse
    for packet in packets:
        want = ref(packet)
        got = c(packet)
        if got != want or type(got) is not type(want):
            pytest.fail(f"C {got!r} != Python {want!r} for {packet!r}")
        if want is not None:
            assert [type(v) for v in got] == [bytes, int, int, bool, bool]  # type: ignore
        total += 1
        parsed += want is not None
    return total, parsed


# ---------------------------------------------------------------- query generator

ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
ODD = b".\x00\x7f\x80\xc3\xa9\xff *\\"


def label(rng: random.Random) -> bytes:
    n = rng.choice((1, 2, 3, 5, 8, 13, rng.randrange(1, 64), 63, 64, rng.randrange(64, 256)))
    chars = bytearray(rng.choice(ALPHABET) for _ in range(min(n, 63)))
    if rng.random() < 0.1:  # a dot, a control byte or non-ASCII inside a label
        chars[rng.randrange(len(chars))] = rng.choice(ODD)
    return bytes((n,)) + bytes(chars) + (bytes(n - 63) if n > 63 else b"")


def name(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.05:
        return b"\x00"  # the root
    if kind < 0.15:  # long names around the 255-byte limit
        out = b""
        target = rng.randrange(230, 300)
        while len(out) < target:
            out += label(rng) if rng.random() < 0.3 else b"\x03abc"
        return out + b"\x00"
    if kind < 0.2:  # a compression pointer somewhere
        return b"\x03www" * rng.randrange(2) + bytes((0xC0 | rng.randrange(64), rng.randrange(256)))
    count = rng.randrange(1, 6)
    return b"".join(label(rng) if rng.random() < 0.2 else
                    wire.key_to_wire(rng.choice((b"adult", b"Test", b"x", b"WWW")))[:-1]
                    for _ in range(count)) + b"\x00"


def opt(rng: random.Random) -> bytes:
    options = b""
    for _ in range(rng.choice((0, 0, 1, 2, 3))):
        data = rng.randbytes(rng.choice((0, 1, 4, 8, 16, rng.randrange(40))))
        code = rng.choice((10, 8, 12, 15, rng.randrange(65536)))
        declared = len(data) if rng.random() < 0.85 else rng.randrange(70)
        options += struct.pack(">HH", code, declared) + data
    owner = b"\x00" if rng.random() < 0.95 else rng.choice((b"\x01a\x00", b"\xc0\x0c"))
    rtype = 41 if rng.random() < 0.95 else rng.choice((1, 40, 42, 0x2900))
    version = 0 if rng.random() < 0.9 else rng.randrange(1, 256)
    flags = rng.choice((0, 0x8000, rng.randrange(65536)))
    rdlen = len(options) if rng.random() < 0.9 else rng.randrange(65536)
    return owner + struct.pack(">HHBBHH", rtype, rng.choice((512, 1232, 4096)),
                               rng.choice((0, 0, 0, 1)), version, flags, rdlen) + options


def query(rng: random.Random) -> bytes:
    """A query that is usually plain, with each part sometimes off the common shape."""
    flags = rng.choice((0x0100, 0x0000, 0x0110, 0x0120, 0x0130)) if rng.random() < 0.9 else \
        rng.randrange(65536)
    edns = rng.random() < 0.6
    counts = [1, 0, 0, int(edns)]
    if rng.random() < 0.05:
        counts[rng.randrange(4)] = rng.choice((0, 1, 2, 256, 257))
    qtype = rng.choice((1, 28, 15, 65, 255, 0, rng.randrange(65536)))
    qclass = 1 if rng.random() < 0.9 else rng.choice((3, 255, 0x0101, 0x8001, 256))
    packet = struct.pack(">HH4H", rng.randrange(65536), flags, *counts) + name(rng) + \
        struct.pack(">HH", qtype, qclass)
    if edns or rng.random() < 0.05:
        packet += opt(rng)
    if rng.random() < 0.05:
        packet += rng.randbytes(rng.randrange(1, 20))
    return packet


def mutate(rng: random.Random, packet: bytes) -> bytes:
    kind = rng.randrange(6)
    data = bytearray(packet)
    if kind == 0 and data:  # bit flips
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        del data[rng.randrange(len(data) + 1):]
    elif kind == 2:  # extension
        data += rng.randbytes(rng.randrange(1, 30))
    elif kind == 3 and data:  # one byte replaced, often a length or count
        i = rng.randrange(min(len(data), 40)) if rng.random() < 0.5 else rng.randrange(len(data))
        data[i] = rng.choice((0, 1, 0x29, 0x2E, 0x3F, 0x40, 0x41, 0x5A, 0x80, 0xC0, 0xFF,
                              rng.randrange(256)))
    elif kind == 4:  # uppercase / lowercase swaps
        data = bytearray(bytes(data).swapcase())
    # kind 5: unchanged
    return bytes(data)


# ---------------------------------------------------------------- tests


def test_the_queries_test_fastpath_builds(cparse: ModuleType) -> None:
    packets = [packet for _label, packet in fastpath_queries()]
    packets += ODD_SHAPES
    packets += [wire.build_query(q, wire.key_to_wire(b"adult.test") + q.to_bytes(2, "big")
                                 + b"\x00\x01", do=False, cd=False) for q in range(1, 3001)]
    total, parsed = check(cparse.parse, iter(packets))
    assert total > 3400 and parsed > 3300


def test_mutated_queries(cparse: ModuleType) -> None:
    rng = random.Random(1212)

    def packets() -> Iterator[bytes]:
        for _ in range(MUTATIONS):
            packet = query(rng)
            yield packet
            yield mutate(rng, packet)

    total, parsed = check(cparse.parse, packets())
    assert total == 2 * MUTATIONS
    assert parsed > total // 10  # the comparison covers the accepting path, not only None


def test_edge_shapes(cparse: ModuleType) -> None:
    """Boundaries the generator may hit rarely: name lengths 253-256 on the wire, 63/64-byte
    labels, a packet ending at every byte, OPT options ending exactly at the packet."""
    packets = []
    for wire_len in range(240, 270):
        labels = [b"a" * 63] * (wire_len // 64) + [b"b" * max(1, wire_len % 64 - 1)]
        name = b"".join(bytes((len(x),)) + x for x in labels) + b"\x00"
        for edns in (False, True):
            q = struct.pack(">6H", 7, 0x100, 1, 0, 0, int(edns)) + name + b"\x00\x01\x00\x01"
            if edns:
                q += b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x04\x00\x0a\x00\x00"
            packets += [q[:cut] for cut in range(len(q) + 1)] + [q + b"\x00"]
    for size in (62, 63, 64):
        packets.append(struct.pack(">6H", 7, 0x100, 1, 0, 0, 0) + bytes((size,)) + b"A" * size
                       + b"\x00\x00\x01\x00\x01")
    _total, parsed = check(cparse.parse, iter(packets))
    assert 20 <= parsed < 63  # names from both sides of the length limit parse whole


def test_random_bytes(cparse: ModuleType) -> None:
    rng = random.Random(12)
    plain_header = struct.pack(">5H", 0x100, 1, 0, 0, 0)

    def packets() -> Iterator[bytes]:
        for i in range(RANDOM):
            data = rng.randbytes(rng.choice((0, 5, 12, 17, 30, rng.randrange(600))))
            if i % 2:  # past the header checks, so the random part reaches the walk
                data = data[:2] + plain_header + bytes((rng.randrange(2),)) + data[12:]
            yield data

    total, _ = check(cparse.parse, packets())
    assert total == RANDOM


def test_only_bytes(cparse: ModuleType) -> None:
    for bad in (bytearray(30), memoryview(bytes(30)), "x" * 30, None):
        with pytest.raises(TypeError):
            cparse.parse(bad)


def test_the_choice_follows_pure_and_the_environment(cparse: ModuleType,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert fastpath.choose(pure=True) is fastpath.PURE
    assert fastpath.choose(pure=False) == ("C", cparse.parse, cparse.blocked_reply)
    monkeypatch.setenv("SAFEGATE_PURE", "1")
    assert fastpath.choose() is fastpath.PURE
    assert make_resolver(make_profile(set())).fast is fastpath.PURE
    monkeypatch.setenv("SAFEGATE_PURE", "0")
    assert fastpath.choose().name == "C"
    assert make_resolver(make_profile(set())).fast.parse is cparse.parse


# ---------------------------------------------------------------- blocked_reply

ANSWERS = [BlockAnswers.for_addresses(30, ["127.0.0.80", "::80"], steer=["127.0.0.9"]),
           BlockAnswers.for_addresses(86400, ["127.0.0.80", "127.0.0.81", "::80", "::81"]),
           BlockAnswers.for_addresses(0, [])]
MODES = ("nxdomain", "nodata", "blockpage", "null", "steer")


def text_part(rng: random.Random) -> bytes:
    n = rng.choice((0, 1, 7, 20, rng.randrange(120), rng.randrange(190, 260)))
    return bytes(rng.choice(b"adult: (F-7)\xc3\xa9 ") for _ in range(n))


def reply_cases(rng: random.Random, count: int) -> Iterator[tuple[Any, ...]]:
    """fastpath.reply's arguments: (data, end, answers, qtype, edns, do, answer, off, ede,
    prefix, key, suffix)."""
    made = 0
    while made < count:
        data = query(rng)
        shape = fastpath.parse(data)
        if shape is None:
            continue
        key, end, qtype, edns, do = shape
        if rng.random() < 0.3:
            qtype = rng.choice((1, 28, 15, 65, rng.randrange(65536)))
        dots = [0] + [i + 1 for i, c in enumerate(key) if c == 0x2E]
        off = rng.choice(dots) if rng.random() < 0.9 else rng.randrange(len(key) + 300)
        if rng.random() < 0.2:
            data += rng.randbytes(rng.randrange(1, 40))  # bytes after the question are not copied
        yield (data, end, rng.choice(ANSWERS), qtype, edns, do, rng.choice(MODES), off,
               rng.choice((0, 15, 16, 17, 18, 0xFFFF)), text_part(rng), key, text_part(rng))
        made += 1


def test_blocked_reply_equals_the_python_reply(cparse: ModuleType) -> None:
    rng = random.Random(1213)
    long_text = 0
    for case in reply_cases(rng, 100_000):
        data, end, answers, qtype, edns, do, answer, off, ede, prefix, key, suffix = case
        want = fastpath.reply(*case)
        got = cparse.blocked_reply(data, end, answers.parts_for(qtype, edns, do, answer), edns,
                                   off, ede, prefix, key, suffix)
        if got != want:
            pytest.fail(f"C {got!r} != Python {want!r} for {case!r}")
        long_text += edns and ede and len(prefix + key[off:] + suffix) > 200
    assert long_text > 1000  # the 200-byte EDE text cut is exercised


def test_blocked_reply_checks_its_arguments(cparse: ModuleType) -> None:
    data = wire.build_query(7, wire.key_to_wire(b"adult.test") + b"\x00\x01\x00\x01",
                            do=False, cd=False)
    parts = ANSWERS[0].parts_for(1, True, False, "nxdomain")
    end = 12 + 12 + 4
    args: list[Any] = [data, end, parts, True, 0, 15, b"adult: ", b"adult.test", b""]
    assert cparse.blocked_reply(*args) == fastpath.reply(
        data, end, ANSWERS[0], 1, True, False, "nxdomain", 0, 15, b"adult: ", b"adult.test", b"")
    for i, bad in [(0, bytearray(data)), (2, list(parts)), (2, parts[:4]), (6, "adult: "),
                   (7, memoryview(b"adult.test")), (2, (1, b"", b"", "", b""))]:
        with pytest.raises(TypeError):
            cparse.blocked_reply(*args[:i], bad, *args[i + 1:])
    for i, bad in [(1, 11), (1, len(data) + 1), (4, -1), (5, -1), (5, 65536),
                   (2, (0x10000, *parts[1:]))]:
        with pytest.raises(ValueError):
            cparse.blocked_reply(*args[:i], bad, *args[i + 1:])
    with pytest.raises(TypeError):
        cparse.blocked_reply(*args[:8])


POLICY = """\
tiers:
  kids: {block: [adult], answer: nxdomain}
networks:
  - {name: lab, cidrs: ["127.0.0.1/32", "::1/128"], tier: kids}
"""


def e2e_packets() -> list[tuple[bool, bytes]]:
    """(answered by SafeGate alone, packet): shapes the C parse decides on, as clients send
    them; every local answer here is a block (NXDOMAIN) or a FORMERR."""
    out = []
    cookie = dns.edns.GenericOption(dns.edns.COOKIE, b"\x01" * 8)
    for qid, (name, edns) in enumerate(
            (n, e) for n in ("adult-site.test", "WWW.Adult-Site.TEST", "a.b.gamble.test",
                             "x." * 115 + "gamble.test", "allowed.test")
            for e in ("none", "plain", "do", "cookie")):
        kw: dict[str, Any] = ({"use_edns": False} if edns == "none" else
                              {"want_dnssec": True} if edns == "do" else
                              {"use_edns": 0, "options": [cookie] if edns == "cookie" else []})
        m = dns.message.make_query(name, "A", **kw)
        m.id = qid
        out.append((name != "allowed.test", m.to_wire()))
    head = struct.pack(">6H", 99, 0x100, 1, 0, 0, 0)
    # a dot inside a label and non-ASCII bytes: left to the full path, which blocks them too
    for labels in (b"\x05ad.lt\x0aadult-site\x04test", b"\x02\xc3\xa9\x0aadult-site\x04test",
                   b"\x0aADULT-SITE\x04TesT"):
        out.append((True, head + labels + b"\x00\x00\x01\x00\x01"))
    bad_opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x08"  # overruns
    out.append((True, head[:10] + b"\x00\x01" + wire.key_to_wire(b"adult-site.test")
                + b"\x00\x01\x00\x01" + bad_opt))
    return out


def ask(port: int, packet: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5.0)
        s.sendto(packet, ("127.0.0.1", port))
        return s.recv(65535)


@pytest.mark.integration
def test_real_gateways_on_either_parse_answer_byte_for_byte_alike(
        cparse: ModuleType, unbound: Any, safegate_factory: Any) -> None:
    gws = [safegate_factory(
        upstream_port=unbound.port, policies={"p.yaml": POLICY},
        lists={"adult.txt": "adult-site.test\ngamble.test\n"},
        lists_yaml="categories:\n  adult:\n    - {path: adult.txt, format: domains}\n",
        extra={"limits": {"rrl": {"enabled": False}}}, env={"SAFEGATE_PURE": pure})
        for pure in ("", "1")]
    assert "(C list lookup), C fast path" in gws[0].stderr_text()
    assert "(pure-Python list lookup), pure-Python fast path" in gws[1].stderr_text()
    packets = e2e_packets()
    for local, packet in packets:
        c, py = (ask(gw.dns_addrs[0][1], packet) for gw in gws)
        if local:  # every byte is SafeGate's
            assert c == py, packet
            assert c[3] & 0xF in (dns.rcode.NXDOMAIN, dns.rcode.FORMERR), packet
        else:  # the upstream's answer (its TTLs may tick between the two)
            assert c[3] & 0xF == py[3] & 0xF == dns.rcode.NOERROR, packet
    assert dns.message.from_wire(ask(gws[0].dns_addrs[0][1], packets[0][1])).rcode() \
        == dns.rcode.NXDOMAIN
    assert ask(gws[0].dns_addrs[0][1], packets[-1][1])[3] & 0xF == dns.rcode.FORMERR
