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

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from gateway.publisher.db import Database, missing_ids
from gateway.util.outbox import RetryingSender

log = logging.getLogger("safegate.publisher.upstream")

SCHEMA = """
CREATE TABLE IF NOT EXISTS national_ids (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS upstream_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,
  created REAL NOT NULL, gateway TEXT NOT NULL, body BLOB NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL);
CREATE INDEX IF NOT EXISTS upstream_outbox_gateway ON upstream_outbox (gateway);
"""
POST_TIMEOUT = 30.0
IDLE = 60.0
RETRY_STATUSES = (401, 403, 408, 429)     # the province's problem or a busy ministry: retry
ANSWER_BYTES = 1 << 20                    # the ministry's answer to one POST, read at most
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
        return missing_ids(self.db, "national_ids", ids)


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

    def pending_of(self, gateway: str) -> int:
        """Acks of one school waiting (its share of limits.upstream_pending)."""
        return int(self.db.execute("SELECT count(*) FROM upstream_outbox WHERE gateway=?",
                                   (gateway,)).fetchone()[0])

    def oldest_batch(self, max_count: int, max_bytes: int) -> list[PendingAck]:
        """The oldest acks, in order, at most `max_count` and (but for the first, which always
        goes) at most `max_bytes` of bodies together."""
        out: list[PendingAck] = []
        size = 0
        for row in self.db.execute("SELECT id, gateway, body, attempts FROM upstream_outbox "
                                   "ORDER BY id LIMIT ?", (max(1, max_count),)).fetchall():
            body = bytes(row[2])
            if out and size + len(body) + 1 > max_bytes:
                break
            size += len(body) + 1
            out.append(PendingAck(int(row[0]), str(row[1]), body, int(row[3])))
        return out

    def remove_many(self, ids: Sequence[int]) -> None:
        self.db.executemany("DELETE FROM upstream_outbox WHERE id=?", [(i,) for i in ids])

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


Batch = tuple[PendingAck, ...]


def batch_body(batch: Batch) -> bytes:
    """The batched form of POST /v1/provinces/acks. Each body was parsed as one JSON object
    when the school posted it, so joining the bytes is valid JSON: no re-encoding."""
    return b'{"acks":[' + b",".join(a.body for a in batch) + b"]}"


async def _read_upto(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[:limit]


class UpstreamSender(RetryingSender[Batch]):
    """Delivers the outbox to the ministry in order, one POST at a time, each carrying up to
    `max_count` acks (`max_bytes` of bodies). An ack leaves the outbox only once the ministry
    answered for it: accepted, or refused as invalid (dropped, counted). A ministry that does
    not take the batched form (a whole-request 4xx without per-ack results: an older version,
    or a lower limit) gets one ack per POST from then on; nothing is dropped for it."""

    def __init__(self, outbox: UpstreamOutbox, url: str, token: str,
                 session: aiohttp.ClientSession, counts: dict[str, int],
                 rng: random.Random | None = None, max_count: int = 1,
                 max_bytes: int = 1 << 20) -> None:
        super().__init__(outbox.listeners, IDLE, outbox.clock, rng)
        self.outbox = outbox
        self.url = url
        self.token = token
        self.session = session
        self.counts = counts          # RESULTS, "posts", "batching" -> value (the metrics)
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.batching = max_count > 1
        self.counts["batching"] = int(self.batching)
        self._rest: Batch = ()        # what a partly answered batch left to retry

    def due(self, now: float) -> Sequence[Batch]:
        due = self.outbox.next_due()
        if due is None or due > now:
            return []
        batch = self.outbox.oldest_batch(self.max_count if self.batching else 1,
                                         self.max_bytes)
        return [tuple(batch)] if batch else []

    def next_due(self) -> float | None:
        return self.outbox.next_due()

    def attempts(self, item: Batch) -> int:
        return item[0].attempts

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        self.counts["posts"] += 1
        async with self.session.post(
                self.url, data=body,
                headers={"Authorization": f"Bearer {self.token}",
                         "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT)) as resp:
            return resp.status, await _read_upto(resp, ANSWER_BYTES)

    def _refused(self, item: PendingAck, status: int, text: str) -> None:
        self.counts["refused"] += 1
        log.error("the ministry refused the ack of school %s (HTTP %d: %s); dropped",
                  item.gateway, status, text)

    async def deliver(self, item: Batch) -> str | None:
        self._rest = item
        try:
            if len(item) == 1:
                return self._single(item[0], *await self._post(item[0].body))
            return self._batch(item, *await self._post(batch_body(item)))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def _single(self, item: PendingAck, status: int, answer: bytes) -> str | None:
        text = answer[:300].decode("utf-8", "replace").strip()
        if status == 200:
            self.counts["delivered"] += 1
            return None
        if 400 <= status < 500 and status not in RETRY_STATUSES:
            self._refused(item, status, text)
            return None
        return f"HTTP {status}: {text}"

    def _batch(self, item: Batch, status: int, answer: bytes) -> str | None:
        results = _results(answer) if status == 200 else None
        text = answer[:300].decode("utf-8", "replace").strip()
        if results is None:
            if (400 <= status < 500 and status not in RETRY_STATUSES) or status == 200:
                self.batching = False
                self.counts["batching"] = 0
                log.warning("the ministry does not take batched acks (HTTP %d: %s); "
                            "forwarding one ack per request from now on", status, text)
                return "batched acks refused: retrying one at a time"
            return f"HTTP {status}: {text}"
        done: list[int] = []
        for ack, (code, error) in zip(item, results, strict=False):
            if code == 200:
                self.counts["delivered"] += 1
            elif 400 <= code < 500 and code not in RETRY_STATUSES:
                self._refused(ack, code, error)
            else:
                break
            done.append(ack.id)
        self.outbox.remove_many(done)
        self._rest = item[len(done):]
        if not self._rest:
            return None
        return f"the ministry answered {len(done)} of {len(item)} acks"

    def delivered(self, item: Batch) -> None:
        self.outbox.remove_many([a.id for a in item])

    def failed(self, item: Batch, next_attempt: float, delay: float, error: str) -> None:
        rest = self._rest or item
        log.warning("forwarding the acks of %d school(s) to the ministry failed (%s); %d "
                    "pending, retrying in %.0fs", len({a.gateway for a in rest}), error,
                    self.outbox.pending(), delay)
        if not self.batching and len(rest) > 1 and error.startswith("batched acks refused"):
            next_attempt = self.clock()        # not the ministry's fault: go on at once
        self.outbox.retry_at(rest[0].id, next_attempt)


def _results(answer: bytes) -> list[tuple[int, str]] | None:
    """The ministry's per-ack answers to a batch, in order; None when it sent none."""
    try:
        doc = json.loads(answer)
    except (UnicodeDecodeError, ValueError):
        return None
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list):
        return None
    out: list[tuple[int, str]] = []
    for r in results:
        status = r.get("status") if isinstance(r, dict) else None
        if not isinstance(status, int) or isinstance(status, bool):
            return out      # answers past a malformed one count as unanswered
        error = r.get("error")
        out.append((status, error if isinstance(error, str) else ""))
    return out
