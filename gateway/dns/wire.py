"""DNS wire format: read a query straight from its bytes and build replies as bytes.

Parsing every packet with dnslib costs ~10x the whole fast path, so queries are read here
by hand. Anything unusual (several questions, records in the answer or authority section of
a query, more than one additional record) takes `parse_query_slow`, which walks every record.
"""

from __future__ import annotations

import socket
import struct

# Header flag bits.
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
AD = 0x0020
CD = 0x0010
OPCODE_MASK = 0x7800

# RCODEs (RFC 1035, 6891).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

# Types we treat specially.
TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_AAAA, TYPE_OPT = 1, 2, 5, 6, 28, 41
TYPE_HINFO, TYPE_ANY = 13, 255
CLASS_IN = 1

# EDNS.
OUR_UDP_SIZE = 1232  # DNS Flag Day 2020: avoids IP fragmentation
OPT_EDE = 15
OPT_ECS = 8
DO_BIT = 0x8000

_HEADER = struct.Struct(">HHHHHH")
_U16 = struct.Struct(">H")
# A resource record after its owner name: type, class, ttl, rdlength (RFC 1035 4.1.3). The one
# definition every reader and writer of records in gateway/dns uses.
RR_FIXED = struct.Struct(">HHIH")


class Query:
    """One parsed DNS query: what the per-query path needs, nothing more."""

    __slots__ = (
        "do", "ecs", "edns", "edns_version", "error", "flags", "id", "key", "labels_ok",
        "qclass", "qtype", "question", "udp_size",
    )

    def __init__(self) -> None:
        self.id = 0
        self.flags = 0
        self.key = b""          # lowercase dotted name without trailing dot: b"www.example.com"
        self.question = b""     # the question section exactly as the client sent it
        self.qtype = 0
        self.qclass = 0
        self.edns = False
        self.udp_size = 512
        self.do = False
        self.edns_version = 0
        self.ecs: bytes | None = None   # raw ECS option data, for identity behind front ends
        self.error = 0          # RCODE to answer instead of resolving: FORMERR, NOTIMP, BADVERS
        self.labels_ok = True   # False when a label holds a dot: such names never match lists

    def max_udp_response(self) -> int:
        """Largest UDP reply this client accepts (RFC 6891 6.2.5, capped to avoid fragments)."""
        if not self.edns:
            return 512
        return max(512, min(self.udp_size, OUR_UDP_SIZE))


def parse_query(data: bytes) -> Query | None:
    """Read a query; None means drop it silently (no readable header, or it is a response).

    A query we can answer but not resolve comes back with `error` set to the RCODE to send.
    """
    if len(data) < 12:
        return None
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & QR:
        return None  # never answer a response: that is how reflection loops start
    q = Query()
    q.id = qid
    q.flags = flags
    if flags & OPCODE_MASK:
        q.error = NOTIMP
        _read_question(data, q)  # echo the question when we can; NOTIMP either way
        return q
    if qdcount != 1 or ancount or nscount or arcount > 1:
        return parse_query_slow(data, q)
    end = _read_question(data, q)
    if end < 0:
        q.error = FORMERR
        return q
    if arcount == 1:
        _read_opt(data, end, q)
    return q


def _read_question(data: bytes, q: Query) -> int:
    """Fill q.key/question/qtype/qclass from offset 12; the end offset, or -1 if malformed."""
    pos = 12
    n = len(data)
    labels = []
    while True:
        if pos >= n:
            return -1
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > 63:  # compression pointer or reserved label type: not in a query's question
            return -1
        labels.append(data[pos + 1:pos + 1 + length])
        pos += 1 + length
        if pos > 12 + 255:
            return -1
    if pos + 4 > n or pos - 12 > 255:
        return -1
    key = b".".join(labels).lower()
    if key.count(b".") != max(len(labels) - 1, 0):
        # A label with a dot inside would alias another name; escape so it matches nothing.
        q.labels_ok = False
        key = b".".join(label.replace(b".", b"\\.") for label in labels).lower()
    q.key = key
    q.qtype, q.qclass = struct.unpack_from(">HH", data, pos)
    q.question = data[12:pos + 4]
    return pos + 4


def _read_opt(data: bytes, pos: int, q: Query) -> None:
    """Read the OPT record at `pos` (RFC 6891); marks q.error on a malformed one."""
    if pos + 11 > len(data) or data[pos] != 0:
        q.error = FORMERR
        return
    rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(data, pos + 1)
    if rtype != TYPE_OPT:
        return  # e.g. TSIG: not supported, answered as if absent
    q.edns = True
    q.udp_size = max(rclass, 512)
    q.edns_version = (ttl >> 16) & 0xFF
    q.do = bool(ttl & DO_BIT)
    opt = pos + 11
    end = opt + rdlen
    if end > len(data):
        q.error = FORMERR
        return
    while opt < end:
        if opt + 4 > end:
            q.error = FORMERR
            return
        code, olen = struct.unpack_from(">HH", data, opt)
        if opt + 4 + olen > end:
            q.error = FORMERR
            return
        if code == OPT_ECS:
            q.ecs = data[opt + 4:opt + 4 + olen]
        opt += 4 + olen  # unknown options are ignored (RFC 6891 6.1.2)
    if q.edns_version > 0:
        q.error = BADVERS


def parse_query_slow(data: bytes, q: Query) -> Query:
    """Odd query shapes: records in the answer/authority sections, several additional records.

    Walks every record (so truncation and compression loops are caught) and reads the OPT
    wherever it sits in the additional section.
    """
    _qid, _flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    end = _read_question(data, q) if qdcount == 1 else -1
    if end < 0:
        q.error = FORMERR
        return q
    pos = end
    opt_at = -1
    try:
        for i in range(ancount + nscount + arcount):
            name_end = skip_name(data, pos)
            if name_end + 10 > len(data):
                raise WireError("record runs past the end")
            rtype, _rclass, _ttl, rdlen = RR_FIXED.unpack_from(data, name_end)
            if rtype == TYPE_OPT and i >= ancount + nscount:
                if opt_at >= 0:
                    q.error = FORMERR  # RFC 6891 6.1.1: more than one OPT
                    return q
                opt_at = pos
            pos = name_end + 10 + rdlen
            if pos > len(data):
                raise WireError("rdata runs past the end")
    except WireError:
        q.error = FORMERR
        return q
    if opt_at >= 0:
        _read_opt(data, opt_at, q)
    return q


# ---- building replies -------------------------------------------------------------------


def reply_flags(q: Query, rcode: int, extra: int = 0) -> int:
    """Header flags for a reply: QR, the query's opcode/RD/CD, RA, and the low RCODE bits."""
    return QR | (q.flags & (OPCODE_MASK | RD | CD)) | RA | extra | (rcode & 0xF)


def header(qid: int, flags: int, qd: int, an: int, ns: int, ar: int) -> bytes:
    return _HEADER.pack(qid, flags, qd, an, ns, ar)


def opt_record(do: bool, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    """Our OPT pseudo-record: 1232-byte buffer, version 0, DO echoed."""
    ttl = ((ext_rcode >> 4) << 24) | (DO_BIT if do else 0)
    return b"\x00" + RR_FIXED.pack(TYPE_OPT, OUR_UDP_SIZE, ttl, len(options)) + options


def ede_option(code: int, text: str = "") -> bytes:
    """An Extended DNS Error option (RFC 8914) with a short EXTRA-TEXT."""
    body = text.encode("utf-8")[:200]
    return struct.pack(">HHH", OPT_EDE, 2 + len(body), code) + body


def error_reply(q: Query, rcode: int, ede: bytes = b"") -> bytes:
    """A reply with no records: the question echoed (when readable) and OPT when sent one."""
    qd = 1 if q.question else 0
    if q.edns:
        return (header(q.id, reply_flags(q, rcode), qd, 0, 0, 1) + q.question
                + opt_record(q.do, rcode, ede))
    return header(q.id, reply_flags(q, rcode), qd, 0, 0, 0) + q.question


def formerr_from_header(data: bytes) -> bytes | None:
    """FORMERR for a packet whose header is readable but nothing else is; None to drop."""
    if len(data) < 12:
        return None
    qid, flags = struct.unpack_from(">HH", data)
    if flags & QR:
        return None
    return header(qid, QR | (flags & (OPCODE_MASK | RD)) | RA | FORMERR, 0, 0, 0, 0)


def truncated_reply(q: Query, rcode: int, extra_flags: int = 0) -> bytes:
    """TC reply with no records: tells the client to retry over TCP."""
    ar = 1 if q.edns else 0
    out = header(q.id, reply_flags(q, rcode, TC | extra_flags), 1, 0, 0, ar) + q.question
    if q.edns:
        out += opt_record(q.do)
    return out


def build_query(qid: int, question: bytes, *, do: bool, cd: bool, ecs: bytes = b"") -> bytes:
    """A query to an upstream for a question section (name lowercased), with our EDNS.

    `ecs` is EDNS Client Subnet option data (RFC 7871), sent only when configured.
    """
    flags = RD | (CD if cd else 0)
    options = struct.pack(">HH", OPT_ECS, len(ecs)) + ecs if ecs else b""
    return header(qid, flags, 1, 0, 0, 1) + question + opt_record(do, 0, options)


def ecs_address(option: bytes) -> str | None:
    """The client address an ECS option names (RFC 7871 6), zero-padded; None if it names
    none (source prefix 0) or is malformed. Only trusted front ends' ECS is ever read."""
    if len(option) < 4:
        return None
    family, source = struct.unpack_from(">HB", option)
    addr = option[4:]
    if family == 1 and 0 < source <= 32 and len(addr) == (source + 7) // 8:
        return socket.inet_ntop(socket.AF_INET, addr.ljust(4, b"\0"))
    if family == 2 and 0 < source <= 128 and len(addr) == (source + 7) // 8:
        return socket.inet_ntop(socket.AF_INET6, addr.ljust(16, b"\0"))
    return None


def ecs_truncate(option: bytes, v4: int = 24, v6: int = 56) -> bytes:
    """ECS option data cut to at most /v4 and /v6 (RFC 7871 11.1: privacy) for upstreams."""
    family, source = struct.unpack_from(">HB", option)
    keep = min(source, v4 if family == 1 else v6)
    addr = bytearray(option[4:4 + (keep + 7) // 8])
    if keep % 8 and addr:
        addr[-1] &= (0xFF << (8 - keep % 8)) & 0xFF
    return struct.pack(">HBB", family, keep, 0) + bytes(addr)


def key_to_wire(key: bytes) -> bytes:
    """b"www.example.com" -> wire labels; b"" is the root."""
    if not key:
        return b"\x00"
    return b"".join(bytes((len(label),)) + label for label in key.split(b".")) + b"\x00"


class WireError(ValueError):
    """A DNS message that cannot be walked (truncated, looping compression, bad label)."""


def read_name(msg: bytes, pos: int) -> tuple[bytes, int]:
    """Decompress the name at `pos`: (lowercase dotted key, offset just past it in place)."""
    labels: list[bytes] = []
    end = -1
    jumps = 0
    n = len(msg)
    while True:
        if pos >= n:
            raise WireError("name runs past the end of the message")
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= n:
                raise WireError("truncated compression pointer")
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            jumps += 1
            if jumps > 64:
                raise WireError("compression loop")
            continue
        if length > 63:
            raise WireError("reserved label type")
        if length == 0:
            if end < 0:
                end = pos + 1
            return b".".join(labels).lower(), end
        labels.append(msg[pos + 1:pos + 1 + length])
        pos += 1 + length
        if sum(len(x) + 1 for x in labels) > 255:
            raise WireError("name longer than 255 octets")


def skip_name(msg: bytes, pos: int) -> int:
    """Offset just past the (possibly compressed) name at `pos`."""
    n = len(msg)
    while True:
        if pos >= n:
            raise WireError("name runs past the end of the message")
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length > 63:
            raise WireError("reserved label type")
        if length == 0:
            return pos + 1
        pos += 1 + length
