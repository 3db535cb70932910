"""DNS messages of the zone transfer: parsing requests (TSIG verified, RFC 8945), answers to
SOA/AXFR/IXFR split into bounded messages (RFC 5936, RFC 1995), error replies and NOTIFY.

dnspython builds and signs these: they are whole-zone messages, not the query path.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig

from gateway.feedformat.rpz import APEX_NS, RPZ_TTL, soa_rdata
from gateway.publisher.xfrconfig import TsigKey
from gateway.publisher.zonejournal import Delta

_IN = dns.rdataclass.IN
_CNAME_ROOT = dns.rdata.from_text(_IN, dns.rdatatype.CNAME, ".")
_HEADER = 12
_RR_FIXED = 10          # type, class, TTL, RDLENGTH
_TSIG_RESERVE = 256     # a TSIG RR: names, 64-byte MAC (hmac-sha512), fixed fields
_OPT_RESERVE = 64


def keyring(key: TsigKey | None) -> dict[dns.name.Name, dns.tsig.Key] | None:
    if key is None:
        return None
    name = dns.name.from_text(key.name)
    return {name: dns.tsig.Key(name, key.secret, key.algorithm)}


@dataclass(frozen=True)
class Request:
    """A parsed request; `error` set means answer `reply` (possibly None: drop) and stop."""

    message: dns.message.Message | None
    error: str | None = None         # metric result: refused, notauth, formerr, ...
    reply: bytes | None = None


def _unsigned_tsig_error(wire: bytes, error: int) -> bytes | None:
    """NOTAUTH with an unsigned TSIG carrying `error` (RFC 8945 5.2: BADKEY/BADSIG)."""
    try:
        q = dns.message.from_wire(wire, keyring=False)
    except (dns.exception.DNSException, ValueError):
        return None
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.NOTAUTH)
    if q.tsig:
        rd = q.tsig[0]
        r.tsig = dns.message.Message._make_tsig(  # type: ignore[no-untyped-call]
            q.keyname, rd.algorithm, int(time.time()), rd.fudge, b"", q.id, error, b"")
    return r.to_wire()


def parse_request(wire: bytes, keys: dict[dns.name.Name, dns.tsig.Key] | bool | None
                  ) -> Request:
    """The request with its TSIG checked against `keys` (a signed request without a known key
    or with a bad MAC gets NOTAUTH; an unparseable one FORMERR when it has a header).
    `keys` False: TSIG not checked (for a request that is refused anyway)."""
    try:
        return Request(dns.message.from_wire(wire, keyring=keys))
    except (dns.message.UnknownTSIGKey, dns.tsig.PeerBadKey, dns.tsig.BadAlgorithm):
        return Request(None, "notauth", _unsigned_tsig_error(wire, dns.rcode.BADKEY))
    except (dns.tsig.BadSignature, dns.tsig.PeerBadSignature):
        return Request(None, "notauth", _unsigned_tsig_error(wire, dns.rcode.BADSIG))
    except dns.tsig.BadTime:
        return Request(None, "notauth", _unsigned_tsig_error(wire, dns.rcode.BADTIME))
    except (dns.exception.DNSException, ValueError, IndexError):
        if len(wire) < _HEADER or wire[2] & 0x80:
            return Request(None, "formerr")           # not a query: nothing to answer
        reply = wire[:2] + bytes([0x80 | (wire[2] & 0x78), dns.rcode.FORMERR]) + bytes(8)
        return Request(None, "formerr", reply)


def error_reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    """`rcode` for `query`, signed if the query was."""
    r = dns.message.make_response(query)
    r.set_rcode(rcode)
    return r.to_wire()


class ZoneRecords:
    """The record sets of one zone name, made from the journal's owner names."""

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self.origin = dns.name.from_text(zone)

    def soa(self, serial: int) -> dns.rrset.RRset:
        rd = dns.rdata.from_text(_IN, dns.rdatatype.SOA, soa_rdata(self.zone, serial))
        return dns.rrset.from_rdata(self.origin, RPZ_TTL, rd)

    def ns(self) -> dns.rrset.RRset:
        rd = dns.rdata.from_text(_IN, dns.rdatatype.NS, APEX_NS)
        return dns.rrset.from_rdata(self.origin, RPZ_TTL, rd)

    def owners(self, names: Iterable[str]) -> Iterator[dns.rrset.RRset]:
        for owner in sorted(names):
            name = dns.name.from_text(owner, origin=self.origin)
            yield dns.rrset.from_rdata(name, RPZ_TTL, _CNAME_ROOT)

    def axfr(self, serial: int, owners: Iterable[str]) -> Iterator[dns.rrset.RRset]:
        """SOA, NS, every record, SOA (RFC 5936 2.2)."""
        soa = self.soa(serial)
        yield soa
        yield self.ns()
        yield from self.owners(owners)
        yield soa

    def ixfr(self, delta: Delta) -> Iterator[dns.rrset.RRset]:
        """Current SOA, old SOA, deletions, new SOA, additions, current SOA (RFC 1995 4)."""
        new = self.soa(delta.new)
        yield new
        yield self.soa(delta.old)
        yield from self.owners(delta.deleted)
        yield new
        yield from self.owners(delta.added)
        yield new


def _size(rrset: dns.rrset.RRset) -> int:
    """An upper bound of the RR's wire size (no name compression assumed)."""
    return len(rrset.name.to_wire() or b"") + _RR_FIXED + len(rrset[0].to_wire() or b"")


def messages(query: dns.message.Message, rrsets: Iterable[dns.rrset.RRset],
             max_bytes: int) -> Iterator[bytes]:
    """The answer as a sequence of messages of at most `max_bytes` each (each holding at
    least one RR), TSIG-signed as a multi-message sequence if the query was signed."""
    fixed = _HEADER + _TSIG_RESERVE + _OPT_RESERVE + sum(
        len(q.name.to_wire() or b"") + 4 for q in query.question)
    ctx = None
    chunk: list[dns.rrset.RRset] = []
    used = fixed

    def render(part: list[dns.rrset.RRset]) -> bytes:
        nonlocal ctx
        r = dns.message.make_response(query)
        r.flags |= dns.flags.AA
        r.answer = part
        wire = r.to_wire(multi=True, tsig_ctx=ctx, max_size=65535)
        ctx = r.tsig_ctx
        return wire

    for rrset in rrsets:
        size = _size(rrset)
        if chunk and used + size > max_bytes:
            yield render(chunk)
            chunk, used = [], fixed
        chunk.append(rrset)
        used += size
    if chunk:
        yield render(chunk)


def notify_message(zone: ZoneRecords, serial: int, msg_id: int) -> bytes:
    """A NOTIFY (RFC 1996) for the zone, with the new SOA in the answer section."""
    m = dns.message.Message(id=msg_id)
    m.set_opcode(dns.opcode.NOTIFY)
    m.flags |= dns.flags.AA
    m.find_rrset(m.question, zone.origin, _IN, dns.rdatatype.SOA, create=True,
                 force_unique=True)
    m.answer = [zone.soa(serial)]
    return m.to_wire()
