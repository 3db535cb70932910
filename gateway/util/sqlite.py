"""Opening the gateway's own SQLite files (ledger, reports) the one way they need."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

Isolation = Literal["DEFERRED", "IMMEDIATE", "EXCLUSIVE"] | None


def open_db(path: Path, schema: str, *, readonly: bool = False,
            isolation_level: Isolation = None, timeout: float = 10.0) -> sqlite3.Connection:
    """A connection with rows by name. Writers get WAL (readers never block the gateway)
    and synchronous=FULL: what we told someone is stored (an ack, a report) must survive a
    power cut; these writes are rare. Read-only opens (the CLI) never create the file."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout,
                               isolation_level=isolation_level)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=isolation_level, timeout=timeout)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema)
    conn.row_factory = sqlite3.Row
    return conn
