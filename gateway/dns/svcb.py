"""HTTPS/SVCB answers (RFC 9460) without Encrypted Client Hello, for protected tiers.

ECH hides the real server name from anything on the path, including a filtering proxy; a
client only uses ECH when DNS hands it an `ech` SvcParam. Stripping it keeps the TLS SNI
visible while leaving every other parameter (alpn, ipv4hint, ...) intact.
"""

from __future__ import annotations

import struct

from gateway.dns import wire
from gateway.dns.rewrite import expand_rdata
from gateway.dns.wire import RR_FIXED

TYPE_SVCB = 64
TYPE_HTTPS = 65
KEY_MANDATORY = 0
KEY_ECH = 5


def strip_params(rdata: bytes, drop: frozenset[int] = frozenset({KEY_ECH})) -> bytes:
    """SVCB/HTTPS rdata without the SvcParams whose keys are in `drop` (also from `mandatory`).

    Raises wire.WireError on malformed rdata.
    """
    if len(rdata) < 3:
        raise wire.WireError("SVCB rdata too short")
    _target, end = wire.read_name(rdata, 2)
    out = bytearray(rdata[:end])
    pos = end
    while pos < len(rdata):
        if pos + 4 > len(rdata):
            raise wire.WireError("truncated SvcParam")
        key, length = struct.unpack_from(">HH", rdata, pos)
        value = rdata[pos + 4:pos + 4 + length]
        if len(value) != length:
            raise wire.WireError("SvcParam value runs past the rdata")
        pos += 4 + length
        if key in drop:
            continue
        if key == KEY_MANDATORY:
            keys = [k for (k,) in struct.iter_unpack(">H", value) if k not in drop]
            if not keys:
                continue
            value = b"".join(struct.pack(">H", k) for k in keys)
        out += struct.pack(">HH", key, len(value)) + value
    return bytes(out)


def strip_ech(msg: bytes) -> bytes:
    """A DNS reply with `ech` removed from every HTTPS/SVCB record; `msg` itself when none has it.

    A changed message is rewritten with uncompressed names (rdata lengths change, so old
    compression offsets would not hold). RRSIGs over the changed sets no longer validate:
    protected tiers trade that for a visible SNI (documented in the README).
    """
    _id, _flags, qd, an, ns, ar = struct.unpack_from(">HHHHHH", msg)
    pos = 12
    for _ in range(qd):
        pos = wire.skip_name(msg, pos) + 4
    question_end = pos
    records: list[tuple[bytes, int, int, int, bytes]] = []
    changed = False
    for _ in range(an + ns + ar):
        owner, pos = wire.read_name(msg, pos)
        rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(msg, pos)
        start = pos + 10
        pos = start + rdlen
        if pos > len(msg):
            raise wire.WireError("rdata runs past the end of the message")
        if rtype in (TYPE_SVCB, TYPE_HTTPS):
            rdata = strip_params(msg[start:pos])
            changed |= rdata != msg[start:pos]
        else:
            rdata = expand_rdata(msg, rtype, start, pos)
        records.append((owner, rtype, rclass, ttl, rdata))
    if not changed:
        return msg
    out = bytearray(msg[:question_end])
    for owner, rtype, rclass, ttl, rdata in records:
        out += wire.key_to_wire(owner) + RR_FIXED.pack(rtype, rclass, ttl, len(rdata)) + rdata
    return bytes(out)
