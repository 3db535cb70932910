"""Deliver stored reports to every reports.forward_to target until each says 2xx.

At-least-once: a report is POSTed again after a timeout or a crash between the target's 2xx
and our delete, so every POST carries the report's id (also as `Idempotency-Key`) and the
receiver dedups on it (the publisher does: gateway/publisher/hotline.py). Retries back off
1 s -> 5 min with jitter, like the feed acks (gateway/util/outbox.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

import aiohttp

from gateway.hotline.metrics import ReportMetrics
from gateway.hotline.store import Pending, ReportStore
from gateway.util.outbox import backoff

log = logging.getLogger(__name__)

POST_TIMEOUT = 15.0
IDLE_POLL = 5.0     # another process (the proxy) may add reports: look at least this often


class ReportForwarder:
    """One task delivering due outbox rows, oldest first, one POST at a time."""

    def __init__(self, store: ReportStore, session: aiohttp.ClientSession,
                 metrics: ReportMetrics, token_for: Callable[[str], str | None],
                 clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.store = store
        self.session = session
        self.metrics = metrics
        self.token_for = token_for
        self.clock = clock
        self.rng = rng or random.Random()
        self.wake = asyncio.Event()
        store.listeners.append(self.wake.set)

    async def run(self) -> None:
        while True:
            now = self.clock()
            rows = self.store.due(now)
            for row in rows:
                await self.send(row)
            if rows:
                continue
            due = self.store.next_due()
            wait = IDLE_POLL if due is None else min(IDLE_POLL, max(0.0, due - now))
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)

    async def send(self, row: Pending) -> bool:
        """POST one report to one target; True (and the row gone) on a 2xx."""
        headers = {"Idempotency-Key": row.report.id}
        token = self.token_for(row.url)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        error = ""
        try:
            async with self.session.post(row.url, json=row.report.to_json(), headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT)
                                         ) as resp:
                text = (await resp.text(errors="replace"))[:200]
                if 200 <= resp.status < 300:
                    self.store.delivered(row.report.id, row.url)
                    self.metrics.forwarded.inc()
                    log.info("report %s delivered to %s", row.report.id, row.url)
                    return True
                error = f"HTTP {resp.status}: {text.strip()}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        delay = backoff(row.attempts, self.rng)
        self.metrics.forward_failures.inc()
        log.warning("report %s to %s failed (%s); retrying in %.0fs", row.report.id, row.url,
                    error, delay)
        self.store.failed(row.report.id, row.url, self.clock() + delay, error)
        return False
