"""The gateway's compliance ledger: what each feed entry went through, in SQLite (WAL).

Schema: docs/feeds-contract.md (reports read it). Every state change that a publisher must hear
about writes its ack to the outbox in the same transaction, so a crash can lose neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.feedformat.document import FeedEntry, LegalBasis, parse_time
from gateway.feedformat.stats import StatRow
from gateway.feeds import acks
from gateway.feeds.acks import ACK_ENTRIES, AckTarget, ack_entry, enqueue
from gateway.feeds.proxyprobe import PROXY_TYPES
from gateway.util.sqlite import open_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
  feed TEXT NOT NULL, entry_id TEXT NOT NULL,
  type TEXT NOT NULL, value TEXT NOT NULL, categories TEXT NOT NULL,
  mandatory INTEGER NOT NULL, authority TEXT, decision TEXT, decision_date TEXT,
  serial INTEGER NOT NULL,
  issued_at REAL NOT NULL,
  deadline REAL,
  received_at REAL NOT NULL, applied_at REAL, verified_at REAL, removed_at REAL,
  outcome TEXT NOT NULL,
  probe_failures INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (feed, entry_id));
CREATE TABLE IF NOT EXISTS probes (ts REAL NOT NULL, feed TEXT NOT NULL, entry_id TEXT NOT NULL,
                     result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stats_hourly (hour INTEGER NOT NULL, category TEXT NOT NULL,
                           tier TEXT NOT NULL,
                           queries INTEGER NOT NULL, blocked INTEGER NOT NULL,
                           PRIMARY KEY (hour, category, tier));
CREATE INDEX IF NOT EXISTS probes_ts ON probes (ts);
"""

DNS_TYPES = ("domain", "domain-exact")
DEFAULT_DEADLINE = 24 * 3600.0   # when an entry has no deadline: issued_at + 24 h
RECORD_CHUNK = 1000              # entries per transaction in record_async (~30-50 ms each)
_IN_CHUNK = 500                  # ids per `IN (...)` (SQLite's variable limit is 999 on old builds)


@dataclass(frozen=True)
class LedgerEntry:
    feed: str
    entry_id: str
    type: str
    value: str
    categories: tuple[str, ...]
    mandatory: bool
    serial: int
    issued_at: float
    deadline: float | None
    received_at: float
    applied_at: float | None
    verified_at: float | None
    removed_at: float | None
    outcome: str
    probe_failures: int
    authority: str | None = None        # the legal basis, when the feed gave one
    decision: str | None = None
    decision_date: str | None = None

    @property
    def enforced_at_dns(self) -> bool:
        return self.type in DNS_TYPES and self.outcome in ("applied", "verified", "failed")

    @property
    def probed(self) -> bool:
        """Self-probed: in force at DNS, or handed to the proxy (outcome applied only when
        proxy.enabled: gateway/feeds/proxyprobe.py)."""
        return (self.type in DNS_TYPES or self.type in PROXY_TYPES) and self.outcome in (
            "applied", "verified", "failed")


@dataclass(frozen=True)
class ProbeRecord:
    """One self-probe's result, to be stored (Ledger.record_probes)."""

    feed: str
    entry_id: str
    result: str
    ts: float
    gave_up: bool
    ack: AckTarget | None
    serial: int


def _ts(text: str | None) -> float | None:
    return None if text is None else parse_time(text).timestamp()


class Ledger:
    """One SQLite connection on the event loop's thread. Writes are small, except a big feed
    update, which record_async splits into short transactions."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time,
                 readonly: bool = False) -> None:
        self.path = path
        self.clock = clock
        self.listeners: list[Callable[[], None]] = []   # told when an ack is enqueued
        self.conn = open_db(path, SCHEMA + acks.SCHEMA, readonly=readonly, timeout=5.0)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    # ------------------------------------------------------------------ entries

    def get(self, feed: str, entry_id: str) -> LedgerEntry | None:
        row = self.conn.execute("SELECT * FROM entries WHERE feed=? AND entry_id=?",
                                (feed, entry_id)).fetchone()
        return None if row is None else _entry(row)

    def legal_basis(self, entry_id: str) -> LegalBasis | None:
        """The legal basis of an entry in force (any feed), for the block page (issue 5)."""
        row = self.conn.execute(
            "SELECT authority, decision, decision_date FROM entries WHERE entry_id=? AND "
            "removed_at IS NULL AND authority IS NOT NULL ORDER BY serial DESC LIMIT 1",
            (entry_id,)).fetchone()
        return None if row is None else LegalBasis(row[0], row[1] or "", row[2] or "")

    def entries(self, feed: str) -> list[LedgerEntry]:
        rows = self.conn.execute("SELECT * FROM entries WHERE feed=? ORDER BY entry_id", (feed,))
        return [_entry(r) for r in rows]

    def rows(self, feed: str, ids: Iterable[str]) -> dict[str, LedgerEntry]:
        """The recorded rows of `ids` (missing ids are left out), read in bulk."""
        ids = list(ids)
        out: dict[str, LedgerEntry] = {}
        for i in range(0, len(ids), _IN_CHUNK):
            part = ids[i:i + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            for row in self.conn.execute(f"SELECT * FROM entries WHERE feed=? AND entry_id IN "
                                         f"({marks})", (feed, *part)):
                out[row["entry_id"]] = _entry(row)
        return out

    def record(self, feed: str, serial: int, upserts: Iterable[tuple[FeedEntry, str]],
               removed: Iterable[str], received_at: float, applied_at: float | None,
               ack: AckTarget | None, force_ack: bool = False) -> list[str]:
        """Store an applied update; returns the ids whose state changed.

        `upserts` pairs each entry in force with its outcome (applied | refused | received). An
        entry already recorded with the same content keeps its times (a restart re-applying
        the last-known-good copy must not reset when it was first received or verified).
        """
        upserts, removed = list(upserts), list(removed)
        with self.transaction() as c:
            changed = self._record_part(c, feed, serial, upserts, removed, received_at,
                                        applied_at)
            if ack is not None and (changed or force_ack):
                self._enqueue_ack(c, ack, serial, changed)
        if ack is not None and (changed or force_ack):
            self._notify()
        return changed

    async def record_async(self, feed: str, serial: int, upserts: Sequence[tuple[FeedEntry, str]],
                           removed: Sequence[str], received_at: float,
                           applied_at: float | None, ack: AckTarget | None,
                           force_ack: bool = False, chunk: int = RECORD_CHUNK) -> list[str]:
        """record() for big updates: one transaction per `chunk` entries (each with the acks of
        its own changes, so an ack still exists exactly when its change does), yielding to the
        event loop between them. A 100k-entry snapshot in one transaction would stop DNS for
        seconds; a crash half-way is repaired at start-up, which records the stored copy again.
        """
        changed: list[str] = []
        parts: list[tuple[list[tuple[FeedEntry, str]], list[str]]] = [
            (list(upserts[i:i + chunk]), []) for i in range(0, len(upserts), chunk)]
        parts += [([], list(removed[i:i + chunk])) for i in range(0, len(removed), chunk)]
        for n, (ups, rms) in enumerate(parts or [([], [])]):
            last = n == max(0, len(parts) - 1)
            with self.transaction() as c:
                done = self._record_part(c, feed, serial, ups, rms, received_at, applied_at)
                send = ack is not None and (done or (last and force_ack and not changed))
                if send:
                    assert ack is not None
                    self._enqueue_ack(c, ack, serial, done)
            changed += done
            if send:
                self._notify()
            if not last:
                await asyncio.sleep(0)
        return changed

    def _record_part(self, c: sqlite3.Connection, feed: str, serial: int,
                     upserts: list[tuple[FeedEntry, str]], removed: list[str], received_at: float,
                     applied_at: float | None) -> list[str]:
        changed: list[str] = []
        olds = self.rows(feed, (e.id for e, _ in upserts))
        applied_only: list[tuple[float | None, str, str]] = []
        inserts: list[tuple[Any, ...]] = []
        for entry, outcome in upserts:
            old = olds.get(entry.id)
            same = old is not None and _same(old, entry) and old.removed_at is None
            if old is not None and same and _compatible(old.outcome, outcome):
                if outcome == "applied" and old.applied_at is None:
                    applied_only.append((applied_at, feed, entry.id))
                    changed.append(entry.id)
                continue
            basis = entry.legal_basis
            inserts.append(
                (feed, entry.id, entry.type, entry.value, ",".join(entry.categories),
                 int(entry.mandatory), basis.authority if basis else None,
                 basis.decision if basis else None, basis.date if basis else None, serial,
                 _ts(entry.issued_at) or received_at, _ts(entry.deadline),
                 old.received_at if old is not None and same else received_at,
                 applied_at if outcome == "applied" else None, outcome))
            changed.append(entry.id)
        c.executemany("UPDATE entries SET applied_at=? WHERE feed=? AND entry_id=?",
                      applied_only)
        c.executemany(
            "INSERT OR REPLACE INTO entries (feed, entry_id, type, value, categories, "
            "mandatory, authority, decision, decision_date, serial, issued_at, deadline, "
            "received_at, applied_at, verified_at, removed_at, outcome, probe_failures) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,NULL,NULL,?,0)", inserts)
        for rid in removed:
            cur = c.execute("UPDATE entries SET removed_at=?, outcome='removed' WHERE feed=? "
                            "AND entry_id=? AND removed_at IS NULL",
                            (applied_at or received_at, feed, rid))
            if cur.rowcount:
                changed.append(rid)
        return changed

    def _enqueue_ack(self, c: sqlite3.Connection, ack: AckTarget, serial: int,
                     ids: Iterable[str], stats: list[dict[str, Any]] | None = None) -> None:
        ids = list(ids)
        found = self.rows(ack.feed, ids)
        rows = [found[i] for i in ids if i in found]
        # Every type: DNS entries, URL/hash entries the proxy verifies, not_applicable ones.
        entries = [ack_entry(r.entry_id, r.received_at, r.applied_at, r.verified_at, r.outcome)
                   for r in rows if r.outcome != "received"]
        now = self.clock()
        for i in range(0, max(1, len(entries)), ACK_ENTRIES):   # POST bodies stay small
            chunk = entries[i:i + ACK_ENTRIES]
            enqueue(c, ack, serial, chunk, (stats or []) if i == 0 else [], now)

    def record_probe(self, feed: str, entry_id: str, result: str, ts: float, *, gave_up: bool,
                     ack: AckTarget | None, serial: int) -> tuple[str | None, float | None]:
        """Store a probe; returns (new outcome if it changed, issued->verified seconds if this
        is the entry's first verification)."""
        return self.record_probes([ProbeRecord(feed, entry_id, result, ts, gave_up, ack,
                                               serial)])[0]

    def record_probes(self, probes: Sequence[ProbeRecord]
                      ) -> list[tuple[str | None, float | None]]:
        """record_probe for many probes in one transaction (one fsync, not one per probe: the
        probes of a 100k-entry update are stored in batches)."""
        out: list[tuple[str | None, float | None]] = []
        acks: dict[tuple[AckTarget, int], list[str]] = {}
        with self.transaction() as c:
            c.executemany("INSERT INTO probes (ts, feed, entry_id, result) VALUES (?,?,?,?)",
                          [(p.ts, p.feed, p.entry_id, p.result) for p in probes])
            for p in probes:
                new, latency = self._probe_outcome(c, p)
                out.append((new, latency))
                if new is not None and p.ack is not None:
                    acks.setdefault((p.ack, p.serial), []).append(p.entry_id)
            for (target, serial), ids in acks.items():
                self._enqueue_ack(c, target, serial, ids)
        if acks:
            self._notify()
        return out

    def _probe_outcome(self, c: sqlite3.Connection, p: ProbeRecord
                       ) -> tuple[str | None, float | None]:
        row = self.get(p.feed, p.entry_id)
        if row is None or row.removed_at is not None or not row.probed:
            return None, None
        key = (p.feed, p.entry_id)
        if p.result == "blocked":
            if row.verified_at is None:
                c.execute("UPDATE entries SET verified_at=?, outcome='verified' WHERE feed=? "
                          "AND entry_id=?", (p.ts, *key))
                return "verified", max(0.0, p.ts - row.issued_at)
            if row.outcome != "verified":
                c.execute("UPDATE entries SET outcome='verified' WHERE feed=? AND entry_id=?",
                          key)
                return "verified", None
            return None, None
        c.execute("UPDATE entries SET probe_failures=probe_failures+1 WHERE feed=? AND "
                  "entry_id=?", key)
        if p.gave_up and row.outcome != "failed":
            c.execute("UPDATE entries SET outcome='failed' WHERE feed=? AND entry_id=?", key)
            return "failed", None
        return None, None

    def overdue(self, feed: str, now: float) -> int:
        """Mandatory block entries in force (DNS, or the proxy's), past their deadline and
        never verified (not_applicable ones are not in force here: never overdue)."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM entries WHERE feed=? AND mandatory=1 AND type IN (?,?,?,?,?) "
            "AND outcome IN ('applied','failed') AND verified_at IS NULL AND removed_at IS NULL "
            "AND COALESCE(deadline, issued_at + ?) < ?",
            (feed, *DNS_TYPES, *PROXY_TYPES, DEFAULT_DEADLINE, now)).fetchone()
        return int(row[0])

    def counts(self, feed: str) -> dict[str, int]:
        rows = self.conn.execute("SELECT outcome, COUNT(*) FROM entries WHERE feed=? "
                                 "GROUP BY outcome", (feed,))
        return {r[0]: r[1] for r in rows}

    # ------------------------------------------------------------------ compliance reads

    def all_entries(self) -> list[LedgerEntry]:
        """Every recorded entry of every feed (the compliance report filters by period)."""
        return [_entry(r) for r in self.conn.execute(
            "SELECT * FROM entries ORDER BY feed, entry_id")]

    def mandatory_in_force(self) -> list[LedgerEntry]:
        """Mandatory entries the gateway holds: not removed and not refused by the guard."""
        return [_entry(r) for r in self.conn.execute(
            "SELECT * FROM entries WHERE mandatory = 1 AND outcome NOT IN ('removed', 'refused') "
            "AND removed_at IS NULL ORDER BY entry_id")]

    def probe_failures(self, start: float, end: float) -> dict[str, int]:
        """Probes in [start, end) that did not see their entry blocked, by result."""
        return {r[0]: r[1] for r in self.conn.execute(
            "SELECT result, COUNT(*) FROM probes WHERE ts >= ? AND ts < ? AND "
            "result != 'blocked' GROUP BY result", (start, end))}

    def stat_totals(self, start: float, end: float) -> list[tuple[str, str, int, int]]:
        """(category, tier, queries, blocked) summed over the hours in [start, end)."""
        return [(c, t, int(q), int(b)) for c, t, q, b in self.conn.execute(
            "SELECT category, tier, SUM(queries), SUM(blocked) FROM stats_hourly "
            "WHERE hour >= ? AND hour < ? GROUP BY category, tier", (start, end))]

    def probe_counts(self) -> dict[str, int]:
        out = {"blocked": 0, "not_blocked": 0, "error": 0}
        for r in self.conn.execute("SELECT result, COUNT(*) FROM probes GROUP BY result"):
            out[r[0]] = r[1]
        return out

    # ------------------------------------------------------------------ stats

    def add_stats(self, hour: int, delta: dict[tuple[str, str], tuple[int, int]]) -> None:
        """Add one flush's counts to the hour's rows (a restart mid-hour adds, never resets)."""
        if not delta:
            return
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO stats_hourly (hour, category, tier, queries, blocked) "
                "VALUES (?,?,?,?,?) ON CONFLICT (hour, category, tier) DO UPDATE SET "
                "queries = queries + excluded.queries, blocked = blocked + excluded.blocked",
                [(hour, cat, tier, q, b) for (cat, tier), (q, b) in sorted(delta.items())])

    def stats_for(self, hour: int) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT category, tier, queries, blocked FROM stats_hourly "
                                 "WHERE hour=? ORDER BY category, tier", (hour,))
        return [StatRow(hour, r[0], r[1], r[2], r[3]).to_json() for r in rows]

    def enqueue_stats(self, hour: int, targets: Iterable[tuple[AckTarget, int]]) -> None:
        """A stats-only ack per target (target, its feed's serial), in one transaction."""
        stats = self.stats_for(hour)
        targets = list(targets)
        if not stats or not targets:
            return
        with self.transaction() as c:
            for target, serial in targets:
                self._enqueue_ack(c, target, serial, [], stats)
        self._notify()

    def prune(self, now: float, probes_days: float = 30, stats_days: float = 90) -> None:
        """Bound the database: old probe rows and hourly stats go (entries stay: they are the
        compliance record)."""
        with self.transaction() as c:
            c.execute("DELETE FROM probes WHERE ts < ?", (now - probes_days * 86400,))
            c.execute("DELETE FROM stats_hourly WHERE hour < ?", (now - stats_days * 86400,))

    def outbox_pending(self) -> int:
        return acks.pending_count(self.conn)


def _entry(row: sqlite3.Row) -> LedgerEntry:
    return LedgerEntry(
        row["feed"], row["entry_id"], row["type"], row["value"],
        tuple(c for c in row["categories"].split(",") if c), bool(row["mandatory"]),
        row["serial"], row["issued_at"], row["deadline"], row["received_at"], row["applied_at"],
        row["verified_at"], row["removed_at"], row["outcome"], row["probe_failures"],
        row["authority"], row["decision"], row["decision_date"])


def _same(old: LedgerEntry, entry: FeedEntry) -> bool:
    return (old.type, old.value, old.categories, old.mandatory, old.deadline) == (
        entry.type, entry.value, entry.categories, entry.mandatory, _ts(entry.deadline))


def _compatible(old: str, new: str) -> bool:
    """An applied entry that was verified (or failed its probes) is still the same state."""
    if new == "applied":
        return old in ("applied", "verified", "failed")
    return old == new
