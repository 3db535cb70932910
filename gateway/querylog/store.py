"""The query log's SQLite file: one table, bounded by limits.query_log.rows, searched by the
admin page. One connection, used under a lock from the writer's thread and the page's."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.util.sqlite import open_db

FILENAME = "querylog.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    t REAL NOT NULL, network TEXT NOT NULL, tier TEXT NOT NULL, qname TEXT NOT NULL,
    qtype INTEGER NOT NULL, verdict TEXT NOT NULL, category TEXT NOT NULL, client TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS queries_t ON queries (t);
CREATE INDEX IF NOT EXISTS queries_network_t ON queries (network, t);
"""
VERDICTS = ("allowed", "blocked", "rewritten", "intercepted")

Row = tuple[float, str, str, str, int, str, str, str]


@dataclass(frozen=True)
class Found:
    t: float
    network: str
    tier: str
    qname: str
    qtype: int
    verdict: str
    category: str
    client: str


class QueryLogStore:
    def __init__(self, path: Path, max_rows: int) -> None:
        self.max_rows = max_rows
        self._lock = threading.Lock()
        # A lost second of log rows at a power cut is acceptable: NORMAL, not FULL.
        self.conn = open_db(path, SCHEMA, synchronous="NORMAL", check_same_thread=False)
        self.rows = int(self.conn.execute("SELECT COUNT(*) FROM queries").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def add(self, rows: Sequence[Row]) -> int:
        """Insert a batch; returns how many old rows the rows limit pushed out."""
        with self._lock, self.conn:
            self.conn.executemany("INSERT INTO queries VALUES (?,?,?,?,?,?,?,?)", rows)
            self.rows += len(rows)
            excess = self.rows - self.max_rows
            if excess > 0:
                self.conn.execute("DELETE FROM queries WHERE rowid IN (SELECT rowid FROM "
                                  "queries ORDER BY t, rowid LIMIT ?)", (excess,))
                self.rows -= excess
            return max(0, excess)

    def purge(self, now: float, retention_hours: Mapping[str, int], default_hours: int) -> int:
        """Rows past their network's retention; networks no longer logged keep
        `default_hours`. Returns how many were deleted."""
        deleted = 0
        with self._lock, self.conn:
            for network, hours in retention_hours.items():
                deleted += self.conn.execute("DELETE FROM queries WHERE network=? AND t<?",
                                             (network, now - hours * 3600)).rowcount
            marks = ",".join("?" * len(retention_hours))
            deleted += self.conn.execute(
                f"DELETE FROM queries WHERE network NOT IN ({marks}) AND t<?",
                (*retention_hours, now - default_hours * 3600)).rowcount
            self.rows -= deleted
        return deleted

    def search(self, *, name: str = "", verdict: str = "", network: str = "",
               since: float | None = None, until: float | None = None, limit: int = 500
               ) -> list[Found]:
        """Newest first: name substring, verdict, network and time range, all optional."""
        where: list[str] = ["1=1"]
        args: list[str | float] = []
        if name:
            where.append("qname LIKE ? ESCAPE '\\'")
            args.append("%" + name.replace("\\", "\\\\").replace("%", "\\%")
                        .replace("_", "\\_") + "%")
        for column, value in (("verdict", verdict), ("network", network)):
            if value:
                where.append(f"{column}=?")
                args.append(value)
        if since is not None:
            where.append("t>=?")
            args.append(since)
        if until is not None:
            where.append("t<?")
            args.append(until)
        sql = (f"SELECT * FROM queries WHERE {' AND '.join(where)} "
               "ORDER BY t DESC, rowid DESC LIMIT ?")
        with self._lock:
            return [Found(*r) for r in self.conn.execute(sql, (*args, limit))]
