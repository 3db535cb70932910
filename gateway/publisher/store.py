"""The publisher's database (schema in docs/feeds-contract.md), shared by CLI and server.

SQLite by default, PostgreSQL when publisher.yaml's database is a postgresql:// URL (several
publisher processes then share it: docs/publisher-ha.md). The SQL here is written once, in
SQLite's dialect; gateway.publisher.db translates it (keep it portable: ON CONFLICT upserts
naming the table in DO UPDATE, no INSERT OR REPLACE).

The CLI (or another publisher) writes from another process while the server runs, so every
write is one exclusive transaction that bumps `meta.serial`, and the server notices new serials
by polling that one row. Connections are in autocommit mode: each read sees the latest commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import SafeGateError
from gateway.feedformat.document import FeedEntry, LegalBasis, now_iso, parse_time
from gateway.feedformat.stats import StatRow
from gateway.publisher.db import Database, missing_ids, open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (id TEXT PRIMARY KEY, type TEXT NOT NULL, value TEXT NOT NULL,
  categories TEXT NOT NULL,
  action TEXT NOT NULL, mandatory INTEGER NOT NULL,
  authority TEXT, decision TEXT, decision_date TEXT,
  issued_at TEXT NOT NULL, deadline TEXT,
  added_serial INTEGER NOT NULL, removed_serial INTEGER, removed_at TEXT);
CREATE TABLE IF NOT EXISTS gateways (id TEXT PRIMARY KEY,
  applied_serial INTEGER NOT NULL DEFAULT 0, last_ack REAL);
CREATE TABLE IF NOT EXISTS acks (gateway TEXT NOT NULL, entry_id TEXT NOT NULL,
  received_at REAL, applied_at REAL, verified_at REAL, outcome TEXT NOT NULL,
  PRIMARY KEY (gateway, entry_id));
CREATE TABLE IF NOT EXISTS gateway_stats (gateway TEXT NOT NULL, hour INTEGER NOT NULL,
  category TEXT NOT NULL, tier TEXT NOT NULL, queries INTEGER NOT NULL,
  blocked INTEGER NOT NULL, PRIMARY KEY (gateway, hour, category, tier));
CREATE TABLE IF NOT EXISTS gateway_probes (gateway TEXT NOT NULL, result TEXT NOT NULL,
  count INTEGER NOT NULL, PRIMARY KEY (gateway, result));
CREATE TABLE IF NOT EXISTS forced_serials (serial INTEGER PRIMARY KEY);
CREATE INDEX IF NOT EXISTS entries_added ON entries (added_serial);
CREATE INDEX IF NOT EXISTS entries_removed ON entries (removed_serial);
-- GET /v1/entries/ID: which gateways acked it (1.1M ack rows after the 10,000-gateway bench)
CREATE INDEX IF NOT EXISTS acks_entry ON acks (entry_id);
INSERT OR IGNORE INTO meta (key, value) VALUES ('serial', '0');
CREATE TABLE IF NOT EXISTS serial_times (serial INTEGER PRIMARY KEY, at TEXT NOT NULL);
"""

class StoreError(SafeGateError):
    """A write the database refuses; `kind` is conflict (duplicate id) or not_found."""

    def __init__(self, message: str, kind: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class StoredEntry:
    """An entry plus its history in this feed."""

    entry: FeedEntry
    added_serial: int
    removed_serial: int | None
    removed_at: str | None


@dataclass(frozen=True)
class AckEntry:
    entry_id: str
    received_at: float | None
    applied_at: float | None
    verified_at: float | None
    outcome: str


@dataclass(frozen=True)
class Ack:
    """A validated ack (see gateway.publisher.acks)."""

    gateway: str
    serial: int
    entries: tuple[AckEntry, ...]
    stats: tuple[StatRow, ...]
    probes: dict[str, int]


@dataclass(frozen=True)
class GatewayRow:
    applied_serial: int
    last_ack: float | None


_ENTRY_COLUMNS = ("id, type, value, categories, action, mandatory, authority, decision, "
                  "decision_date, issued_at, deadline, added_serial, removed_serial, removed_at")


class Store:
    """One connection to the publisher database; methods are short transactions."""

    def __init__(self, path: Path | str) -> None:
        """`path`: a SQLite file, or a postgresql:// URL."""
        self.db: Database = open_database(path, SCHEMA)
        self.path = path

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[Database]:
        """A write transaction that excludes every other writer, in any process."""
        with self.db.write() as db:
            yield db

    @contextmanager
    def _read(self) -> Iterator[Database]:
        """A read transaction: several SELECTs that see one consistent serial."""
        with self.db.read() as db:
            yield db

    # ------------------------------------------------------------------ entries

    def serial(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='serial'").fetchone()
        return int(row[0]) if row else 0

    def _bump(self, db: Database) -> int:
        serial = int(db.execute("SELECT value FROM meta WHERE key='serial'").fetchone()[0]) + 1
        db.execute("UPDATE meta SET value=? WHERE key='serial'", (str(serial),))
        db.execute("INSERT INTO serial_times (serial, at) VALUES (?,?) "
                   "ON CONFLICT (serial) DO UPDATE SET at = excluded.at", (serial, now_iso()))
        return serial

    def serial_time(self, serial: int) -> str:
        """When `serial` was published (ISO 8601): the generated_at of its immutable
        documents, so they are the same bytes whenever and by whichever process they are built.
        A serial from before this table is stamped once, on first use."""
        row = self.db.execute("SELECT at FROM serial_times WHERE serial=?", (serial,)).fetchone()
        if row is not None:
            return str(row[0])
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO serial_times (serial, at) VALUES (?,?)",
                       (serial, now_iso()))
            row = db.execute("SELECT at FROM serial_times WHERE serial=?", (serial,)).fetchone()
        return str(row[0])

    def add_entries(self, entries: Sequence[FeedEntry], forced: bool = False) -> int:
        """Add a batch under one new serial; refuses ids that are live (remove them first).

        A removed id may be reused: its row is replaced, so the diff carries the new entry.
        `forced` (the operator's --force) travels in the documents: see forced_ids().
        """
        with self._write() as db:
            for e in entries:
                row = db.execute("SELECT removed_serial FROM entries WHERE id=?",
                                 (e.id,)).fetchone()
                if row is not None and row[0] is None:
                    raise StoreError(f"entry {e.id!r} already exists (remove it first to "
                                     "change it)", "conflict")
            serial = self._bump(db)
            # A reused (removed) id: its old row goes, the new one takes its place.
            db.executemany("DELETE FROM entries WHERE id=?", [(e.id,) for e in entries])
            if forced:
                db.execute("INSERT OR IGNORE INTO forced_serials (serial) VALUES (?)", (serial,))
            for e in entries:
                lb = e.legal_basis
                db.execute(
                    "INSERT INTO entries (" + _ENTRY_COLUMNS + ") "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,NULL,NULL)",
                    (e.id, e.type, e.value, json.dumps(list(e.categories)), e.action,
                     int(e.mandatory), lb.authority if lb else None,
                     lb.decision if lb else None, lb.date if lb else None, e.issued_at,
                     e.deadline, serial))
        return serial

    def remove_entry(self, entry_id: str, removed_at: str, forced: bool = False) -> int:
        """Mark an entry removed under a new serial; the row stays so diffs carry the removal."""
        with self._write() as db:
            row = db.execute("SELECT removed_serial FROM entries WHERE id=?",
                             (entry_id,)).fetchone()
            if row is None:
                raise StoreError(f"no entry with id {entry_id!r}", "not_found")
            if row[0] is not None:
                raise StoreError(f"entry {entry_id!r} was already removed at serial {row[0]}",
                                 "not_found")
            serial = self._bump(db)
            if forced:
                db.execute("INSERT OR IGNORE INTO forced_serials (serial) VALUES (?)", (serial,))
            db.execute("UPDATE entries SET removed_serial=?, removed_at=? WHERE id=?",
                       (serial, removed_at, entry_id))
        return serial

    def count_active(self) -> int:
        return int(self.db.execute(
            "SELECT count(*) FROM entries WHERE removed_serial IS NULL").fetchone()[0])

    def has_entry(self, entry_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM entries WHERE id=?",
                               (entry_id,)).fetchone() is not None

    def get_entry(self, entry_id: str) -> StoredEntry | None:
        row = self.db.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id=?",
                              (entry_id,)).fetchone()
        return _stored(row) if row else None

    def list_entries(self, include_removed: bool = False) -> list[StoredEntry]:
        where = "" if include_removed else " WHERE removed_serial IS NULL"
        rows = self.db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries{where} ORDER BY added_serial, id")
        return [_stored(r) for r in rows]

    def snapshot(self) -> tuple[int, list[FeedEntry]]:
        """(serial, live entries), read in one transaction."""
        with self._read() as db:
            serial = self.serial()
            rows = db.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries "
                              "WHERE removed_serial IS NULL ORDER BY id").fetchall()
        return serial, [_stored(r).entry for r in rows]

    def diff(self, since: int) -> tuple[int, list[FeedEntry], list[str]]:
        """(serial, entries added after `since` and still live, ids removed after `since`)."""
        with self._read() as db:
            serial = self.serial()
            added = db.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE added_serial > ? "
                               "AND removed_serial IS NULL ORDER BY id", (since,)).fetchall()
            removed = db.execute("SELECT id FROM entries WHERE removed_serial > ? ORDER BY id",
                                 (since,)).fetchall()
        return serial, [_stored(r).entry for r in added], [r[0] for r in removed]

    def forced_ids(self, since: int | None, serial: int) -> list[str]:
        """Ids whose change in (since, serial] was published with --force: entries added
        then and still live, and (diffs only) entries removed then. A snapshot lists every
        live entry added under a forced serial (a gateway far behind compares it with what it
        has in force, so any of them may be a change to it)."""
        low = -1 if since is None else since
        with self._read() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM entries WHERE added_serial > ? AND added_serial <= ? AND "
                "(removed_serial IS NULL OR removed_serial > ?) AND "
                "added_serial IN (SELECT serial FROM forced_serials)", (low, serial, serial))]
            if since is not None:
                ids += [r[0] for r in db.execute(
                    "SELECT id FROM entries WHERE removed_serial > ? AND removed_serial <= ? "
                    "AND removed_serial IN (SELECT serial FROM forced_serials)",
                    (since, serial))]
        return sorted(set(ids))

    # ------------------------------------------------------------------ gateways and acks

    def ensure_gateways(self, ids: Iterable[str]) -> None:
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO gateways (id) VALUES (?)",
                           [(i,) for i in ids])

    def unknown_ids(self, ids: Sequence[str]) -> list[str]:
        """The ids in `ids` this feed never had (removed entries are known: rows stay)."""
        return missing_ids(self.db, "entries", ids)

    def record_ack(self, ack: Ack, now: float, max_series: int | None = None) -> int:
        """Apply an ack; returns how many stats rows were dropped by `max_series`.
        Every step is idempotent, so a re-sent ack changes nothing.

        At most `max_series` distinct (category, tier) pairs are kept per gateway: each pair
        is a /metrics series, and categories and tiers are the gateway's free-form names.
        Rows for pairs already stored always go in, so a full budget never loses real data.

        Stats rows and probe counts are the gateway's totals (a closed hour's row; its probe
        ledger's counts), so they replace what was stored: adding would count every retry
        again, and gateways stamp a fresh `sent_at` on each retry, so a retry cannot be told
        apart from a new ack.
        """
        with self._write() as db:
            stats, dropped = list(ack.stats), 0
            if max_series is not None:
                pairs = {(r[0], r[1]) for r in db.execute(
                    "SELECT DISTINCT category, tier FROM gateway_stats WHERE gateway=?",
                    (ack.gateway,))}
                kept = []
                for s in stats:
                    pair = (s.category, s.tier)
                    if pair not in pairs:
                        if len(pairs) >= max_series:
                            dropped += 1
                            continue
                        pairs.add(pair)
                    kept.append(s)
                stats = kept
            db.execute("INSERT INTO gateways (id, applied_serial, last_ack) VALUES (?,?,?) "
                       "ON CONFLICT (id) DO UPDATE SET "
                       "applied_serial=max(gateways.applied_serial, excluded.applied_serial), "
                       "last_ack=excluded.last_ack", (ack.gateway, ack.serial, now))
            # A time once recorded is kept: a re-sent or out-of-order ack cannot move it.
            db.executemany(
                "INSERT INTO acks (gateway, entry_id, received_at, applied_at, verified_at, "
                "outcome) VALUES (?,?,?,?,?,?) ON CONFLICT (gateway, entry_id) DO UPDATE SET "
                "received_at=coalesce(acks.received_at, excluded.received_at), "
                "applied_at=coalesce(acks.applied_at, excluded.applied_at), "
                "verified_at=coalesce(acks.verified_at, excluded.verified_at), "
                "outcome=excluded.outcome",
                [(ack.gateway, e.entry_id, e.received_at, e.applied_at, e.verified_at, e.outcome)
                 for e in ack.entries])
            db.executemany(
                "INSERT INTO gateway_stats (gateway, hour, category, tier, queries, blocked) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT (gateway, hour, category, tier) DO UPDATE "
                "SET queries=excluded.queries, blocked=excluded.blocked",
                [(ack.gateway, s.hour, s.category, s.tier, s.queries, s.blocked)
                 for s in stats])
            db.executemany(
                "INSERT INTO gateway_probes (gateway, result, count) VALUES (?,?,?) "
                "ON CONFLICT (gateway, result) DO UPDATE SET count=excluded.count",
                [(ack.gateway, r, n) for r, n in sorted(ack.probes.items())])
        return dropped

    def gateway_rows(self) -> dict[str, GatewayRow]:
        return {r[0]: GatewayRow(int(r[1]), r[2]) for r in
                self.db.execute("SELECT id, applied_serial, last_ack FROM gateways")}

    def acks_for_entry(self, entry_id: str) -> dict[str, AckEntry]:
        rows = self.db.execute("SELECT gateway, received_at, applied_at, verified_at, outcome "
                               "FROM acks WHERE entry_id=?", (entry_id,))
        return {r[0]: AckEntry(entry_id, r[1], r[2], r[3], r[4]) for r in rows}

    def mandatory_block_entries(self) -> list[FeedEntry]:
        rows = self.db.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE removed_serial IS "
                               "NULL AND mandatory=1 AND action='block' ORDER BY id")
        return [_stored(r).entry for r in rows]

    def verified_latencies(self) -> list[tuple[str, float]]:
        """(gateway, seconds from the entry's issued_at to the gateway's verified ack)."""
        out = []
        for gw, verified_at, issued_at in self.db.execute(
                "SELECT a.gateway, a.verified_at, e.issued_at FROM acks a "
                "JOIN entries e ON e.id = a.entry_id WHERE a.verified_at IS NOT NULL"):
            try:
                out.append((gw, max(0.0, verified_at - parse_time(issued_at).timestamp())))
            except (TypeError, ValueError):
                continue
        return out

    def verified_ids(self) -> dict[str, set[str]]:
        """gateway -> ids of entries it has verified."""
        out: dict[str, set[str]] = {}
        for gw, eid in self.db.execute(
                "SELECT gateway, entry_id FROM acks WHERE verified_at IS NOT NULL"):
            out.setdefault(gw, set()).add(eid)
        return out

    def settled_ids(self) -> dict[str, set[str]]:
        """gateway -> ids it verified or acked not_applicable: never overdue there."""
        out: dict[str, set[str]] = {}
        for gw, eid in self.db.execute(
                "SELECT gateway, entry_id FROM acks WHERE verified_at IS NOT NULL OR "
                "outcome = 'not_applicable'"):
            out.setdefault(gw, set()).add(eid)
        return out

    def category_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (cats,) in self.db.execute(
                "SELECT categories FROM entries WHERE removed_serial IS NULL"):
            for c in json.loads(cats):
                out[c] = out.get(c, 0) + 1
        return out

    def stats_totals(self) -> list[tuple[str, str, str, int, int]]:
        """(gateway, category, tier, queries, blocked) summed over all hours."""
        return [(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in self.db.execute(
            "SELECT gateway, category, tier, sum(queries), sum(blocked) FROM gateway_stats "
            "GROUP BY gateway, category, tier ORDER BY gateway, category, tier")]

    def probe_totals(self) -> dict[tuple[str, str], int]:
        return {(r[0], r[1]): int(r[2]) for r in
                self.db.execute("SELECT gateway, result, count FROM gateway_probes")}


def _stored(row: tuple[object, ...]) -> StoredEntry:
    (eid, etype, value, cats, action, mandatory, authority, decision, ddate, issued, deadline,
     added, removed, removed_at) = row
    basis = (LegalBasis(str(authority), str(decision), str(ddate))
             if authority is not None else None)
    entry = FeedEntry(str(eid), str(etype), str(value), tuple(json.loads(str(cats))), str(action),
                  bool(mandatory), basis, str(issued),
                  None if deadline is None else str(deadline))
    return StoredEntry(entry, int(str(added)),
                       None if removed is None else int(str(removed)),
                       None if removed_at is None else str(removed_at))

