"""Durable acks: rows in the ledger's outbox table, delivered to the publisher until it says 200.

Rows are written in the same transaction as the ledger change they report (ledger.py), so an
ack exists exactly when its change does. A sender per feed merges what is pending into one
POST (at most one in flight per feed) and deletes the rows only after a 200: a restart or a
publisher outage delays acks, never loses them. The publisher treats a repeated ack as a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

if TYPE_CHECKING:
    from gateway.feeds.ledger import Ledger
    from gateway.feeds.stats import FeedMetrics

log = logging.getLogger(__name__)

BATCH = 500           # outbox rows looked at per POST
ACK_ENTRIES = 1000    # entries per outbox row and (unless one row has more) per POST
ACK_STATS = 2000      # stats rows per POST (after a long outage: one hour's rows per row), so a
                      # POST stays under the publisher's limits.ack_bytes (4 MiB by default)
POST_TIMEOUT = 30.0


@dataclass(frozen=True)
class AckTarget:
    """Where one feed's acks go, and as whom."""

    url: str
    gateway: str
    feed: str
    report_stats: bool = False


def acks_url(feed_url: str) -> str:
    """The publisher's /v1/acks on the feed URL's origin."""
    parts = urlsplit(feed_url)
    return urlunsplit((parts.scheme, parts.netloc, "/v1/acks", "", ""))


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ack_entry(entry_id: str, received_at: float, applied_at: float | None,
              verified_at: float | None, outcome: str) -> dict[str, Any]:
    return {"id": entry_id, "received_at": iso(received_at), "applied_at": iso(applied_at),
            "verified_at": iso(verified_at), "outcome": outcome}


def enqueue(conn: sqlite3.Connection, target: AckTarget, serial: int,
            entries: list[dict[str, Any]], stats: list[dict[str, Any]], now: float) -> None:
    """Insert one ack row; call inside the ledger transaction that made the change."""
    body = {"gateway": target.gateway, "feed": target.feed, "serial": serial,
            "entries": entries, "stats": stats if target.report_stats else []}
    conn.execute("INSERT INTO outbox (created, url, body, attempts, next_attempt) "
                 "VALUES (?,?,?,0,?)", (now, target.url, json.dumps(body), now))


def merge(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Several pending acks of one feed as one: the newest state of each entry and stats row."""
    entries: dict[str, dict[str, Any]] = {}
    stats: dict[tuple[str, str, str], dict[str, Any]] = {}
    for body in bodies:
        for e in body.get("entries", []):
            entries[e["id"]] = e
        for s in body.get("stats", []):
            stats[(s["hour"], s["category"], s["tier"])] = s
    first = bodies[0]
    return {"gateway": first["gateway"], "feed": first["feed"],
            "serial": max(int(b["serial"]) for b in bodies),
            "entries": list(entries.values()), "stats": list(stats.values())}


def backoff(attempt: int, rng: random.Random, base: float = 1.0, cap: float = 300.0) -> float:
    """1 s doubling to 5 min, +-20 % so a fleet coming back online does not arrive in step."""
    return float(min(cap, base * 2 ** max(0, attempt)) * rng.uniform(0.8, 1.2))


class OutboxSender:
    """Delivers one feed's pending acks, oldest first, one POST at a time."""

    def __init__(self, ledger: Ledger, target: AckTarget, token: str,
                 session: aiohttp.ClientSession, metrics: FeedMetrics,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] | None = None,
                 rng: random.Random | None = None) -> None:
        self.ledger = ledger
        self.target = target
        self.token = token
        self.session = session
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.wake = asyncio.Event()
        self.sent = 0
        ledger.listeners.append(self.wake.set)

    def _pending(self) -> list[sqlite3.Row]:
        return list(self.ledger.conn.execute(
            "SELECT id, body, attempts, next_attempt FROM outbox WHERE url=? AND "
            "json_extract(body, '$.feed')=? ORDER BY id LIMIT ?",
            (self.target.url, self.target.feed, BATCH)))

    async def run(self) -> None:
        while True:
            self.metrics.outbox_pending.set(self.ledger.outbox_pending())
            rows = self._pending()
            now = self.clock()
            if not rows:
                await self._wait(60.0)
                continue
            due = min(r["next_attempt"] for r in rows)
            if due > now:
                await self._wait(due - now)
                continue
            await self.send_once(rows)

    async def _wait(self, seconds: float) -> None:
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)

    async def send_once(self, rows: list[sqlite3.Row] | None = None) -> bool:
        """POST the pending rows as one ack; True (and the rows deleted) on a 200."""
        rows = self._pending() if rows is None else rows
        if not rows:
            return True
        bodies: list[dict[str, Any]] = []
        count = stats = 0
        for r in rows:   # merge while the POST stays small (the publisher limits body size)
            b = json.loads(r["body"])
            if bodies and (count + len(b["entries"]) > ACK_ENTRIES
                           or stats + len(b.get("stats", [])) > ACK_STATS):
                break
            bodies.append(b)
            count += len(b["entries"])
            stats += len(b.get("stats", []))
        rows = rows[:len(bodies)]
        body = merge(bodies)
        body["sent_at"] = iso(self.clock())
        body["probes"] = self.ledger.probe_counts()
        ids = [r["id"] for r in rows]
        error = ""
        try:
            async with self.session.post(
                    self.target.url, json=body,
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT)) as resp:
                text = (await resp.text())[:200]
                if resp.status == 200:
                    with self.ledger.transaction() as c:
                        c.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in ids])
                    self.sent += 1
                    log.debug("feed %s: ack for serial %d delivered (%d entries)",
                              self.target.feed, body["serial"], len(body["entries"]))
                    self.metrics.outbox_pending.set(self.ledger.outbox_pending())
                    return True
                error = f"HTTP {resp.status}: {text.strip()}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        attempts = max(r["attempts"] for r in rows)
        delay = backoff(attempts, self.rng)
        log.warning("feed %s: ack to %s failed (%s); %d pending, retrying in %.0fs",
                    self.target.feed, self.target.url, error, len(ids), delay)
        with self.ledger.transaction() as c:
            c.executemany("UPDATE outbox SET attempts=attempts+1, next_attempt=? WHERE id=?",
                          [(self.clock() + delay, i) for i in ids])
        return False
