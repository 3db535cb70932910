"""gateway/util/sqlite.py is the one way SafeGate opens its SQLite files; each caller keeps
its durability (WAL, synchronous) and read-only opens never write."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.compliance.export import open_readonly
from gateway.feeds.ledger import Ledger
from gateway.hotline.store import ReportStore
from gateway.publisher.store import Store
from gateway.util.sqlite import open_db

FULL, NORMAL = 2, 1


def _pragmas(conn: sqlite3.Connection) -> tuple[str, int]:
    return (conn.execute("PRAGMA journal_mode").fetchone()[0],
            conn.execute("PRAGMA synchronous").fetchone()[0])


def test_each_writer_keeps_its_durability(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    reports = ReportStore(tmp_path / "reports.sqlite3")
    publisher = Store(tmp_path / "pub" / "publisher.sqlite3")
    try:
        assert _pragmas(ledger.conn) == ("wal", FULL)      # an ack we sent must survive
        assert _pragmas(reports.conn) == ("wal", FULL)     # a report we accepted too
        assert _pragmas(publisher.db) == ("wal", NORMAL)   # every write is in the next feed
        assert isinstance(ledger.conn.execute("SELECT 1 AS one").fetchone(), sqlite3.Row)
        assert publisher.db.execute("SELECT 1").fetchone() == (1,)   # plain tuples there
    finally:
        ledger.close()
        reports.close()
        publisher.close()


def test_readonly_never_creates_nor_writes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with pytest.raises(sqlite3.OperationalError):
        open_db(path, readonly=True)
    assert not path.exists()
    open_db(path, "CREATE TABLE t (x INTEGER);").close()
    ro = open_readonly(path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.execute("INSERT INTO t VALUES (1)")
    finally:
        ro.close()


@pytest.mark.parametrize("dirname", ["a#b", "a?b", "50%"])
def test_readonly_opens_paths_with_uri_characters(tmp_path: Path, dirname: str) -> None:
    """`safegate report --ledger` on a directory named like this opened the wrong file (or
    none): the read-only URI took '#'/'?' as its own syntax."""
    path = tmp_path / dirname / "ledger.sqlite3"
    open_db(path, "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (7);").close()
    ro = open_db(path, readonly=True)
    try:
        assert ro.execute("SELECT x FROM t").fetchone()[0] == 7
    finally:
        ro.close()
