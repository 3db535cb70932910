"""A province's acks for national entries, kept until the ministry has them.

A school posts its national-feed acks to the province (POST /v1/national/acks, its own
token). The province checks them as the ministry would (the school's id, a serial and ids
of the mirrored feed), writes each to this outbox in its own database and answers 200: from
then on the province owns it. The sender posts each to the ministry's /v1/provinces/acks
under the province's token, oldest first, and deletes it only after the ministry answered:
a province or ministry restart delays acks, never loses them (gateway/util/outbox.py).
An ack the ministry refuses as invalid (4xx other than 401/403/408/429) is dropped and
counted: retrying it would stall every ack behind it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from gateway.publisher.db import Database
from gateway.util.outbox import RetryingSender

log = logging.getLogger("safegate.publisher.upstream")

SCHEMA = """
CREATE TABLE IF NOT EXISTS national_ids (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS upstream_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,
  created REAL NOT NULL, gateway TEXT NOT NULL, body BLOB NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL);
"""
POST_TIMEOUT = 30.0
IDLE = 60.0
RETRY_STATUSES = (401, 403, 408, 429)     # the province's problem or a busy ministry: retry
# safegate_publisher_upstream_acks_total{result}
RESULTS = ("delivered", "refused")


def provinces_acks_url(feed_url: str) -> str:
    """The ministry's /v1/provinces/acks next to its /v1/feed."""
    parts = urlsplit(feed_url)
    path = parts.path
    base = path[:-len("/feed")] if path.endswith("/feed") else "/v1"
    return urlunsplit((parts.scheme, parts.netloc, base + "/provinces/acks", "", ""))


@dataclass(frozen=True)
class PendingAck:
    id: int
    gateway: str
    body: bytes
    attempts: int


class NationalIds:
    """Every national entry id this province ever mirrored. A school back after a long absence
    acks entries removed while it was away (outcome "removed"); their diffs may be gone from
    the mirror by then, and refusing the ack would stall the school's outbox for good."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.executescript(SCHEMA)

    def add(self, ids: Iterable[str]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO national_ids (id) VALUES (?)",
                            [(i,) for i in ids])

    def unknown(self, ids: Sequence[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(ids), 500):   # SQLite's bound-parameter limit
            part = list(dict.fromkeys(ids[i:i + 500]))
            known = {r[0] for r in self.db.execute(
                f"SELECT id FROM national_ids WHERE id IN ({','.join('?' * len(part))})", part)}
            out.extend(x for x in part if x not in known)
        return out


class UpstreamOutbox:
    """The outbox table in the province's publisher database."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self.listeners: list[Callable[[], None]] = []
        db.executescript(SCHEMA)

    def add(self, gateway: str, body: bytes) -> None:
        now = self.clock()
        self.db.execute("INSERT INTO upstream_outbox (created, gateway, body, next_attempt) "
                        "VALUES (?,?,?,?)", (now, gateway, body, now))
        for wake in self.listeners:
            wake()

    def pending(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM upstream_outbox").fetchone()[0])

    def oldest(self) -> PendingAck | None:
        row = self.db.execute("SELECT id, gateway, body, attempts FROM upstream_outbox "
                              "ORDER BY id LIMIT 1").fetchone()
        return None if row is None else PendingAck(int(row[0]), str(row[1]), bytes(row[2]),
                                                   int(row[3]))

    def next_due(self) -> float | None:
        row = self.db.execute("SELECT next_attempt FROM upstream_outbox ORDER BY id LIMIT 1"
                              ).fetchone()
        return None if row is None else float(row[0])

    def remove(self, item_id: int) -> None:
        self.db.execute("DELETE FROM upstream_outbox WHERE id=?", (item_id,))

    def retry_at(self, item_id: int, when: float) -> None:
        self.db.execute("UPDATE upstream_outbox SET attempts=attempts+1, next_attempt=? "
                        "WHERE id=?", (when, item_id))


class UpstreamSender(RetryingSender[PendingAck]):
    """Delivers the outbox to the ministry in order: one ack per POST, one POST at a time."""

    def __init__(self, outbox: UpstreamOutbox, url: str, token: str,
                 session: aiohttp.ClientSession, counts: dict[str, int],
                 rng: random.Random | None = None) -> None:
        super().__init__(outbox.listeners, IDLE, outbox.clock, rng)
        self.outbox = outbox
        self.url = url
        self.token = token
        self.session = session
        self.counts = counts          # RESULTS -> total (read by the metrics)

    def due(self, now: float) -> Sequence[PendingAck]:
        due = self.outbox.next_due()
        item = self.outbox.oldest() if due is not None and due <= now else None
        return [item] if item is not None else []

    def next_due(self) -> float | None:
        return self.outbox.next_due()

    def attempts(self, item: PendingAck) -> int:
        return item.attempts

    async def deliver(self, item: PendingAck) -> str | None:
        try:
            async with self.session.post(
                    self.url, data=item.body,
                    headers={"Authorization": f"Bearer {self.token}",
                             "Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT)) as resp:
                text = (await resp.text())[:300].strip()
                if resp.status == 200:
                    self.counts["delivered"] += 1
                    return None
                if 400 <= resp.status < 500 and resp.status not in RETRY_STATUSES:
                    self.counts["refused"] += 1
                    log.error("the ministry refused the ack of school %s (HTTP %d: %s); "
                              "dropped", item.gateway, resp.status, text)
                    return None
                return f"HTTP {resp.status}: {text}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def delivered(self, item: PendingAck) -> None:
        self.outbox.remove(item.id)

    def failed(self, item: PendingAck, next_attempt: float, delay: float, error: str) -> None:
        log.warning("forwarding the ack of school %s to the ministry failed (%s); %d pending, "
                    "retrying in %.0fs", item.gateway, error, self.outbox.pending(), delay)
        self.outbox.retry_at(item.id, next_attempt)
