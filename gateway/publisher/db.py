"""One connection interface over the publisher's two databases: SQLite and PostgreSQL.

SQLite (a file) is the embedded default; PostgreSQL (`database: postgresql://...`) lets two or
more publisher processes on different machines share one database, so losing a machine loses
no entry and no ack. store.py (and the other publisher tables) write their SQL once, in
SQLite's dialect with `?` parameters; for PostgreSQL each statement is translated once
(cached): `?` -> `%s`, `INSERT OR IGNORE` -> `ON CONFLICT DO NOTHING`, two-argument
`max()`/`min()` -> GREATEST/LEAST, and in CREATE/ALTER TABLE the SQLite types become what keeps
their meaning (REAL -> DOUBLE PRECISION: a 4-byte real cannot hold a unix time to the
millisecond; INTEGER -> BIGINT; TEXT -> TEXT COLLATE "C", so ORDER BY id sorts bytes as SQLite
does and both back ends produce the same documents).

Transactions: `write()` serialises writers (SQLite: BEGIN IMMEDIATE; PostgreSQL: a
transaction-scoped advisory lock, which every publisher process takes, so serial bumps never
interleave); `read()` is one consistent snapshot (REPEATABLE READ). Outside them every
statement commits on its own (autocommit), so a poll sees the latest serial.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import SafeGateError
from gateway.util.sqlite import open_db

# Both keys are arbitrary but fixed: every publisher process must use the same ones.
WRITE_LOCK = 0x5AFE0001
SCHEMA_LOCK = 0x5AFE0002
URL_SCHEMES = ("postgresql://", "postgres://")


class Cursor(Protocol):
    """What callers use of a cursor: rows (tuples) and rowcount."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


def is_url(target: Path | str) -> bool:
    """True for a PostgreSQL connection URL (anything else is a SQLite file)."""
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


def redact(target: Path | str) -> str:
    """The target for a log line or an error: a URL's password replaced by ***."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", str(target))


def db_errors() -> tuple[type[Exception], ...]:
    """The exception types either driver raises (psycopg only when installed)."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def missing_ids(db: Database, table: str, ids: Sequence[str]) -> list[str]:
    """The ids in `ids` (each once, in order) with no row in `table`'s `id` column."""
    out: list[str] = []
    for i in range(0, len(ids), 500):   # SQLite's bound-parameter limit
        part = list(dict.fromkeys(ids[i:i + 500]))
        known = {r[0] for r in db.execute(
            f"SELECT id FROM {table} WHERE id IN ({','.join('?' * len(part))})", part)}
        out.extend(x for x in part if x not in known)
    return out


class Database(ABC):
    """A connection; `kind` says which back end ("sqlite" or "postgresql")."""

    kind = "sqlite"

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abstractmethod
    def executescript(self, script: str) -> None:
        """Schema: statements separated by ';' (no ';' inside literals)."""

    @abstractmethod
    def write(self) -> AbstractContextManager[Database]:
        """A write transaction that excludes every other writer (all processes)."""

    @abstractmethod
    def read(self) -> AbstractContextManager[Database]:
        """Several SELECTs that see one consistent state."""

    @abstractmethod
    def close(self) -> None: ...


class SqliteDatabase(Database):
    kind = "sqlite"

    def __init__(self, path: Path, schema: str = "") -> None:
        self.conn = open_db(path, schema, synchronous="NORMAL", named_rows=False,
                            check_same_thread=False)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def executescript(self, script: str) -> None:
        self.conn.executescript(script)

    @contextmanager
    def write(self) -> Iterator[Database]:
        # IMMEDIATE: two writers serialise instead of deadlocking on the upgrade to a write.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[Database]:
        self.conn.execute("BEGIN")
        try:
            yield self
        finally:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


_INSERT_OR_IGNORE = re.compile(r"\bINSERT\s+OR\s+IGNORE\s+INTO\b", re.I)
_INSERT_OR_REPLACE = re.compile(r"\bINSERT\s+OR\s+REPLACE\b", re.I)
_MAX_MIN_2 = re.compile(r"\b(max|min)\(([^(),]+),([^(),]+)\)", re.I)
_DDL = re.compile(r"^\s*(CREATE|ALTER)\s+TABLE\b", re.I)
_AUTOINCREMENT = re.compile(r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b", re.I)
_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "TEXT": 'TEXT COLLATE "C"',
          "BLOB": "BYTEA"}
_TYPE_WORDS = re.compile(r"\b(INTEGER|REAL|TEXT|BLOB)\b")


@functools.lru_cache(maxsize=1024)
def to_postgres(sql: str) -> str:
    """One SQLite-dialect statement as PostgreSQL runs it (see the module docstring)."""
    if _INSERT_OR_REPLACE.search(sql):
        raise SafeGateError("INSERT OR REPLACE is SQLite-only: write INSERT ... ON CONFLICT "
                            f"(key) DO UPDATE SET ... instead: {sql[:80]}")
    out = sql.strip().rstrip(";")
    if _DDL.match(out):
        out = _AUTOINCREMENT.sub("BIGSERIAL PRIMARY KEY", out)
        out = _TYPE_WORDS.sub(lambda m: _TYPES[m.group(1)], out)
    if _INSERT_OR_IGNORE.search(out):
        out = _INSERT_OR_IGNORE.sub("INSERT INTO", out) + " ON CONFLICT DO NOTHING"
    out = _MAX_MIN_2.sub(lambda m: ("GREATEST" if m.group(1).lower() == "max" else "LEAST")
                         + f"({m.group(2)},{m.group(3)})", out)
    return out.replace("%", "%%").replace("?", "%s")


class PostgresDatabase(Database):
    """psycopg 3 in autocommit mode; reconnects when the server dropped the connection."""

    kind = "postgresql"

    def __init__(self, url: str, schema: str = "", connect_timeout: float = 10.0) -> None:
        try:
            import psycopg
        except ImportError:
            raise SafeGateError(f"database {redact(url)}: PostgreSQL needs the psycopg driver: "
                                "pip install 'safegate[postgres]'") from None
        self._psycopg = psycopg
        self.url = url
        self.connect_timeout = connect_timeout
        self.conn = self._connect()
        self._in_tx = False
        if schema:
            self.executescript(schema)

    def _connect(self) -> Any:
        from psycopg.adapt import Loader

        class Numeric(Loader):
            """SUM() of a BIGINT is NUMERIC: give int (or float) as SQLite would, not
            Decimal, so JSON output and arithmetic work unchanged."""

            def load(self, data: Any) -> int | float:
                text = bytes(data).decode()
                try:
                    return int(text)
                except ValueError:
                    return float(text)

        conn = self._psycopg.connect(self.url, autocommit=True,
                                     connect_timeout=int(self.connect_timeout))
        conn.adapters.register_loader("numeric", Numeric)
        return conn

    def _live(self) -> Any:
        if self.conn.closed and not self._in_tx:
            self.conn = self._connect()   # the server restarted or a proxy cut us off
        return self.conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        query = to_postgres(sql)
        try:
            cur: Cursor = self._live().execute(query, tuple(params))
        except self._psycopg.OperationalError:
            # A lost connection (database failover, restart, idle cut by a proxy) costs one
            # reconnect, not a failed request: outside a transaction a statement is its own
            # unit, and the only ones run that way are reads and idempotent inserts.
            if self._in_tx or not self.conn.closed:
                raise
            cur = self._live().execute(query, tuple(params))
        return cur

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            with self._live().cursor() as cur:
                cur.executemany(to_postgres(sql), rows)

    def executescript(self, script: str) -> None:
        # Two processes starting at once would race on CREATE TABLE IF NOT EXISTS.
        with self._transaction("BEGIN", SCHEMA_LOCK):
            for statement in script.split(";"):
                if statement.strip() and not statement.strip().upper().startswith("PRAGMA"):
                    self.conn.execute(to_postgres(statement), ())

    @contextmanager
    def _transaction(self, begin: str, lock: int | None) -> Iterator[Database]:
        conn = self._live()
        try:
            conn.execute(begin)
        except self._psycopg.OperationalError:
            if not conn.closed:
                raise
            conn = self._live()   # lost since the last statement: nothing begun yet
            conn.execute(begin)
        self._in_tx = True
        try:
            if lock is not None:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            yield self
        except BaseException:
            self._in_tx = False
            if not conn.closed:
                conn.execute("ROLLBACK")
            raise
        self._in_tx = False
        conn.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[Database]:
        with self._transaction("BEGIN", WRITE_LOCK) as db:
            yield db

    @contextmanager
    def read(self) -> Iterator[Database]:
        with self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ", None) as db:
            yield db

    def close(self) -> None:
        self.conn.close()


def open_database(target: Path | str, schema: str = "") -> Database:
    """SQLite for a path, PostgreSQL for a postgresql:// URL; `schema` is applied (idempotent
    CREATE ... IF NOT EXISTS statements)."""
    try:
        if is_url(target):
            return PostgresDatabase(str(target), schema)
        return SqliteDatabase(Path(target), schema)
    except db_errors() as exc:
        raise SafeGateError(f"{redact(target)}: cannot open the publisher database: "
                            f"{exc}") from None
