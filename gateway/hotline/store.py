"""reports.sqlite3 under state_dir: the reports and their outbox, one row per (report, target).

A report and its outbox rows are written in one transaction, so a stored report is always
forwarded eventually, and a row leaves the outbox only after its target said 2xx. Several
processes may write (the gateway's web listener, the proxy's hash matches): WAL mode with a
busy timeout; the forwarder also polls, so it notices rows another process added.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.feedformat.hotline import HotlineReport
from gateway.util.sqlite import open_db

FILENAME = "reports.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (id TEXT PRIMARY KEY, kind TEXT NOT NULL,
  target TEXT NOT NULL, category TEXT NOT NULL, entry_id TEXT NOT NULL, comment TEXT NOT NULL,
  contact TEXT NOT NULL, created_at TEXT NOT NULL, gateway TEXT NOT NULL,
  stored_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS report_outbox (report_id TEXT NOT NULL, url TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL, last_error TEXT,
  PRIMARY KEY (report_id, url));
CREATE TABLE IF NOT EXISTS report_deliveries (report_id TEXT NOT NULL, url TEXT NOT NULL,
  delivered_at REAL NOT NULL, PRIMARY KEY (report_id, url));
CREATE INDEX IF NOT EXISTS report_outbox_due ON report_outbox (next_attempt);
"""

_COLUMNS = "id, kind, target, category, entry_id, comment, contact, created_at, gateway"


@dataclass(frozen=True)
class Pending:
    """One outbox row: a report still owed to one target."""

    report: HotlineReport
    url: str
    attempts: int
    next_attempt: float


@dataclass(frozen=True)
class StoredReport:
    report: HotlineReport
    delivered: tuple[str, ...]   # targets that acknowledged it
    pending: tuple[str, ...]     # targets still owed it


class ReportStore:
    """One SQLite connection, used from one thread (the event loop's, or a CLI's)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time,
                 readonly: bool = False) -> None:
        self.path = path
        self.clock = clock
        self.listeners: list[Callable[[], None]] = []   # told when a report is added
        # isolation_level IMMEDIATE: every write takes the write lock up front (busy timeout
        # applies), so two processes never deadlock upgrading a read to a write.
        self.conn = open_db(path, SCHEMA, readonly=readonly,
                            isolation_level=None if readonly else "IMMEDIATE")

    def close(self) -> None:
        self.conn.close()

    def add(self, report: HotlineReport, targets: Sequence[str]) -> bool:
        """Store a report and owe it to every target; False if its id was already stored."""
        now = self.clock()
        with self.conn as c:
            cur = c.execute(f"INSERT OR IGNORE INTO reports ({_COLUMNS}, stored_at) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?)", (*_values(report), now))
            if not cur.rowcount:
                return False
            c.executemany("INSERT INTO report_outbox (report_id, url, next_attempt) "
                          "VALUES (?,?,?)", [(report.id, url, now) for url in targets])
        for listener in self.listeners:
            listener()
        return True

    def due(self, now: float, limit: int = 100) -> list[Pending]:
        """Outbox rows whose next attempt has come, oldest report first."""
        rows = self.conn.execute(
            f"SELECT {', '.join('r.' + c.strip() for c in _COLUMNS.split(','))}, o.url, "
            "o.attempts, o.next_attempt FROM report_outbox o JOIN reports r ON r.id=o.report_id "
            "WHERE o.next_attempt<=? ORDER BY r.stored_at, r.id LIMIT ?", (now, limit))
        return [Pending(_report(r), r["url"], r["attempts"], r["next_attempt"]) for r in rows]

    def next_due(self) -> float | None:
        row = self.conn.execute("SELECT MIN(next_attempt) FROM report_outbox").fetchone()
        return None if row[0] is None else float(row[0])

    def delivered(self, report_id: str, url: str) -> None:
        with self.conn as c:
            c.execute("DELETE FROM report_outbox WHERE report_id=? AND url=?", (report_id, url))
            c.execute("INSERT OR IGNORE INTO report_deliveries VALUES (?,?,?)",
                      (report_id, url, self.clock()))

    def failed(self, report_id: str, url: str, next_attempt: float, error: str) -> None:
        with self.conn as c:
            c.execute("UPDATE report_outbox SET attempts=attempts+1, next_attempt=?, "
                      "last_error=? WHERE report_id=? AND url=?",
                      (next_attempt, error[:300], report_id, url))

    def pending(self) -> int:
        """Outbox rows (report x target) not yet acknowledged."""
        return int(self.conn.execute("SELECT COUNT(*) FROM report_outbox").fetchone()[0])

    def reports(self, limit: int | None = None) -> list[StoredReport]:
        """Newest first, each with where it was delivered and where it is still owed."""
        sql = f"SELECT {_COLUMNS} FROM reports ORDER BY stored_at DESC, id"
        rows = list(self.conn.execute(sql + (" LIMIT ?" if limit else ""),
                                      (limit,) if limit else ()))
        done: dict[str, list[str]] = {}
        owed: dict[str, list[str]] = {}
        for r in self.conn.execute("SELECT report_id, url FROM report_deliveries ORDER BY url"):
            done.setdefault(r[0], []).append(r[1])
        for r in self.conn.execute("SELECT report_id, url FROM report_outbox ORDER BY url"):
            owed.setdefault(r[0], []).append(r[1])
        return [StoredReport(_report(r), tuple(done.get(r["id"], ())),
                             tuple(owed.get(r["id"], ()))) for r in rows]


def _values(report: HotlineReport) -> tuple[str, ...]:
    return (report.id, report.kind, report.target, report.category, report.entry_id,
            report.comment, report.contact, report.created_at, report.gateway)


def _report(row: sqlite3.Row) -> HotlineReport:
    return HotlineReport(row["id"], row["kind"], row["target"], row["category"], row["entry_id"],
                  row["comment"], row["contact"], row["created_at"], row["gateway"])
