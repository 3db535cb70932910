"""The mandatory list as an RPZ zone over zone transfer: SOA (UDP, TCP), AXFR and IXFR (TCP).

Secondaries (an ISP's BIND, Unbound, PowerDNS) transfer the zone from here and are sent a
NOTIFY on each new serial, so an added or removed entry reaches them in seconds instead of at
the next SOA refresh. Who may transfer is zone_transfer.allow (by address) plus, optionally,
a TSIG key; every bound is in publisher.yaml's limits (gateway/config/limits.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import cast

import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from prometheus_client import CollectorRegistry

from gateway.config.addresses import format_address
from gateway.config.limits import PublisherLimits
from gateway.errors import SafeGateError
from gateway.feedformat.document import FeedEntry
from gateway.publisher.notify import ZoneNotifier
from gateway.publisher.watch import SerialWatcher
from gateway.publisher.xfrconfig import ZoneTransferConfig
from gateway.publisher.xfrmetrics import XfrMetrics
from gateway.publisher.xfrwire import (
    ZoneRecords,
    error_reply,
    keyring,
    messages,
    parse_request,
)
from gateway.publisher.zonejournal import OwnerIndex, ZoneJournal

log = logging.getLogger("safegate.publisher")
MIN_MESSAGE = 1024    # room for the fixed parts plus the longest RR
# (serial, live entries) read consistently: the publisher's Store.snapshot; and (serial,
# entries added since N and still live, ids removed since N): Store.diff. A gateway could pass
# its ledger's mandatory entries the same way.
Snapshot = Callable[[], tuple[int, list[FeedEntry]]]
Diff = Callable[[int], tuple[int, list[FeedEntry], list[str]]]
_TYPES: dict[int, str] = {dns.rdatatype.AXFR: "axfr", dns.rdatatype.IXFR: "ixfr",
                          dns.rdatatype.SOA: "soa"}


class ZoneTransferServer:
    """Listeners, the served zone (journal) and the notifier; `refresh` follows `snapshot`."""

    def __init__(self, config: ZoneTransferConfig, snapshot: Snapshot, diff: Diff,
                 limits: PublisherLimits, registry: CollectorRegistry,
                 diff_history: int) -> None:
        self.config = config
        self.diff = diff
        self.limits = limits
        self.metrics = XfrMetrics(registry)
        self.records = ZoneRecords(config.zone)
        self.keys = keyring(config.tsig)
        serial, entries = snapshot()
        self.feed_serial = serial
        self.index = OwnerIndex(config.zone, entries)
        self.journal = ZoneJournal(serial, self.index.owners(), diff_history,
                                   limits.xfr_journal_records)
        self.metrics.serial.set(self.journal.serial)
        self.notifier = ZoneNotifier(config.notify, self.records, self.metrics,
                                     limits.notify_retries)
        self._slots = asyncio.Semaphore(limits.xfr_transfers)
        self._open = {"allowed": 0, "outside": 0}
        self._servers: list[asyncio.Server] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._clients: set[asyncio.StreamWriter] = set()
        self._follow: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, watcher: SerialWatcher) -> None:
        loop = asyncio.get_running_loop()
        try:
            for host, port in self.config.listen:
                self._servers.append(await asyncio.start_server(self._client, host, port))
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(host, port))
                self._udp.append(transport)
        except OSError as exc:
            await self.close()
            raise SafeGateError(f"zone_transfer: cannot listen on "
                                f"{format_address((host, port))}: {exc.strerror}") from None
        self._follow = asyncio.create_task(self._follow_store(watcher), name="xfr-follow")
        log.info("zone transfer of %s on %s, serial %d", self.config.zone,
                 ", ".join(format_address(a) for a in self.config.listen), self.journal.serial)

    async def close(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        for s in self._servers:
            s.close()
        for t in self._udp:
            t.close()
        for w in list(self._clients):   # a transfer in progress ends with the process
            w.transport.abort()
        await self.notifier.close()

    async def _follow_store(self, watcher: SerialWatcher) -> None:
        while not watcher.closing:
            await watcher.wait_beyond(self.feed_serial, 60.0)
            if watcher.serial > self.feed_serial:
                try:
                    self.refresh()
                except Exception:  # a busy database must not end the zone's updates
                    log.exception("updating the RPZ zone failed")
                    await asyncio.sleep(1.0)

    def refresh(self) -> None:
        """Serve the store's current state; NOTIFY the secondaries if the serial moved (after
        the journal has it, so their SOA check already sees the new serial)."""
        serial, added, removed = self.diff(self.feed_serial)
        self.index.apply(added, removed)
        self.feed_serial = serial
        if self.journal.update(serial, self.index.owners()):
            self.metrics.serial.set(self.journal.serial)
            self.notifier.notify(serial)

    # ------------------------------------------------------------------ answers

    def allowed(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.config.allow)

    def check(self, wire: bytes, inside: bool) -> tuple[dns.message.Message | None, str,
                                                       bytes | None]:
        """(query to answer, type label, None) or (None, type label, error reply or None),
        the error counted."""
        # Strangers are refused before any TSIG check: they learn nothing about the key.
        req = parse_request(wire, self.keys if inside else False)
        q = req.message
        if q is None:
            self.metrics.xfr.labels("other", req.error or "formerr").inc()
            return None, "other", req.reply
        label = _TYPES.get(q.question[0].rdtype, "other") if len(q.question) == 1 else "other"
        rcode, result = dns.rcode.NOERROR, ""
        if not inside:
            rcode, result = dns.rcode.REFUSED, "refused"
        elif q.opcode() != dns.opcode.QUERY:
            rcode, result = dns.rcode.NOTIMP, "formerr"
        elif len(q.question) != 1 or q.question[0].rdclass != dns.rdataclass.IN:
            rcode, result = dns.rcode.FORMERR, "formerr"
        elif label == "other" or q.question[0].name != self.records.origin:
            rcode, result = dns.rcode.REFUSED, "refused"
        elif label != "soa" and self.keys is not None and not q.had_tsig:
            rcode, result = dns.rcode.REFUSED, "refused"   # the key is required to transfer
        if result:
            self.metrics.xfr.labels(label, result).inc()
            return None, label, error_reply(q, rcode)
        return q, label, None

    def soa_answer(self, q: dns.message.Message) -> bytes:
        self.metrics.xfr.labels("soa", "ok").inc()
        return next(messages(q, [self.records.soa(self.journal.serial)], 65535))

    def transfer(self, q: dns.message.Message, label: str
                 ) -> tuple[Iterator[dns.rrset.RRset] | None, str]:
        """The records answering an AXFR/IXFR, in order, and the result label (None with
        formerr: an IXFR without the client's SOA)."""
        j = self.journal
        if label == "ixfr":
            theirs = [rrs for rrs in q.authority if rrs.rdtype == dns.rdatatype.SOA]
            if not theirs or not len(theirs[0]):
                return None, "formerr"
            serial = int(theirs[0][0].serial)
            if serial == j.serial:
                return iter([self.records.soa(j.serial)]), "current"
            delta = j.since(serial)
            if delta is not None:
                return self.records.ixfr(delta), "ok"
            return self.records.axfr(j.serial, j.owners), "full"
        # Generators over the state of now: the journal swaps in new objects, never mutates.
        return self.records.axfr(j.serial, j.owners), "ok"

    # ------------------------------------------------------------------ TCP

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        peer = writer.get_extra_info("peername")
        inside = bool(peer) and self.allowed(str(peer[0]))
        kind = "allowed" if inside else "outside"
        cap = self.limits.xfr_connections if inside else self.limits.xfr_outside
        if self._open[kind] >= cap:
            self.metrics.dropped.labels(kind).inc()
            writer.transport.abort()
            return
        self._open[kind] += 1
        self.metrics.connections.labels(kind).set(self._open[kind])
        self._clients.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                self.limits.xfr_send_buffer)
        try:
            await self._serve(reader, writer, inside)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(writer)
            self._open[kind] -= 1
            self.metrics.connections.labels(kind).set(self._open[kind])
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     inside: bool) -> None:
        idle = float(self.limits.xfr_idle_timeout)
        max_bytes = max(self.limits.xfr_message_bytes, MIN_MESSAGE)
        while True:
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), idle), "big")
            if size > max_bytes:
                return
            wire = await asyncio.wait_for(reader.readexactly(size), idle)
            q, label, reply = self.check(wire, inside)
            if q is None:
                if reply is None:
                    return
                await _send(writer, [reply], idle)
                continue
            if label == "soa":
                await _send(writer, [self.soa_answer(q)], idle)
                continue
            if not await self._transfer(q, label, writer, idle, max_bytes):
                return

    async def _transfer(self, q: dns.message.Message, label: str,
                        writer: asyncio.StreamWriter, idle: float, max_bytes: int) -> bool:
        try:
            await asyncio.wait_for(self._slots.acquire(), idle)
        except TimeoutError:
            self.metrics.xfr.labels(label, "busy").inc()
            await _send(writer, [error_reply(q, dns.rcode.SERVFAIL)], idle)
            return True
        self.metrics.active.inc()
        try:
            rrsets, result = self.transfer(q, label)
            if rrsets is None:
                self.metrics.xfr.labels(label, result).inc()
                await _send(writer, [error_reply(q, dns.rcode.FORMERR)], idle)
                return True
            try:
                await _send(writer, messages(q, rrsets, max_bytes), idle)
            except (ConnectionError, TimeoutError):
                self.metrics.xfr.labels(label, "error").inc()
                return False
            self.metrics.xfr.labels(label, result).inc()
            return True
        finally:
            self.metrics.active.dec()
            self._slots.release()


async def _send(writer: asyncio.StreamWriter, wires: Iterable[bytes], idle: float) -> None:
    """Length-prefixed messages; a client that stops reading for `idle` seconds is dropped."""
    for wire in wires:
        writer.write(len(wire).to_bytes(2, "big") + wire)
        await asyncio.wait_for(writer.drain(), idle)


class _Udp(asyncio.DatagramProtocol):
    """SOA queries over UDP (secondaries check the serial this way before transferring); an
    IXFR over UDP gets the current SOA alone, which sends the client to TCP (RFC 1995 2)."""

    def __init__(self, server: ZoneTransferServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio.DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        s = self.server
        try:
            q, label, reply = s.check(data, s.allowed(str(addr[0])))
            if q is not None:
                if label in ("soa", "ixfr"):
                    reply = s.soa_answer(q)
                else:
                    s.metrics.xfr.labels(label, "formerr").inc()
                    reply = error_reply(q, dns.rcode.FORMERR)   # AXFR needs TCP
        except Exception:  # a malformed packet never ends the listener
            log.exception("zone transfer: UDP request failed")
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)
