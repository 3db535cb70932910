"""SafeSearch answers: the client's name as a CNAME to the target, then the target's records.

A real resolver answers `www.google.com A` at a CNAME with the CNAME and the target's A
records; clients (browsers, OS stub resolvers) reject an answer whose A records are owned by
a name they never asked for. So the target's reply (from the cache or upstream, through the
usual path) is re-emitted behind a synthesized CNAME owned by the client's question.
"""

from __future__ import annotations

import struct

from gateway.dns import wire
from gateway.dns.wire import RR_FIXED

TYPE_NS = 2
TYPE_PTR = 12
TYPE_MX = 15
_NAME_RDATA = {wire.TYPE_CNAME, TYPE_NS, TYPE_PTR}


def splice(q: wire.Query, target: bytes, target_reply: bytes, limit: int, default_ttl: int
           ) -> bytes:
    """The reply to `q`: CNAME (owner: the question) -> `target`, then `target_reply`'s answer
    and authority records with names written out uncompressed (their offsets change).

    The CNAME's TTL is the smallest TTL of the target's answer records (`default_ttl` when it
    has none), so the client re-asks when the target's data expires.
    """
    _id, flags, qd, an, ns, _ar = struct.unpack_from(">HHHHHH", target_reply)
    rcode = flags & 0xF
    pos = wire.skip_name(target_reply, 12) + 4 if qd else 12
    records = b""
    ttls: list[int] = []
    kept_an = kept_ns = 0
    for section, count in enumerate((an, ns)):
        for _ in range(count):
            owner, pos = wire.read_name(target_reply, pos)
            rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(target_reply, pos)
            rdata_at = pos + 10
            pos = rdata_at + rdlen
            rdata = expand_rdata(target_reply, rtype, rdata_at, pos)
            records += (wire.key_to_wire(owner) + RR_FIXED.pack(rtype, rclass, ttl, len(rdata))
                        + rdata)
            if section == 0:
                ttls.append(ttl)
                kept_an += 1
            else:
                kept_ns += 1
    target_wire = wire.key_to_wire(target)
    cname = b"\xc0\x0c" + RR_FIXED.pack(wire.TYPE_CNAME, wire.CLASS_IN,
                                   min(ttls) if ttls else default_ttl, len(target_wire)) \
        + target_wire
    ar = 1 if q.edns else 0
    out = (wire.header(q.id, wire.reply_flags(q, rcode), 1, 1 + kept_an, kept_ns, ar)
           + q.question + cname + records)
    if q.edns:
        out += wire.opt_record(q.do, rcode)
    if len(out) > limit:
        return wire.truncated_reply(q, rcode)
    return out


def cname_only(q: wire.Query, target: bytes, ttl: int) -> bytes:
    """The answer to a CNAME query for a rewritten name: the CNAME alone."""
    target_wire = wire.key_to_wire(target)
    ar = 1 if q.edns else 0
    out = (wire.header(q.id, wire.reply_flags(q, wire.NOERROR), 1, 1, 0, ar) + q.question
           + b"\xc0\x0c" + RR_FIXED.pack(wire.TYPE_CNAME, wire.CLASS_IN, ttl, len(target_wire))
           + target_wire)
    if q.edns:
        out += wire.opt_record(q.do)
    return out


def expand_rdata(msg: bytes, rtype: int, start: int, end: int) -> bytes:
    """Rdata with any compressed names decompressed (RFC 3597: only these types compress)."""
    if rtype in _NAME_RDATA:
        return wire.key_to_wire(wire.read_name(msg, start)[0])
    if rtype == TYPE_MX:
        return msg[start:start + 2] + wire.key_to_wire(wire.read_name(msg, start + 2)[0])
    if rtype == wire.TYPE_SOA:
        mname, p = wire.read_name(msg, start)
        rname, p = wire.read_name(msg, p)
        return wire.key_to_wire(mname) + wire.key_to_wire(rname) + msg[p:end]
    return msg[start:end]
