"""A slow authoritative server for the random-subdomain flood (bench/dns_compare.py, workload f).

    python bench/slow_auth.py --port P [--zone flood.test] [--delay 0.05]

Answers every query for a name under --zone with an authoritative NXDOMAIN (+ the zone's SOA,
so resolvers may cache it negatively) after --delay seconds; REFUSED for other names, FORMERR
for what is not a query. Why slow: in a "water torture" flood the victim zone's authority is
overloaded, so every unique name holds a slot in each resolver on the way for the delay; that
is what a resolver in front must survive without starving its ordinary traffic.

The reply is built from the query's bytes (no DNS library per query): the bench runs this on
the load core next to dnsperf and the upstream, so it must stay cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import sys
from typing import cast

SOA_TTL = 60


def _encode_name(name: str) -> bytes:
    out = b"".join(bytes([len(x)]) + x.encode() for x in name.strip(".").split(".") if x)
    return out + b"\0"


def _question_end(msg: bytes) -> int | None:
    """Offset just past the first question (QNAME + QTYPE + QCLASS), None if malformed."""
    pos = 12
    while pos < len(msg):
        n = msg[pos]
        if n == 0:
            end = pos + 5
            return end if end <= len(msg) else None
        if n & 0xC0:  # no compression in a question we answer
            return None
        pos += 1 + n
    return None


def _qname_lower(msg: bytes, end: int) -> bytes:
    """The question's name in wire form, lowercased (labels are ASCII in this bench)."""
    return msg[12 : end - 4].lower()


class SlowAuthority:
    """Builds the replies; `reply(query)` is pure so the tests can pin it without a socket."""

    def __init__(self, zone: str) -> None:
        self.zone_wire = _encode_name(zone.lower())
        soa_rdata = (
            _encode_name(f"ns.{zone}")
            + _encode_name(f"hostmaster.{zone}")
            + struct.pack("!IIIII", 1, 3600, 600, 86400, SOA_TTL)
        )
        # Authority section: owner = the zone (full name, no compression needed).
        self.soa_rr = (
            self.zone_wire
            + struct.pack("!HHIH", 6, 1, SOA_TTL, len(soa_rdata))
            + soa_rdata
        )

    def reply(self, query: bytes) -> bytes | None:
        """The answer for one datagram, or None to drop it (too short to carry an ID)."""
        if len(query) < 12:
            return None
        qid, flags, qdcount = struct.unpack_from("!HHH", query)
        if flags & 0x8000:  # a response: never answer it
            return None
        rd = flags & 0x0100
        end = _question_end(query) if qdcount == 1 else None
        if end is None or (flags >> 11) & 0xF:
            return struct.pack("!HHHHHH", qid, 0x8000 | rd | 1, 0, 0, 0, 0)  # FORMERR
        qname = _qname_lower(query, end)
        question = query[12:end]
        zw = self.zone_wire
        if qname == zw or (qname.endswith(zw) and self._on_label_boundary(qname, len(zw))):
            hdr = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 3, 1, 0, 1, 0)
            return hdr + question + self.soa_rr
        return struct.pack("!HHHHHH", qid, 0x8000 | rd | 5, 1, 0, 0, 0) + question  # REFUSED

    @staticmethod
    def _on_label_boundary(qname: bytes, zone_len: int) -> bool:
        """True when the zone suffix starts at a label (not inside a longer label)."""
        pos, start = 0, len(qname) - zone_len
        while pos < start:
            pos += 1 + qname[pos]
        return pos == start


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, auth: SlowAuthority, delay: float) -> None:
        self.auth = auth
        self.delay = delay
        self.transport: asyncio.DatagramTransport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is not an asyncio.DatagramTransport subclass (same methods)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        out = self.auth.reply(data)
        if out is not None and self.transport is not None:
            # A timer, not a task per query: a flood is tens of thousands in flight.
            self.loop.call_later(self.delay, self.transport.sendto, out, addr)


async def serve(host: str, port: int, zone: str, delay: float) -> asyncio.DatagramTransport:
    """Start answering on host:port (UDP); close the returned transport to stop."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Protocol(SlowAuthority(zone), delay), local_addr=(host, port)
    )
    return transport


async def _main(args: argparse.Namespace) -> None:
    await serve(args.host, args.port, args.zone, args.delay)
    print(f"slow authority for {args.zone} on {args.host}:{args.port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--zone", default="flood.test")
    ap.add_argument("--delay", type=float, default=0.05, help="seconds before each answer")
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # plain asyncio is fine, only slower
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
