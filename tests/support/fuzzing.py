"""Mutation fuzzing of DNS queries: a corpus, mutators, and runners against a real gateway.

Shared by tests/test_fuzz.py (a few thousand cases per CI run) and bench/fuzz.py (minutes to
hours). Every case is built from its own `random.Random(f"{seed}:{kind}:{index}")`, so one
failing case is rebuilt from (seed, kind, index) alone, without replaying the run before it:
`python bench/fuzz.py --replay SEED:udp:1234` prints it.

What the runners check is what a client (or an attacker's victim) would see:
- UDP: no reply to a datagram that is not a query (QR=1, shorter than a header); at most one
  reply per datagram; every reply parses with dnspython, has QR=1 and echoes the ID; the
  interleaved unmutated control queries get the right answer.
- TCP: the stream is split into messages the way RFC 7766 framing splits it (length lies
  included); every reply frame parses, has QR=1 and carries the ID of a query we framed.
The caller owns the gateway process and checks its stderr for tracebacks.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import struct
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dns.edns
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from gateway.config.dns import CacheConfig
from gateway.dns import cache, proxyproto, wire

# ---------------------------------------------------------------- corpus

ALLOWED = "allowed.test"
ALLOWED_A = "192.0.2.10"  # tests/support/unbound.py's answer for ALLOWED
# Names of tests/support/unbound.py's data: allowed, CNAME, large TXT, NODATA, NXDOMAIN, and
# names the fuzz gateway's policy blocks (they also resolve upstream, see unbound.py).
CORPUS_NAMES = (
    ALLOWED, "www.allowed.test", "AlLoWeD.TeSt", "cname.test", "big.test", "nodata.test",
    "does-not-exist.test", "adult-site.test", "sub.adult-site.test", "gamble.test",
)
BLOCKED_LIST = "adult-site.test\ngamble.test\n"
CORPUS_TYPES = ("A", "AAAA", "TXT", "HTTPS")
COOKIE = bytes(range(1, 9))  # an 8-byte client cookie (RFC 7873)


def _edns_variants() -> list[tuple[str, dict[str, object]]]:
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    cookie = dns.edns.GenericOption(dns.edns.COOKIE, COOKIE)
    pad = dns.edns.GenericOption(dns.edns.PADDING, b"\0" * 20)
    return [
        ("plain", {"use_edns": False}),
        ("edns", {"use_edns": 0, "payload": 1232}),
        ("do", {"use_edns": 0, "payload": 4096, "want_dnssec": True}),
        ("ecs", {"use_edns": 0, "payload": 1232, "options": [ecs]}),
        ("cookie", {"use_edns": 0, "payload": 1232, "options": [cookie]}),
        ("do+ecs+cookie+pad", {"use_edns": 0, "payload": 1232, "want_dnssec": True,
                               "options": [ecs, cookie, pad]}),
    ]


def build_corpus() -> list[tuple[str, bytes]]:
    """Valid queries (label, wire) in a fixed order: names x types x EDNS shapes."""
    out: list[tuple[str, bytes]] = []
    for name in CORPUS_NAMES:
        for rdtype in CORPUS_TYPES:
            for label, kw in _edns_variants():
                msg = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
                msg.id = 0
                out.append((f"{name}/{rdtype}/{label}", msg.to_wire()))
    return out


CORPUS = build_corpus()

# The gateway under fuzz: loopback in a tier that blocks BLOCKED_LIST, a trusted front end
# other than the fuzzer's own address (so PROXY v2 headers from 127.0.0.1 are plain bytes and
# from FRONTEND are read), and RRL off: every reply to this one loopback source is checked,
# and RRL would (rightly) drop most of them. forward_ecs on: a front end's ECS is also cut
# down and sent upstream (wire.ecs_truncate on client bytes).
FRONTEND = "127.0.0.9"
GATEWAY_POLICY = """\
tiers:
  kids: {block: [adult], answer: nxdomain}
networks:
  - {name: loopback, cidrs: ["127.0.0.0/8", "::1/128"], tier: kids}
"""


def gateway_config(upstream_port: int) -> dict[str, Any]:
    """Keyword arguments for procs.write_gateway_config (tests and bench use the same)."""
    return {
        "upstream_port": upstream_port,
        "policies": {"p.yaml": GATEWAY_POLICY},
        "lists": {"adult.txt": BLOCKED_LIST},
        "lists_yaml": "categories:\n  adult:\n    - {path: adult.txt, format: domains}\n",
        "extra": {"dns": {"trusted_frontends": [f"{FRONTEND}/32"], "proxy_protocol": True,
                          "forward_ecs": True},
                  "limits": {"rrl": {"enabled": False}}},
    }


# ---------------------------------------------------------------- mutators

Mutator = Callable[[random.Random, bytearray], bytearray]

QTYPES = (0, 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 43, 46, 48, 64, 65, 99, 249, 250, 251, 252,
          253, 254, 255, 256, 32768, 65535)
QCLASSES = (0, 1, 2, 3, 4, 254, 255, 65535)


def question_end(data: bytes | bytearray) -> int:
    """Offset just past the question of an uncompressed query (len(data) if it runs out)."""
    pos = 12
    while pos < len(data) and data[pos] != 0:
        if data[pos] > 63:
            return min(pos + 2 + 4, len(data))
        pos += 1 + data[pos]
    return min(pos + 1 + 4, len(data))


def _rand_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


def flip_bits(rng: random.Random, d: bytearray) -> bytearray:
    for _ in range(rng.randint(1, 8)):
        if d:
            i = rng.randrange(len(d))
            d[i] ^= 1 << rng.randrange(8)
    return d


def flip_flags(rng: random.Random, d: bytearray) -> bytearray:
    """Any header flag but QR (AA, TC, RD, RA, Z, AD, CD, RCODE bits)."""
    if len(d) >= 4:
        bit = rng.choice([b for b in range(15) if b not in range(11, 15)])
        word = struct.unpack_from(">H", d, 2)[0] ^ (1 << bit)
        struct.pack_into(">H", d, 2, word)
    return d


def set_qr(rng: random.Random, d: bytearray) -> bytearray:
    """A response (or a reflected packet): must never be answered."""
    if len(d) >= 3:
        d[2] |= 0x80
    return d


def random_opcode(rng: random.Random, d: bytearray) -> bytearray:
    if len(d) >= 3:
        d[2] = (d[2] & 0x87) | (rng.randint(1, 15) << 3)
    return d


def truncate(rng: random.Random, d: bytearray) -> bytearray:
    return d[:rng.randrange(len(d))] if d else d


def append_garbage(rng: random.Random, d: bytearray) -> bytearray:
    return d + _rand_bytes(rng, rng.randint(1, 64))


def overwrite_span(rng: random.Random, d: bytearray) -> bytearray:
    if d:
        start = rng.randrange(len(d))
        n = rng.randint(1, min(16, len(d) - start))
        d[start:start + n] = _rand_bytes(rng, n)
    return d


def count_lie(rng: random.Random, d: bytearray) -> bytearray:
    """QDCOUNT/ANCOUNT/NSCOUNT/ARCOUNT that do not match the sections."""
    if len(d) >= 12:
        which = rng.randrange(4)
        struct.pack_into(">H", d, 4 + 2 * which,
                         rng.choice((0, 1, 2, 3, 0x7FFF, 0xFFFF, rng.randrange(65536))))
    return d


def pointer_name(rng: random.Random, d: bytearray) -> bytearray:
    """Replace the QNAME with compression pointers: loops, into the header, past the end."""
    end = question_end(d)
    tail = d[end - 4:end] if end >= 16 else b"\x00\x01\x00\x01"
    choice = rng.randrange(5)
    if choice == 0:
        name = b"\xc0\x0c"                                   # points at itself
    elif choice == 1:
        name = b"\x03www\xc0\x0c"                            # a label, then back to the start
    elif choice == 2:
        name = bytes([0xC0 | rng.randrange(64), rng.randrange(256)])  # anywhere
    elif choice == 3:
        name = b"\xc0\x0e\xc0\x0c"                           # two pointers at each other
    else:
        name = b"\x01a" * rng.randint(1, 4) + b"\xc0" + bytes([rng.randrange(12)])  # header
    return bytearray(d[:12] + name + tail + d[end:])


def label_abuse(rng: random.Random, d: bytearray) -> bytearray:
    """Labels a query must not carry, or only barely: reserved types, > 255 octets, dots."""
    end = question_end(d)
    tail = d[end - 4:end] if end >= 16 else b"\x00\x01\x00\x01"
    choice = rng.randrange(6)
    if choice == 0:
        name = bytes([rng.randint(0x40, 0xBF)]) + b"abc\x00"           # reserved label type
    elif choice == 1:
        name = (b"\x3f" + b"a" * 63) * rng.randint(4, 5) + b"\x00"     # > 255 octets
    elif choice == 2:
        name = b"\x07a.b.c.d\x04test\x00"                              # a dot inside a label
    elif choice == 3:
        name = b"\x00"                                                 # the root
    elif choice == 4:
        name = b"\x05" + _rand_bytes(rng, 5) + b"\x04test\x00"         # any octets
    else:
        name = b"\x3f" + b"x" * 10                                     # label runs off the end
    return bytearray(d[:12] + name + tail + d[end:])


def qtype_class(rng: random.Random, d: bytearray) -> bytearray:
    end = question_end(d)
    if end >= 16:
        qtype = rng.choice(QTYPES) if rng.random() < 0.8 else rng.randrange(65536)
        qclass = rng.choice(QCLASSES) if rng.random() < 0.5 else 1
        struct.pack_into(">HH", d, end - 4, qtype, qclass)
    return d


def _option(rng: random.Random) -> bytes:
    code = rng.choice((dns.edns.ECS, dns.edns.COOKIE, dns.edns.PADDING, dns.edns.EDE, 3, 5, 9,
                       11, 13, 14, 65001, rng.randrange(65536)))
    if code == dns.edns.ECS and rng.random() < 0.7:
        data = ecs_garbage(rng)
    else:
        data = _rand_bytes(rng, rng.choice((0, 1, 2, 7, 8, 40, rng.randint(0, 64))))
    olen = len(data)
    if rng.random() < 0.3:
        olen = rng.choice((0, olen + 1, max(olen - 1, 0), 0xFFFF))  # length lies
    return struct.pack(">HH", code, olen) + data


def ecs_garbage(rng: random.Random) -> bytes:
    """ECS option data (RFC 7871) with odd families, prefixes and address lengths."""
    family = rng.choice((0, 1, 2, 3, rng.randrange(65536)))
    source = rng.choice((0, 1, 8, 24, 32, 33, 56, 128, 129, 255))
    scope = rng.choice((0, 24, 255))
    addr = _rand_bytes(rng, rng.choice((0, 1, 3, 4, 7, 16, 17, rng.randint(0, 20))))
    return struct.pack(">HBB", family, source, scope) + addr


def opt_record(rng: random.Random) -> bytes:
    owner = b"\x00" if rng.random() < 0.85 else b"\x01x\x00"
    size = rng.choice((0, 1, 511, 512, 1232, 4096, 65535))
    ttl = (rng.choice((0, 0, 1, 255)) << 24) | (rng.choice((0, 0, 1, 255)) << 16) | \
        rng.choice((0, 0x8000, 0xFFFF))
    rdata = b"".join(_option(rng) for _ in range(rng.randint(0, 4)))
    rdlen = len(rdata)
    if rng.random() < 0.2:
        rdlen = rng.choice((rdlen + 1, rdlen + 100, max(rdlen - 1, 0), 0xFFFF))
    return owner + struct.pack(">HHIH", 41, size, ttl, rdlen) + rdata


def edns_garbage(rng: random.Random, d: bytearray) -> bytearray:
    """Replace the additional section with one or more OPT records full of odd options."""
    end = question_end(d)
    if len(d) < 12:
        return d
    n = rng.choice((1, 1, 1, 2, 3))
    struct.pack_into(">H", d, 10, n)
    return bytearray(d[:end] + b"".join(opt_record(rng) for _ in range(n)))


def extra_records(rng: random.Random, d: bytearray) -> bytearray:
    """Records in the answer/authority sections (the slow parse path), maybe compressed."""
    if len(d) < 12:
        return d
    end = question_end(d)
    section = rng.randrange(3)
    owner = rng.choice((b"\xc0\x0c", b"\x00", b"\x01x\xc0\x0c", b"\x03abc\x00",
                        struct.pack(">H", 0xC000 | (end & 0x3FFF))))
    rtype = rng.choice((1, 5, 6, 41, 250, rng.randrange(65536)))
    rdata = _rand_bytes(rng, rng.choice((0, 4, 16)))
    rr = owner + struct.pack(">HHIH", rtype, 1, 300, len(rdata)) + rdata
    counts = list(struct.unpack_from(">HHH", d, 6))
    counts[section] = (counts[section] + rng.randint(1, 2)) & 0xFFFF
    struct.pack_into(">HHH", d, 6, *counts)
    return bytearray(d[:end] + rr + d[end:])


def duplicate_question(rng: random.Random, d: bytearray) -> bytearray:
    end = question_end(d)
    if end < 16:
        return d
    struct.pack_into(">H", d, 4, rng.choice((2, 3)))
    return bytearray(d[:end] + d[12:end] + d[end:])


def proxy_header(rng: random.Random, *, udp: bool) -> bytes:
    """A PROXY v2 header: well-formed (naming a loopback or an outside client) or garbage."""
    src = rng.choice(("127.0.0.1", "192.0.2.1", "::1", "2001:db8::1"))
    dst = "::1" if ":" in src else "127.0.0.1"
    good = proxyproto.build(src, dst, rng.randrange(65536), 53, udp=udp)
    choice = rng.randrange(7)
    if choice == 0:
        return good
    if choice == 1:
        return good[:rng.randrange(len(good))]                       # truncated
    if choice == 2:
        return proxyproto.SIGNATURE + bytes([rng.randrange(256), rng.randrange(256)]) + \
            struct.pack(">H", rng.choice((0, 1, 12, 36, 216, 0xFFFF))) + _rand_bytes(rng, 12)
    if choice == 3:
        return proxyproto.SIGNATURE + b"\x20\x00\x00\x00"            # LOCAL
    if choice == 4:
        return good + _rand_bytes(rng, rng.randint(1, 16))           # length lie (short)
    if choice == 5:
        body = _rand_bytes(rng, rng.randint(0, 40))
        return proxyproto.SIGNATURE + b"\x21" + bytes([rng.randrange(256)]) + \
            struct.pack(">H", len(body)) + body                      # odd family/transport
    return proxyproto.SIGNATURE[:rng.randrange(1, 12)] + _rand_bytes(rng, 8)


def prepend_proxy(rng: random.Random, d: bytearray) -> bytearray:
    """PROXY v2 header in front of a query (UDP framing: one header per datagram)."""
    return bytearray(proxy_header(rng, udp=True) + d)


def splice(rng: random.Random, d: bytearray) -> bytearray:
    """The head of this query and the tail of another corpus query."""
    other = rng.choice(CORPUS)[1]
    cut = rng.randrange(len(d) + 1)
    return bytearray(d[:cut] + other[rng.randrange(len(other) + 1):])


MUTATORS: dict[str, tuple[Mutator, int]] = {  # name -> (mutator, weight)
    "flip_bits": (flip_bits, 6),
    "flip_flags": (flip_flags, 2),
    "set_qr": (set_qr, 1),
    "random_opcode": (random_opcode, 1),
    "truncate": (truncate, 3),
    "append_garbage": (append_garbage, 2),
    "overwrite_span": (overwrite_span, 3),
    "count_lie": (count_lie, 3),
    "pointer_name": (pointer_name, 2),
    "label_abuse": (label_abuse, 2),
    "qtype_class": (qtype_class, 4),
    "edns_garbage": (edns_garbage, 4),
    "extra_records": (extra_records, 2),
    "duplicate_question": (duplicate_question, 1),
    "prepend_proxy": (prepend_proxy, 1),
    "splice": (splice, 1),
}
_NAMES = list(MUTATORS)
_WEIGHTS = [MUTATORS[n][1] for n in _NAMES]


def case_rng(seed: int, kind: str, index: int) -> random.Random:
    return random.Random(f"{seed}:{kind}:{index}")


def mutate(rng: random.Random, base: bytes) -> tuple[bytes, list[str]]:
    """A fresh ID, then 1-3 weighted mutators; returns (packet, names of mutators applied)."""
    d = bytearray(base)
    struct.pack_into(">H", d, 0, rng.randrange(65536))
    names = rng.choices(_NAMES, _WEIGHTS, k=rng.choice((1, 1, 2, 3)))
    for name in names:
        d = MUTATORS[name][0](rng, d)
    return bytes(d), names


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    kind: str             # "udp" | "tcp" | "wire" | "upstream"
    index: int
    base: str             # corpus label the case started from
    mutators: list[str]
    payload: bytes        # the datagram, or the whole TCP byte stream
    control: bool = False  # an unmutated query for ALLOWED A that must be answered correctly
    source: str = "127.0.0.1"

    def describe(self, seed: int) -> str:
        sender = "" if self.source == "127.0.0.1" else f" sent from {self.source}"
        return (f"{self.kind} case {seed}:{self.kind}:{self.index} from {self.base} via "
                f"{'+'.join(self.mutators) or 'none'}{sender}: {self.payload.hex()}")


def wire_case(seed: int, index: int) -> Case:
    """One mutated query for the in-process parser."""
    rng = case_rng(seed, "wire", index)
    label, base = rng.choice(CORPUS)
    packet, names = mutate(rng, base)
    return Case("wire", index, label, names, packet)


CONTROL_EVERY = 25


def control_query(qid: int) -> bytes:
    msg = dns.message.make_query(ALLOWED, "A", use_edns=0, payload=1232)
    msg.id = qid
    return msg.to_wire()


def ecs_query(rng: random.Random, packet: bytes) -> bytes:
    """`packet` with its additional section replaced by one OPT holding an ECS option that
    is valid (naming a loopback or an outside subnet) or garbage."""
    if len(packet) < 12:
        return packet
    if rng.random() < 0.5:
        opt = dns.edns.ECSOption(rng.choice(("127.0.0.1", "192.0.2.7", "::1", "2001:db8::7")),
                                 rng.choice((8, 24, 32)) if rng.random() < 0.5 else 24)
        data = opt.to_wire()
    else:
        data = ecs_garbage(rng)
    rdata = struct.pack(">HH", dns.edns.ECS, len(data)) + data
    opt_rr = b"\x00" + struct.pack(">HHIH", 41, 1232, 0, len(rdata)) + rdata
    out = bytearray(packet[:question_end(packet)] + opt_rr)
    struct.pack_into(">H", out, 10, 1)
    return bytes(out)


def udp_case(seed: int, index: int, frontend: str | None = None) -> Case:
    """A mutated datagram; every CONTROL_EVERY-th a plain control query. With a `frontend`
    address, one case in four is sent from it: with a PROXY v2 header, or plain (ECS)."""
    rng = case_rng(seed, "udp", index)
    if index % CONTROL_EVERY == CONTROL_EVERY - 1:
        return Case("udp", index, f"{ALLOWED}/A/edns", [], control_query(rng.randrange(65536)),
                    control=True)
    label, base = rng.choice(CORPUS)
    packet, names = mutate(rng, base)
    case = Case("udp", index, label, names, packet)
    if frontend is not None and rng.random() < 0.25:
        # Half with a PROXY v2 header (valid or garbage), half plain DNS, whose ECS option
        # then names the client (and, with forward_ecs, is cut down and sent upstream).
        if rng.random() < 0.5:
            case.payload = proxy_header(rng, udp=True) + packet
            case.mutators = ["frontend_proxy", *names]
        else:
            if rng.random() < 0.5:
                case.payload = ecs_query(rng, packet)
            case.mutators = ["frontend_plain", *names]
        case.source = frontend
    return case


def tcp_case(seed: int, index: int, frontend: str | None = None) -> Case:
    """A TCP byte stream: 1-4 framed queries (mutated or not) with framing lies, maybe
    opened by a PROXY v2 header (from a non-front-end it is just bytes)."""
    rng = case_rng(seed, "tcp", index)
    frames: list[bytes] = []
    names: list[str] = []
    labels: list[str] = []
    for _ in range(rng.randint(1, 4)):
        label, base = rng.choice(CORPUS)
        labels.append(label)
        if rng.random() < 0.7:
            msg, used = mutate(rng, base)
            names += used
        else:
            msg = bytearray(base)
            struct.pack_into(">H", msg, 0, rng.randrange(65536))
            msg = bytes(msg)
        size = len(msg)
        lie = rng.random()
        if lie < 0.06:
            size, names = size + rng.randint(1, 40), [*names, "len_long"]
        elif lie < 0.12:
            size, names = max(0, size - rng.randint(1, 10)), [*names, "len_short"]
        elif lie < 0.15:
            size, names = 0xFFFF, [*names, "len_ffff"]
        elif lie < 0.18:
            frames.append(b"\x00\x00")
            names.append("len_zero")
        frames.append(struct.pack(">H", size) + msg)
    stream = b"".join(frames)
    source = "127.0.0.1"
    if rng.random() < 0.1:
        stream = proxy_header(rng, udp=False) + stream
        names.insert(0, "proxy_stream")
        if frontend is not None and rng.random() < 0.5:
            source = frontend
    if rng.random() < 0.05:
        stream = stream[:rng.randrange(len(stream))]
        names.append("stream_cut")
    return Case("tcp", index, ",".join(labels), names, stream, source=source)


def replay(spec: str, frontend: str | None = None) -> Case:
    """`SEED:KIND:INDEX` (as printed in a finding) -> the case."""
    seed, kind, index = spec.split(":")
    build = {"udp": udp_case, "tcp": tcp_case}.get(kind)
    if kind == "wire":
        return wire_case(int(seed), int(index))
    if kind == "upstream":
        return upstream_case(int(seed), int(index))[0]
    if build is None:
        raise ValueError(f"unknown case kind {kind!r} in {spec!r}")
    return build(int(seed), int(index), frontend)


def frames_of(stream: bytes) -> list[bytes]:
    """The messages a server's RFC 7766 reader cuts from `stream` (a trailing partial frame
    is not a message); zero-length frames carry nothing."""
    out: list[bytes] = []
    pos = 0
    while pos + 2 <= len(stream):
        size = struct.unpack_from(">H", stream, pos)[0]
        if pos + 2 + size > len(stream):
            break
        if size:
            out.append(stream[pos + 2:pos + 2 + size])
        pos += 2 + size
    return out


def is_query(msg: bytes) -> bool:
    """What a server may answer: a readable header with QR=0."""
    return len(msg) >= 12 and not msg[2] & 0x80


# ---------------------------------------------------------------- checking replies


@dataclass
class Finding:
    case: str
    problem: str

    def __str__(self) -> str:
        return f"{self.problem}\n    {self.case}"


def parse_reply(reply: bytes) -> dns.message.Message:
    """dnspython's reading of a reply. An UPDATE-opcode reply is read as a QUERY one:
    dnspython insists its zone section is one SOA question, but a NOTIMP reply echoes
    whatever question the client sent (the header and sections are checked all the same)."""
    if len(reply) >= 3 and (reply[2] >> 3) & 0xF == 5:
        reply = reply[:2] + bytes([reply[2] & 0x87]) + reply[3:]
    return dns.message.from_wire(reply)


def check_reply(reply: bytes, ids: Iterable[int]) -> str | None:
    """A problem with one reply, or None: it must parse, be a response, carry a query's ID."""
    try:
        msg = parse_reply(reply)
    except dns.exception.DNSException as exc:
        return f"reply does not parse with dnspython ({type(exc).__name__}: {exc}): {reply.hex()}"
    if not msg.flags & 0x8000:
        return f"reply has QR=0: {reply.hex()}"
    if msg.id not in set(ids):
        return f"reply ID {msg.id} is not the ID of any query sent: {reply.hex()}"
    return None


def control_ok(reply: bytes, qid: int) -> str | None:
    try:
        msg = parse_reply(reply)
    except dns.exception.DNSException as exc:
        return f"control reply does not parse: {exc}"
    addrs = [rr.address for rrset in msg.answer for rr in rrset
             if rrset.rdtype == dns.rdatatype.A]
    if msg.id != qid or msg.rcode() != 0 or addrs != [ALLOWED_A]:
        return f"control query for {ALLOWED} A got {msg.to_text()!r}"
    return None


# ---------------------------------------------------------------- in-process checks


def _reply_problem(reply: bytes, qid: int, what: str) -> str | None:
    try:
        msg = parse_reply(reply)
    except dns.exception.DNSException as exc:
        return f"{what} does not parse with dnspython ({exc}): {reply.hex()}"
    if msg.id != qid or not msg.flags & 0x8000:
        return f"{what} has ID {msg.id} (want {qid}) or QR=0: {reply.hex()}"
    return None


def check_wire(case: Case, rng: random.Random) -> list[str]:
    """The parser's contract on one packet: parse_query never raises (None only for a
    non-query), read_name/skip_name raise only WireError, the PROXY v2 reader only
    ProxyHeaderError, ECS helpers never; replies built from what it read are valid messages."""
    pkt = case.payload
    problems: list[str] = []
    try:
        q = wire.parse_query(pkt)
        formerr = wire.formerr_from_header(pkt)
        if (q is None) != (not is_query(pkt)) or (formerr is None) != (not is_query(pkt)):
            return [f"parse_query/formerr_from_header disagree with the header: {q}, {formerr!r}"]
        if q is None or formerr is None:
            return []
        replies = [(formerr, "formerr_from_header"),
                   (wire.error_reply(q, q.error or wire.SERVFAIL), "error_reply")]
        if q.question:
            replies.append((wire.truncated_reply(q, 0), "truncated_reply"))
        for reply, what in replies:
            problem = _reply_problem(reply, q.id, what)
            if problem:
                problems.append(problem)
        for option in (q.ecs, ecs_garbage(rng)):
            if option is not None and wire.ecs_address(option) is not None:
                wire.ecs_truncate(option)
        for start in (12, rng.randrange(len(pkt) + 1)):
            for walk in (wire.read_name, wire.skip_name):
                with contextlib.suppress(wire.WireError):
                    walk(pkt, start)
        with contextlib.suppress(proxyproto.ProxyHeaderError):
            proxyproto.parse(proxy_header(rng, udp=bool(case.index & 1)) + pkt)
    except Exception as exc:
        problems.append(f"raised {exc!r}:\n{traceback.format_exc()}")
    return problems


def upstream_replies() -> list[bytes]:
    """Replies like unbound's for the corpus: answers, CNAME chains, NXDOMAIN with SOA, TXT."""
    out = []
    soa = dns.rrset.from_text("test.", 3600, "IN", "SOA",
                              "ns.test. hostmaster.test. 1 3600 600 86400 60")
    for _label, query in CORPUS[::3]:
        msg = dns.message.from_wire(query)
        resp = dns.message.make_response(msg)
        qname = msg.question[0].name
        kind = len(out) % 4
        if kind == 0:
            resp.answer.append(dns.rrset.from_text(qname, 300, "IN", "A", ALLOWED_A))
        elif kind == 1:
            resp.answer.append(dns.rrset.from_text(qname, 300, "IN", "CNAME", f"{ALLOWED}."))
            resp.answer.append(dns.rrset.from_text(f"{ALLOWED}.", 300, "IN", "A", ALLOWED_A))
        elif kind == 2:
            resp.set_rcode(dns.rcode.NXDOMAIN)
            resp.authority.append(soa)
        else:
            resp.answer.append(dns.rrset.from_text(qname, 300, "IN", "TXT", '"x"'))
        out.append(resp.to_wire())
    return out


UPSTREAM_REPLIES = upstream_replies()


def upstream_case(seed: int, index: int) -> tuple[Case, bytes]:
    """(a mutated upstream reply, the question section it answers). Header and question stay
    intact: the forwarder drops replies whose ID or question do not match its query."""
    rng = case_rng(seed, "upstream", index)
    raw = rng.choice(UPSTREAM_REPLIES)
    head = question_end(raw)
    body, names = mutate(rng, b"\0" * 12 + raw[head:])
    reply = raw[:head] + body[12:]
    if rng.random() < 0.3:
        reply = reply[:head + rng.randrange(len(reply) - head + 1)]
        names = [*names, "cut"]
    return Case("upstream", index, "upstream", names, reply), raw[12:head]


def check_upstream(case: Case, question: bytes) -> list[str]:
    """entry_from_reply (cache fill and one-off relay) raises only what chain.py catches
    around both (WireError, IndexError, ValueError); an entry renders replies without error."""
    query = wire.parse_query(struct.pack(">6H", 1, wire.RD, 1, 0, 0, 0) + question)
    assert query is not None and not query.error
    for relay in (False, True):
        try:
            entry = cache.entry_from_reply(case.payload, CacheConfig(), 100.0, relay=relay)
        except (wire.WireError, IndexError, ValueError):
            continue
        except Exception as exc:
            return [f"entry_from_reply(relay={relay}) raised {exc!r}"]
        if entry is not None:
            try:
                entry.reply(query, 150.0, 512)
                entry.reply(query, 150.0, 65535, stale=True)
            except Exception as exc:
                return [f"Entry.reply raised {exc!r}"]
    return []


# ---------------------------------------------------------------- runners


@dataclass
class Stats:
    sent: int = 0
    answered: int = 0
    unanswered: int = 0      # may be answered, was not within the wait (not a finding)
    no_reply_expected: int = 0
    tcp_connections: int = 0
    tcp_frames: int = 0
    tcp_replies: int = 0
    mutators: dict[str, int] = field(default_factory=dict)

    def count(self, case: Case) -> None:
        for name in case.mutators:
            self.mutators[name] = self.mutators.get(name, 0) + 1


def _udp_socket(target: tuple[str, int], source: str) -> socket.socket:
    fam = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((source if fam == socket.AF_INET else "::1", 0))
    s.connect(target)
    s.setblocking(False)
    return s


def run_udp(cases: Sequence[Case], target: tuple[str, int], seed: int, *,
            window: int = 48, wait: float = 2.0, batch: int = 400) -> tuple[Stats, list[Finding]]:
    """Send each datagram from its own socket, `window` awaiting replies at once.

    Sockets stay open until the end of their batch, so a late or second reply, or a reply to
    a packet that must not get one, is still seen. `wait` bounds how long one datagram may
    hold a window slot (a generous upper bound, not a measurement).
    """
    stats, findings = Stats(), []
    for start in range(0, len(cases), batch):
        _udp_batch(cases[start:start + batch], target, seed, window, wait, stats, findings)
    return stats, findings


def _udp_batch(cases: Sequence[Case], target: tuple[str, int], seed: int, window: int,
               wait: float, stats: Stats, findings: list[Finding]) -> None:
    sel = selectors.DefaultSelector()
    replies: dict[int, int] = {}       # case position -> replies seen
    waiting: dict[int, float] = {}     # case position -> deadline (window slots)
    socks: list[socket.socket] = []
    todo = list(range(len(cases)))
    todo.reverse()

    def receive(pos: int, sock: socket.socket) -> None:
        case = cases[pos]
        while True:
            try:
                reply = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                findings.append(Finding(case.describe(seed), "ICMP unreachable: gateway gone?"))
                return
            replies[pos] = replies.get(pos, 0) + 1
            waiting.pop(pos, None)
            packet = _strip_proxy(case)
            if replies[pos] > 1:
                findings.append(Finding(case.describe(seed), "two replies to one datagram"))
            elif not is_query(packet):
                findings.append(Finding(case.describe(seed),
                                        f"answered a non-query (QR=1 or short): {reply.hex()}"))
            elif case.control:
                problem = control_ok(reply, struct.unpack_from(">H", packet)[0])
                if problem:
                    findings.append(Finding(case.describe(seed), problem))
            else:
                problem = check_reply(reply, [struct.unpack_from(">H", packet)[0]])
                if problem:
                    findings.append(Finding(case.describe(seed), problem))

    try:
        while todo or waiting:
            while todo and len(waiting) < window:
                pos = todo.pop()
                case = cases[pos]
                sock = _udp_socket(target, case.source)
                socks.append(sock)
                sel.register(sock, selectors.EVENT_READ, pos)
                sock.send(case.payload)
                stats.sent += 1
                stats.count(case)
                if case.control:  # must be answered: a very generous bound on a busy machine
                    waiting[pos] = time.monotonic() + 5 * wait
                elif is_query(_strip_proxy(case)):
                    waiting[pos] = time.monotonic() + wait
                else:
                    stats.no_reply_expected += 1
            for key, _ in sel.select(0.05):
                receive(key.data, key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            for pos in [p for p, t in waiting.items() if t < now]:
                del waiting[pos]
        # Late replies (and replies to non-queries) that arrived meanwhile.
        for key, _ in sel.select(0.1):
            receive(key.data, key.fileobj)  # type: ignore[arg-type]
        for pos, case in enumerate(cases):
            if pos in replies:
                stats.answered += 1
            elif is_query(_strip_proxy(case)):
                stats.unanswered += 1
                if case.control:
                    findings.append(Finding(case.describe(seed), "control query not answered"))
    finally:
        sel.close()
        for sock in socks:
            sock.close()


def _strip_proxy(case: Case) -> bytes:
    """What the gateway reads as DNS. From a trusted front end (any source but 127.0.0.1
    here) a payload opening with the full PROXY v2 signature loses its header, or is dropped
    whole (b"") when the header is bad; anything else is plain DNS from the front end itself
    (chain.py `_from_frontend`, server.py `_proxy_header`)."""
    data = case.payload
    if case.source == "127.0.0.1" or data[:12] != proxyproto.SIGNATURE:
        return data
    try:
        _src, size = proxyproto.parse(data)
    except proxyproto.ProxyHeaderError:
        return b""
    return data[size:]


def _tcp_one(case: Case, target: tuple[str, int], seed: int, idle: float
             ) -> tuple[int, int, list[Finding]]:
    """(frames, replies, findings) for one connection."""
    stream = case.payload
    dns_stream = _strip_proxy(case)
    frames = frames_of(dns_stream)
    answerable = [f for f in frames if is_query(f)]
    ids = [struct.unpack_from(">H", f)[0] for f in answerable]
    findings: list[Finding] = []
    fam = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    got = 0
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((case.source if fam == socket.AF_INET else "::1", 0))
        s.settimeout(5.0)
        s.connect(target)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s.sendall(stream)
        except OSError:
            return len(frames), 0, findings  # the gateway closed on us (bad PROXY header)
        buf = b""
        s.settimeout(idle)
        while got < len(answerable):
            try:
                chunk = s.recv(65535)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack_from(">H", buf)[0]:
                size = struct.unpack_from(">H", buf)[0]
                reply, buf = buf[2:2 + size], buf[2 + size:]
                got += 1
                problem = check_reply(reply, ids)
                if problem:
                    findings.append(Finding(case.describe(seed), problem))
        if got > len(answerable):
            findings.append(Finding(case.describe(seed),
                                    f"{got} replies to {len(answerable)} queries"))
    return len(frames), got, findings


def run_tcp(cases: Sequence[Case], target: tuple[str, int], seed: int, *, parallel: int = 8,
            idle: float = 1.0) -> tuple[Stats, list[Finding]]:
    """Each case on its own connection, `parallel` at once (under limits.tcp.per_client).

    A connection is read until every query framed in it is answered, or nothing comes for
    `idle` seconds (a frame the gateway still waits for, or a query it chose to drop).
    """
    stats, findings = Stats(), []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(lambda c: _tcp_one(c, target, seed, idle), cases))
    for case, (frames, got, found) in zip(cases, results, strict=True):
        stats.tcp_connections += 1
        stats.sent += 1
        stats.count(case)
        stats.tcp_frames += frames
        stats.tcp_replies += got
        findings += found
    return stats, findings


def gateway_log_problems(stderr: str) -> list[str]:
    """Lines of a gateway's stderr that mean a bug: tracebacks and `bug:` reports."""
    lines = stderr.splitlines()
    out = []
    for i, line in enumerate(lines):
        if "Traceback" in line or "bug:" in line:
            out.append("\n".join(lines[max(0, i - 1):i + 25]))
    return out
