"""Opening SafeGate's own SQLite files (ledger, reports, publisher database) the one way."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal
from urllib.parse import quote

Isolation = Literal["DEFERRED", "IMMEDIATE", "EXCLUSIVE"] | None
Synchronous = Literal["FULL", "NORMAL"]


def open_db(path: Path, schema: str = "", *, readonly: bool = False,
            isolation_level: Isolation = None, timeout: float = 10.0,
            synchronous: Synchronous = "FULL", named_rows: bool = True,
            check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection (rows by name unless `named_rows` is False).

    Writers get WAL (readers never block the gateway) and synchronous=FULL by default: what
    we told someone is stored (an ack, a report) must survive a power cut; these writes are
    rare. The publisher, whose every write is also in the next feed, may pass NORMAL.
    Read-only opens (the CLI, exports) never create the file nor change it under the
    gateway; `schema` is only applied by writers."""
    if readonly:
        # URI form; the path is quoted so a '?' or '#' in a directory name stays a path.
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=timeout,
                               isolation_level=isolation_level,
                               check_same_thread=check_same_thread)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=isolation_level, timeout=timeout,
                               check_same_thread=check_same_thread)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if schema:
            conn.executescript(schema)
    if named_rows:
        conn.row_factory = sqlite3.Row
    return conn
