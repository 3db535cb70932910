"""Durable acks: the ledger's outbox table, delivered to the publisher until it says 200.

This module owns the outbox table (its schema and every statement on it). Rows are written by
the ledger inside the transaction that made the change they report (enqueue), so an ack exists
exactly when its change does. A sender per feed merges what is pending into one POST (at most
one in flight per feed) and deletes the rows only after a 200: a restart or a publisher outage
delays acks, never loses them. The publisher treats a repeated ack as a no-op.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from gateway.feedformat.stats import iso
from gateway.feeds.stats import FeedMetrics
from gateway.util.atomic import atomic_write
from gateway.util.outbox import RetryingSender

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL,
                     url TEXT NOT NULL, body TEXT NOT NULL,
                     attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL);
"""

BATCH = 500           # outbox rows looked at per POST
ACK_ENTRIES = 1000    # entries per outbox row and (unless one row has more) per POST
ACK_STATS = 2000      # stats rows per POST (after a long outage: one hour's rows per row), so a
                      # POST stays under the publisher's limits.ack_bytes (4 MiB by default)
POST_TIMEOUT = 30.0
IDLE = 60.0           # an empty outbox is looked at again this often (enqueue wakes it anyway)


@dataclass(frozen=True)
class AckTarget:
    """Where one feed's acks go, and as whom."""

    url: str
    gateway: str
    feed: str
    report_stats: bool = False


def acks_url(feed_url: str) -> str:
    """Where a feed's acks go: `.../acks` next to a feed URL ending in `/v1/.../feed` (a
    province serves the national feed at /v1/national/feed and takes its acks at
    /v1/national/acks), else the publisher's /v1/acks on the feed URL's origin."""
    parts = urlsplit(feed_url)
    path = parts.path
    if path.startswith("/v1/") and path.endswith("/feed"):
        return urlunsplit((parts.scheme, parts.netloc, path[:-len("feed")] + "acks", "", ""))
    return urlunsplit((parts.scheme, parts.netloc, "/v1/acks", "", ""))


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


def pending_count(conn: sqlite3.Connection) -> int:
    """Acks (outbox rows) not yet delivered, every feed."""
    return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


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


class AckDb(Protocol):
    """What the sender needs from the ledger that holds the outbox table."""

    conn: sqlite3.Connection
    listeners: list[Callable[[], None]]

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    def probe_counts(self) -> dict[str, int]: ...


class PendingGauge(Protocol):
    def set(self, value: float) -> None: ...


# safegate_feed_ack_failures_total{feed, reason}: every failure is retried (the outbox keeps
# the ack); "unauthorized" (401/403: the token is unknown or was revoked) needs a person.
ACK_FAILURE_REASONS = ("unauthorized", "refused", "server", "network")


def failure_reason(status: int | None) -> str:
    if status is None:
        return "network"
    if status in (401, 403):
        return "unauthorized"
    return "server" if status >= 500 or status == 429 else "refused"


class AckResults(Protocol):
    """Told the outcome of each POST: None for a 200, else the failure reason and the error
    (the gateway's metrics and the file `safegate feeds status` shows)."""

    def __call__(self, feed: str, reason: str | None, error: str | None) -> None: ...


def refused_path(state_dir: Path, feed: str) -> Path:
    """Holds the publisher's answer while it refuses this gateway's token (status shows it)."""
    return state_dir / "feeds" / f"{feed}.acks-refused"


class AckOutcomes:
    """The gateway's AckResults: counts failures by reason; while the publisher answers
    401/403 (a revoked or unknown token) sets safegate_feed_ack_unauthorized and keeps its
    message in a file for `safegate feeds status`."""

    def __init__(self, metrics: FeedMetrics, state_dir: Path) -> None:
        self.metrics = metrics
        self.state_dir = state_dir

    def init(self, feed: str) -> None:
        self.metrics.init_acks(feed, ACK_FAILURE_REASONS)

    def __call__(self, feed: str, reason: str | None, error: str | None) -> None:
        if reason is not None:
            self.metrics.ack_failures.labels(feed, reason).inc()
        refused = reason == "unauthorized"
        self.metrics.ack_unauthorized.labels(feed).set(int(refused))
        path = refused_path(self.state_dir, feed)
        with contextlib.suppress(OSError):
            if refused:
                atomic_write(path, f"{iso(time.time())} {error}\n")
            else:
                path.unlink(missing_ok=True)


@dataclass(frozen=True)
class AckBatch:
    """Pending outbox rows of one feed, merged into one POST body."""

    ids: tuple[int, ...]
    body: dict[str, Any]
    attempts: int


class AckSender(RetryingSender[AckBatch]):
    """Delivers one feed's pending acks, oldest first, one POST at a time."""

    def __init__(self, db: AckDb, target: AckTarget, token: str,
                 session: aiohttp.ClientSession, pending_gauge: PendingGauge,
                 clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, on_result: AckResults | None = None
                 ) -> None:
        super().__init__(db.listeners, IDLE, clock, rng)
        self.on_result = on_result
        self.db = db
        self.target = target
        self.token = token
        self.session = session
        self.pending_gauge = pending_gauge
        self.sent = 0

    def _rows(self) -> list[sqlite3.Row]:
        return list(self.db.conn.execute(
            "SELECT id, body, attempts, next_attempt FROM outbox WHERE url=? AND "
            "json_extract(body, '$.feed')=? ORDER BY id LIMIT ?",
            (self.target.url, self.target.feed, BATCH)))

    def before_round(self) -> None:
        self.pending_gauge.set(pending_count(self.db.conn))

    def next_due(self) -> float | None:
        rows = self._rows()
        return min(r["next_attempt"] for r in rows) if rows else None

    def due(self, now: float) -> Sequence[AckBatch]:
        rows = self._rows()
        if not rows or min(r["next_attempt"] for r in rows) > now:
            return []
        return [self._batch(rows)]

    @staticmethod
    def _batch(rows: list[sqlite3.Row]) -> AckBatch:
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
        return AckBatch(tuple(r["id"] for r in rows), merge(bodies),
                        max(r["attempts"] for r in rows))

    def attempts(self, item: AckBatch) -> int:
        return item.attempts

    async def send_once(self) -> bool:
        """POST what is pending now as one ack; True (and the rows deleted) on a 200."""
        rows = self._rows()
        return True if not rows else await self.send(self._batch(rows))

    async def deliver(self, item: AckBatch) -> str | None:
        body = dict(item.body)
        body["sent_at"] = iso(self.clock())
        body["probes"] = self.db.probe_counts()
        try:
            async with self.session.post(
                    self.target.url, json=body,
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT)) as resp:
                text = (await resp.text())[:200]
                status: int | None = resp.status
                error = None if resp.status == 200 else f"HTTP {resp.status}: {text.strip()}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        if self.on_result is not None:
            self.on_result(self.target.feed, None if error is None else failure_reason(status),
                           error)
        return error

    def delivered(self, item: AckBatch) -> None:
        with self.db.transaction() as c:
            c.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in item.ids])
        self.sent += 1
        log.debug("feed %s: ack for serial %d delivered (%d entries)",
                  self.target.feed, item.body["serial"], len(item.body["entries"]))
        self.pending_gauge.set(pending_count(self.db.conn))

    def failed(self, item: AckBatch, next_attempt: float, delay: float, error: str) -> None:
        log.warning("feed %s: ack to %s failed (%s); %d pending, retrying in %.0fs",
                    self.target.feed, self.target.url, error, len(item.ids), delay)
        with self.db.transaction() as c:
            c.executemany("UPDATE outbox SET attempts=attempts+1, next_attempt=? WHERE id=?",
                          [(next_attempt, i) for i in item.ids])
