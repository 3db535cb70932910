"""Deliver stored reports to every reports.forward_to target until each says 2xx.

At-least-once: a report is POSTed again after a timeout or a crash between the target's 2xx
and our delete, so every POST carries the report's id (also as `Idempotency-Key`) and the
receiver dedups on it (the publisher does: gateway/publisher/hotline.py). Retries back off
1 s -> 5 min with jitter: the retrying outbox of gateway/util/outbox.py, as the feed acks.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence

import aiohttp

from gateway.hotline.metrics import ReportMetrics
from gateway.hotline.store import Pending, ReportStore
from gateway.util.outbox import RetryingSender

log = logging.getLogger(__name__)

POST_TIMEOUT = 15.0
IDLE_POLL = 5.0     # another process (the proxy) may add reports: look at least this often


class ReportForwarder(RetryingSender[Pending]):
    """One task delivering due outbox rows, oldest first, one POST at a time."""

    def __init__(self, store: ReportStore, session: aiohttp.ClientSession,
                 metrics: ReportMetrics, token_for: Callable[[str], str | None],
                 clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        super().__init__(store.listeners, IDLE_POLL, clock, rng)
        self.store = store
        self.session = session
        self.metrics = metrics
        self.token_for = token_for

    def due(self, now: float) -> Sequence[Pending]:
        return self.store.due(now)

    def next_due(self) -> float | None:
        return self.store.next_due()

    def attempts(self, item: Pending) -> int:
        return item.attempts

    async def deliver(self, item: Pending) -> str | None:
        """POST one report to one target; None on a 2xx."""
        headers = {"Idempotency-Key": item.report.id}
        token = self.token_for(item.url)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self.session.post(item.url, json=item.report.to_json(), headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT)
                                         ) as resp:
                text = (await resp.text(errors="replace"))[:200]
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}: {text.strip()}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def delivered(self, item: Pending) -> None:
        self.store.delivered(item.report.id, item.url)
        self.metrics.forwarded.inc()
        log.info("report %s delivered to %s", item.report.id, item.url)

    def failed(self, item: Pending, next_attempt: float, delay: float, error: str) -> None:
        self.metrics.forward_failures.inc()
        log.warning("report %s to %s failed (%s); retrying in %.0fs", item.report.id, item.url,
                    error, delay)
        self.store.failed(item.report.id, item.url, next_attempt, error)
