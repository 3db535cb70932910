"""From the query path to the query log: a hook per logged network appends a tuple to a
bounded list (no I/O, no hashing on the query path); a task writes the list in batches from
a thread every limits.query_log.flush_interval and purges old rows every few minutes.

Beyond limits.query_log.pending waiting rows, rows are dropped and counted
(safegate_querylog_dropped_total{reason="pending"}) rather than slowing DNS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config.limits import QueryLogLimits
from gateway.policy.decide import QueryHook, Verdict
from gateway.querylog.salt import DailySalt
from gateway.querylog.store import FILENAME, QueryLogStore, Row

log = logging.getLogger(__name__)

PURGE_EVERY = 300.0
DROP_REASONS = ("pending", "rows")

Pending = tuple[float, str, str, bytes, int, Verdict, str]


def verdict_of(v: Verdict) -> str:
    if v.blocked:
        return "blocked"
    if v.rewrite:
        return "rewritten"
    return "intercepted" if v.steer else "allowed"


class QueryRecorder:
    def __init__(self, state_dir: Path, limits: QueryLogLimits, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self.clock = clock
        self.store = QueryLogStore(state_dir / FILENAME, limits.rows)
        self.salt = DailySalt(state_dir, clock)
        self._pending: list[Pending] = []
        self.dropped = Counter("safegate_querylog_dropped", "Query log rows dropped: the "
                               "writer's queue was full (limits.query_log.pending) or the "
                               "rows limit pushed old ones out (limits.query_log.rows).",
                               ["reason"], registry=registry)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self.written = Counter("safegate_querylog_written", "Query log rows written.",
                               registry=registry)
        rows = Gauge("safegate_querylog_rows", "Rows in the query log.", registry=registry)
        rows.set_function(lambda: self.store.rows)
        self._dropped_pending = self.dropped.labels("pending")

    def hook(self, network: str, tier: str) -> QueryHook:
        """The callable a logged network's profile calls once per query (dns/chain.py)."""
        pending, cap, clock, dropped = (self._pending, self.limits.pending, self.clock,
                                        self._dropped_pending)

        def record(qname: bytes, qtype: int, verdict: Verdict, client: str) -> None:
            if len(pending) >= cap:
                dropped.inc()
                return
            pending.append((clock(), network, tier, qname, qtype, verdict, client))

        return record

    def _rows(self, batch: list[Pending]) -> list[Row]:
        return [(t, network, tier, qname.decode("ascii", "replace"), qtype, verdict_of(v),
                 v.category, self.salt.client(client, t))
                for t, network, tier, qname, qtype, v, client in batch]

    def _write(self, batch: list[Pending]) -> None:
        pushed = self.store.add(self._rows(batch))
        self.written.inc(len(batch))
        if pushed:
            self.dropped.labels("rows").inc(pushed)

    async def flush(self) -> None:
        """Hand what waits to the writer thread (the list is emptied at once, in the loop)."""
        if not self._pending:
            return
        batch = list(self._pending)
        self._pending.clear()
        await asyncio.to_thread(self._write, batch)

    async def run(self, stop: asyncio.Event, retention: Callable[[], Mapping[str, int]],
                  default_hours: int) -> None:
        """Flush every flush_interval, purge every PURGE_EVERY seconds, until `stop`."""
        last_purge = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.limits.flush_interval)
            try:
                await self.flush()
                now = self.clock()
                if now - last_purge >= PURGE_EVERY:
                    last_purge = now
                    gone = await asyncio.to_thread(self.store.purge, now, dict(retention()),
                                                   default_hours)
                    if gone:
                        log.info("query log: purged %d rows past their retention", gone)
            except Exception:
                log.exception("query log: write failed; retrying at the next interval")
        with contextlib.suppress(Exception):
            await self.flush()
        self.store.close()
