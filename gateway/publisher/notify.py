"""NOTIFY (RFC 1996) to the configured secondaries when the zone's serial changes.

One task per secondary: a newer serial cancels the resends for the older one. Unanswered
NOTIFYs are resent after 1 s, 2 s, 4 s ... at most limits.notify_retries times; after that
the secondary still finds the change at its SOA refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import dns.exception
import dns.message
import dns.opcode
import dns.rcode

from gateway.config.addresses import Address, format_address
from gateway.publisher.xfrmetrics import XfrMetrics
from gateway.publisher.xfrwire import ZoneRecords, notify_message

log = logging.getLogger("safegate.publisher")
FIRST_WAIT = 1.0


class _Reply(asyncio.DatagramProtocol):
    def __init__(self, msg_id: int) -> None:
        self.msg_id = msg_id
        self.answer: asyncio.Future[dns.rcode.Rcode] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            m = dns.message.from_wire(data)
        except (dns.exception.DNSException, ValueError):
            return
        if (m.id == self.msg_id and m.opcode() == dns.opcode.NOTIFY
                and not self.answer.done()):
            self.answer.set_result(m.rcode())


class ZoneNotifier:
    def __init__(self, targets: tuple[Address, ...], records: ZoneRecords,
                 metrics: XfrMetrics, retries: int, first_wait: float = FIRST_WAIT) -> None:
        self.targets = targets
        self.records = records
        self.metrics = metrics
        self.retries = retries
        self.first_wait = first_wait
        self._tasks: dict[Address, asyncio.Task[None]] = {}

    def notify(self, serial: int) -> None:
        for target in self.targets:
            old = self._tasks.get(target)
            if old is not None:
                old.cancel()
            self._tasks[target] = asyncio.create_task(self._send(target, serial),
                                                      name=f"notify-{format_address(target)}")

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _send(self, target: Address, serial: int) -> None:
        loop = asyncio.get_running_loop()
        msg_id = secrets.randbelow(65536)
        wire = notify_message(self.records, serial, msg_id)
        try:
            transport, proto = await loop.create_datagram_endpoint(
                lambda: _Reply(msg_id), remote_addr=target)
        except OSError as exc:
            log.warning("NOTIFY to %s: %s", format_address(target), exc)
            self.metrics.notify.labels("gave_up").inc()
            return
        try:
            wait = self.first_wait
            for attempt in range(self.retries + 1):
                if attempt:
                    self.metrics.notify.labels("retried").inc()
                with contextlib.suppress(OSError):   # e.g. ICMP port unreachable
                    transport.sendto(wire)
                try:
                    rcode = await asyncio.wait_for(asyncio.shield(proto.answer), wait)
                except TimeoutError:
                    wait *= 2
                    continue
                if rcode == dns.rcode.NOERROR:
                    self.metrics.notify.labels("acked").inc()
                else:
                    self.metrics.notify.labels("error").inc()
                    log.warning("NOTIFY serial %d to %s answered %s", serial,
                                format_address(target), dns.rcode.to_text(rcode))
                return
            self.metrics.notify.labels("gave_up").inc()
            log.warning("NOTIFY serial %d to %s: no answer after %d tries", serial,
                        format_address(target), self.retries + 1)
        finally:
            transport.close()
