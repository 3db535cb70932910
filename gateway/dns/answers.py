"""Replies SafeGate writes itself: blocked names (with EDE), REFUSED, RFC 8482 ANY.

Bodies are built once per (verdict, qtype, EDNS, DO) and kept in one bounded FIFO per view
(`limits.memory.blocked_bodies`); a reply is then a header, the client's own question bytes,
and that body. (They used to live on the verdict without a bound: a client sweeping the 65,536
qtypes over one blocked name left ~80 MB behind.) The cache is keyed by the verdict's identity
(hashing the dataclass costs ~1 µs, an id ~0.1) and holds the verdict, so the id stays its own.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.config.limits import MemoryLimits
from gateway.dns import wire
from gateway.dns.wire import RR_FIXED
from gateway.policy.decide import Verdict

EDE_PROHIBITED = 18
EDE_NOT_SUPPORTED = 21
_SOA_RDATA_NAMES = b"\x08safegate\x07invalid\x00\x0ahostmaster\x08safegate\x07invalid\x00"


Body = tuple[int, bytes, bytes]  # (flags, counts, records)
# (flags, counts, address records, SOA record minus its owner, OPT minus RDLEN)
Parts = tuple[int, bytes, bytes, bytes, bytes]
_U16 = struct.Struct(">H")
_EDE_HEAD = struct.Struct(">HHH")
_PARTS_LIMIT = 1024  # (answer, qtype, EDNS, DO) shapes kept by blocked_body


class BodyCache:
    """Prebuilt blocked-reply bodies, the oldest evicted past `limit` (0: none kept).

    First in, first out: a hit costs one dict probe and no reordering; an evicted body that is
    still wanted is rebuilt in a few µs. Only the slow path reaches it: a repeated query is
    answered from the profile's reply memo.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # (id(verdict), qtype, EDNS, DO) -> (verdict, body): holding the verdict keeps it
        # alive, so its id cannot name another verdict while the entry lives.
        self.data: OrderedDict[tuple[int, int, bool, bool], tuple[Verdict, Body]] = \
            OrderedDict()
        self.built = 0   # bodies built, for tests and benchmarks

    def __len__(self) -> int:
        return len(self.data)

    def put(self, key: tuple[int, int, bool, bool], verdict: Verdict, body: Body) -> None:
        self.built += 1
        if self.limit > 0:
            data = self.data
            data[key] = (verdict, body)
            if len(data) > self.limit:
                data.popitem(last=False)


@dataclass(frozen=True)
class BlockAnswers:
    """Addresses and TTL used in block answers, and the bodies built from them."""

    ttl: int = 30
    blockpage_v4: tuple[bytes, ...] = ()  # packed addresses of the block-page web server
    blockpage_v6: tuple[bytes, ...] = ()
    steer_v4: tuple[bytes, ...] = ()      # the proxy's DNS-steering listeners (issue 5)
    steer_v6: tuple[bytes, ...] = ()
    bodies: BodyCache = field(default_factory=lambda: BodyCache(MemoryLimits.blocked_bodies),
                              compare=False, repr=False)
    parts: dict[tuple[str, int, bool, bool], Parts] = field(
        default_factory=dict, compare=False, repr=False)

    @classmethod
    def for_addresses(cls, ttl: int, addresses: list[str], steer: list[str] | None = None,
                      blocked_bodies: int = MemoryLimits.blocked_bodies) -> BlockAnswers:
        v4 = tuple(ipaddress.ip_address(a).packed for a in addresses if ":" not in a)
        v6 = tuple(ipaddress.ip_address(a).packed for a in addresses if ":" in a)
        s4 = tuple(ipaddress.ip_address(a).packed for a in steer or () if ":" not in a)
        s6 = tuple(ipaddress.ip_address(a).packed for a in steer or () if ":" in a)
        return cls(ttl=ttl, blockpage_v4=v4, blockpage_v6=v6, steer_v4=s4, steer_v6=s6,
                   bodies=BodyCache(blocked_bodies))

    def blocked_reply(self, q: wire.Query, verdict: Verdict, keep: bool = True) -> bytes:
        """The reply for a blocked name, per the verdict's answer mode.

        `keep=False` for a verdict made for this one reply (a CNAME target's): its body would
        only push a reusable one out of the cache.
        """
        if not keep:
            flags, counts, records = self._body(q, verdict)
            return (struct.pack(">HH", q.id, flags | (q.flags & (wire.RD | wire.CD))) + counts
                    + q.question + records)
        key = (id(verdict), q.qtype, q.edns, q.do)
        hit = self.bodies.data.get(key)
        if hit is None:
            body = self._body(q, verdict)
            self.bodies.put(key, verdict, body)
        else:
            body = hit[1]
        flags, counts, records = body
        return (struct.pack(">HH", q.id, flags | (q.flags & (wire.RD | wire.CD))) + counts
                + q.question + records)

    def _body(self, q: wire.Query, verdict: Verdict) -> Body:
        """(flags, counts, records); the ID, RD/CD and question are added per reply."""
        text = verdict.ede_text().encode("utf-8") if verdict.ede else b""
        # The SOA owner points into the question at the matching entry's offset in the key;
        # a label holding a dot is escaped in the key (`\.`), so there key offsets are not
        # wire offsets: the owner is then the queried name itself.
        offset = verdict.offset if q.labels_ok else 0
        return self.blocked_body(q.qtype, q.edns, q.do, verdict.answer, offset, verdict.ede,
                                 text)

    def blocked_body(self, qtype: int, edns: bool, do: bool, answer: str, offset: int,
                     ede: int, text: bytes) -> Body:
        """The one writer of blocked bodies (the full path and dns/fastpath.py): what does not
        depend on the name is built once per (answer, qtype, EDNS, DO) and kept; the SOA
        owner (the matching entry's offset) and the EDE text are added here.
        (dns/_fastparse.c's blocked_reply writes the same bytes; tests/test_fastparse.py.)"""
        # the hit inline: this runs per uncached blocked query
        flags, counts, records, soa, opt_head = (self.parts.get((answer, qtype, edns, do))
                                                 or self.parts_for(qtype, edns, do, answer))
        if soa:
            # RFC 2308: a negative answer carries an SOA so the client caches it for `ttl`.
            # Its owner is the list entry that matched, a pointer into the question.
            records = (_U16.pack(0xC000 | (12 + offset)) if offset < 256 else b"\xc0\x0c") + soa
        if edns:
            if ede:
                text = text[:200]
                option = _EDE_HEAD.pack(wire.OPT_EDE, 2 + len(text), ede) + text
                records += opt_head + _U16.pack(len(option)) + option
            else:
                records += opt_head + b"\x00\x00"
        return flags, counts, records

    def parts_for(self, qtype: int, edns: bool, do: bool, answer: str) -> Parts:
        """_parts, built once per (answer, qtype, EDNS, DO) shape and kept (bounded)."""
        shape = (answer, qtype, edns, do)
        parts = self.parts.get(shape)
        if parts is None:
            if len(self.parts) >= _PARTS_LIMIT:
                self.parts.clear()  # only a qtype sweep gets here; rebuilt in µs
            parts = self.parts[shape] = self._parts(qtype, edns, do, answer)
        return parts

    def _parts(self, qtype: int, edns: bool, do: bool, answer: str) -> Parts:
        """(flags, counts, address records, SOA record minus its owner, OPT minus RDLEN)."""
        rdatas = self._addresses(qtype, answer)
        rcode = wire.NXDOMAIN if answer == "nxdomain" else wire.NOERROR
        records = soa = b""
        an = ns = 0
        if rdatas:
            rtype = wire.TYPE_A if qtype == wire.TYPE_A else wire.TYPE_AAAA
            for rdata in rdatas:
                records += (b"\xc0\x0c" + RR_FIXED.pack(rtype, wire.CLASS_IN, self.ttl, len(rdata))
                            + rdata)
                an += 1
        else:
            rdata = _SOA_RDATA_NAMES + struct.pack(">IIIII", 1, 3600, 600, 86400, self.ttl)
            soa = RR_FIXED.pack(wire.TYPE_SOA, wire.CLASS_IN, self.ttl, len(rdata)) + rdata
            ns = 1
        opt_head = wire.opt_record(do)[:-2] if edns else b""
        return (wire.QR | wire.RA | rcode, struct.pack(">HHHH", 1, an, ns, 1 if edns else 0),
                records, soa, opt_head)

    def _addresses(self, qtype: int, answer: str) -> tuple[bytes, ...]:
        if answer == "steer":
            if qtype == wire.TYPE_A:
                return self.steer_v4
            if qtype == wire.TYPE_AAAA:
                return self.steer_v6
        elif answer == "blockpage":
            if qtype == wire.TYPE_A:
                return self.blockpage_v4
            if qtype == wire.TYPE_AAAA:
                return self.blockpage_v6
        elif answer == "null":
            if qtype == wire.TYPE_A:
                return (b"\x00" * 4,)
            if qtype == wire.TYPE_AAAA:
                return (b"\x00" * 16,)
        return ()


def refused_reply(q: wire.Query) -> bytes:
    """REFUSED for clients outside every network (no open resolver), EDE 18 when EDNS."""
    ede = wire.ede_option(EDE_PROHIBITED, "not a SafeGate client network") if q.edns else b""
    return wire.error_reply(q, wire.REFUSED, ede)


def class_refused_reply(q: wire.Query) -> bytes:
    """REFUSED for any class but IN (CHAOS version.bind, class ANY, ...): such a query is never
    forwarded, so the upstream's software and host stay private and class ANY, which upstreams
    leave unanswered, cannot bench them. EDE 21 "Not Supported" (RFC 8914) with EDNS: the
    client is welcome, the class is what we do not serve (18 "Prohibited" would blame it)."""
    ede = wire.ede_option(EDE_NOT_SUPPORTED, "only class IN is served") if q.edns else b""
    return wire.error_reply(q, wire.REFUSED, ede)


def any_reply(q: wire.Query) -> bytes:
    """RFC 8482 minimal answer to ANY: one synthesized HINFO, no amplification."""
    rdata = b"\x07RFC8482\x00"
    rr = (b"\xc0\x0c" + RR_FIXED.pack(wire.TYPE_HINFO, wire.CLASS_IN, 3600, len(rdata))
          + rdata)
    ar = 1 if q.edns else 0
    out = wire.header(q.id, wire.reply_flags(q, wire.NOERROR), 1, 1, 0, ar) + q.question + rr
    if q.edns:
        out += wire.opt_record(q.do)
    return out
