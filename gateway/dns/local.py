"""Answers for `dns.local_records` (the school LAN's names), built once at load.

The chain asks here after the policy decision (a blocked name stays blocked) and before the
cache and the forwarder: a local name never reaches an upstream. Every record set is encoded
twice at load, with its owner as a pointer to the question (the name asked) and spelled out (a
CNAME target's records); a reply is then the header, the client's question and those bytes.
A local name without a record of the asked type gets NODATA with an SOA (RFC 2308).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from gateway.config.localdns import AAAA, CNAME, PTR, A, LocalRecord
from gateway.dns import wire
from gateway.dns.wire import RR_FIXED

_TYPES = {A: wire.TYPE_A, AAAA: wire.TYPE_AAAA, CNAME: wire.TYPE_CNAME, PTR: 12}
_SOA_RDATA_NAMES = b"\x08safegate\x07invalid\x00\x0ahostmaster\x08safegate\x07invalid\x00"
_POINTER = b"\xc0\x0c"  # the question's name
_MAX_CHAIN = 8          # CNAME hops followed inside the local records

RRsets = dict[int, tuple[int, bytes]]  # qtype -> (record count, encoded records)


class LocalAnswers:
    """Local names -> prebuilt records; `reply` answers a query for one of them."""

    def __init__(self, records: Iterable[LocalRecord], ttl: int) -> None:
        self.ttl = ttl
        rdatas: dict[bytes, dict[int, list[bytes]]] = {}
        for r in records:
            rtype = _TYPES[r.rtype]
            if rtype in (wire.TYPE_A, wire.TYPE_AAAA):
                rdata = ipaddress.ip_address(r.value).packed
            else:
                rdata = wire.key_to_wire(r.value.encode())
            sets = rdatas.setdefault(r.name.encode(), {}).setdefault(rtype, [])
            if rdata not in sets:
                sets.append(rdata)
        # name -> (records owned by a pointer to the question, records owned by the full name)
        self.names: dict[bytes, tuple[RRsets, RRsets]] = {
            name: (_encode(_POINTER, sets, ttl), _encode(wire.key_to_wire(name), sets, ttl))
            for name, sets in rdatas.items()}
        # alias -> (its CNAME chain's records and count, the last target's key)
        self.chains: dict[bytes, tuple[int, bytes, bytes]] = {
            name: self._chain(name, rdatas) for name, sets in rdatas.items()
            if wire.TYPE_CNAME in sets}
        soa = _SOA_RDATA_NAMES + struct.pack(">IIIII", 1, 3600, 600, 86400, ttl)
        self.soa = _POINTER + RR_FIXED.pack(wire.TYPE_SOA, wire.CLASS_IN, ttl, len(soa)) + soa

    def _chain(self, name: bytes, rdatas: dict[bytes, dict[int, list[bytes]]]
               ) -> tuple[int, bytes, bytes]:
        count, records, owner, seen = 0, b"", _POINTER, {name}
        while count < _MAX_CHAIN:
            target_wire = rdatas[name][wire.TYPE_CNAME][0]
            records += owner + RR_FIXED.pack(wire.TYPE_CNAME, wire.CLASS_IN, self.ttl,
                                             len(target_wire)) + target_wire
            count += 1
            owner, name = target_wire, wire.read_name(target_wire, 0)[0]
            if name in seen or wire.TYPE_CNAME not in rdatas.get(name, {}):
                break
            seen.add(name)
        return count, records, name

    def reply(self, q: wire.Query, limit: int) -> bytes | None:
        """The answer for a local name (None for any other name); TC past `limit` bytes."""
        found = self.names.get(q.key)
        if found is None:
            return None
        ns = 0
        chain = self.chains.get(q.key)
        if chain is not None and q.qtype != wire.TYPE_CNAME:
            an, records, target = chain
            sets = self.names.get(target)
            if sets is not None and q.qtype in sets[1]:
                n, more = sets[1][q.qtype]
                an, records = an + n, records + more
        else:
            an, records = found[0].get(q.qtype, (0, b""))
            if not an:
                ns, records = 1, self.soa
        flags = wire.reply_flags(q, wire.NOERROR, wire.AA)
        out = wire.header(q.id, flags, 1, an, ns, 1 if q.edns else 0) + q.question + records
        if q.edns:
            out += wire.opt_record(q.do)
        if len(out) > limit:
            return wire.truncated_reply(q, wire.NOERROR, wire.AA)
        return out


def _encode(owner: bytes, sets: dict[int, list[bytes]], ttl: int) -> RRsets:
    return {rtype: (len(rds), b"".join(owner + RR_FIXED.pack(rtype, wire.CLASS_IN, ttl, len(rd))
                                       + rd for rd in rds))
            for rtype, rds in sets.items()}
