"""The publisher's database adapter: SQLite by default, PostgreSQL by URL (gateway/publisher/db.py).

Translation rules, publisher.yaml's `database` forms and their errors, and the one property
several publisher processes depend on: writers from different connections never hand out the
same serial (a real PostgreSQL cluster, two connections, two threads).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from gateway.config.gateway import load_config
from gateway.errors import ConfigError, SafeGateError
from gateway.feedformat.document import FeedEntry
from gateway.publisher.config import load_publisher_config
from gateway.publisher.db import redact, to_postgres
from gateway.publisher.store import Store
from tests.support.postgres import PostgresCluster

T = "2026-11-23T10:00:00Z"


def test_translation() -> None:
    assert to_postgres("SELECT a FROM t WHERE b=? AND c LIKE 'x%'") == \
        "SELECT a FROM t WHERE b=%s AND c LIKE 'x%%'"
    assert to_postgres("INSERT OR IGNORE INTO gateways (id) VALUES (?)") == \
        "INSERT INTO gateways (id) VALUES (%s) ON CONFLICT DO NOTHING"
    assert to_postgres("UPDATE g SET s=max(g.s, excluded.s), n=min(a, b)") == \
        "UPDATE g SET s=GREATEST(g.s, excluded.s), n=LEAST(a, b)"
    assert to_postgres("SELECT max(s) FROM g") == "SELECT max(s) FROM g"   # the aggregate
    assert to_postgres("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                       "at REAL, n INTEGER NOT NULL, s TEXT);") == (
        'CREATE TABLE IF NOT EXISTS t (id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION, '
        'n BIGINT NOT NULL, s TEXT COLLATE "C")')
    with pytest.raises(SafeGateError, match="ON CONFLICT"):
        to_postgres("INSERT OR REPLACE INTO t VALUES (?)")
    assert redact("postgresql://u:secret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact("postgresql://u@db/x") == "postgresql://u@db/x"


BASE = "listen: '127.0.0.1:1'\nsigning_key: k\n"


@pytest.mark.parametrize(("text", "want"), [
    ("database: postgresql://u@127.0.0.1:5/p\n", "postgresql://u@127.0.0.1:5/p"),
    ("database: postgres://u@h/p\n", "postgres://u@h/p"),
    ("database:\n  url: postgresql://u@h/p\n", "postgresql://u@h/p"),
])
def test_database_url_forms(tmp_path: Path, text: str, want: str) -> None:
    (tmp_path / "p.yaml").write_text(BASE + text)
    assert load_publisher_config(tmp_path / "p.yaml").database == want


def test_database_file_stays_sqlite(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(BASE + "database: var/p.sqlite3\n")
    assert load_publisher_config(tmp_path / "p.yaml").database == tmp_path / "var/p.sqlite3"


@pytest.mark.parametrize(("text", "line", "problem"), [
    ("database: mysql://u:pw@h/p\n", 3, "only postgresql:// URLs"),
    ("database:\n  url: mysql://u:pw@h/p\n", 4, "must start with postgresql://"),
    ("database:\n  host: h\n", 4, "unknown key 'host'"),
    ("database: {}\n", 3, "needs 'url'"),
])
def test_database_errors_name_file_and_line(tmp_path: Path, text: str, line: int,
                                            problem: str) -> None:
    (tmp_path / "p.yaml").write_text(BASE + text)
    with pytest.raises(ConfigError) as exc:
        load_publisher_config(tmp_path / "p.yaml")
    assert f"p.yaml:{line}" in str(exc.value) and problem in str(exc.value)
    assert "pw" not in str(exc.value)                     # never print a password


def _entry(i: int) -> FeedEntry:
    return FeedEntry(f"E{i}", "domain", f"e{i}.example", ("csam",), "block", False, None, T)


def test_concurrent_writers_never_share_a_serial(postgres: PostgresCluster) -> None:
    """Two publishers (two connections) adding at once: every batch gets its own serial."""
    url = postgres.new_database("serials")
    stores = [Store(url), Store(url)]
    got: list[list[int]] = [[], []]

    def writer(k: int) -> None:
        for i in range(25):
            got[k].append(stores[k].add_entries([_entry(k * 100 + i)]))

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    serials = got[0] + got[1]
    assert sorted(serials) == list(range(1, 51))
    assert stores[0].serial() == 50 and stores[0].count_active() == 50
    for s in stores:
        s.close()


def test_a_lost_connection_costs_no_request(postgres: PostgresCluster) -> None:
    """The database fails over or restarts: the publisher's next statement reconnects."""
    import psycopg

    url = postgres.new_database("reconnect")
    store = Store(url)
    store.add_entries([_entry(1)])

    def cut() -> None:
        with psycopg.connect(url, autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE datname = current_database() AND pid <> "
                                   "pg_backend_pid()").fetchall()
        assert killed == [(True,)]

    cut()
    assert store.add_entries([_entry(2)]) == 2     # a write transaction reconnects
    cut()
    assert store.serial() == 2                     # so does a single statement
    assert store.get_entry("E2") is not None
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_hotline_reports_on_both(tmp_path: Path, request: pytest.FixtureRequest,
                                 backend: str) -> None:
    """The reports table (gateway/publisher/hotline.py) shares the store's connection."""
    from gateway.feedformat.hotline import HotlineReport
    from gateway.publisher.hotline import ReportInbox

    target = (request.getfixturevalue("postgres").new_database("reports")
              if backend == "postgresql" else tmp_path / "p.sqlite3")
    store = Store(target)
    inbox = ReportInbox(store.db)
    report = HotlineReport("6f1c0a3e-0000-4000-8000-000000000001", "mistake",
                           "https://school.example/", "adult", "", "100% wrong?", "", T, "gw-a")
    assert inbox.add(report, 1000.5) is True
    assert inbox.add(report, 1001.0) is False          # delivered twice, stored once
    (row,) = inbox.list()
    assert (row["comment"], row["received_at"]) == ("100% wrong?", 1000.5)
    store.close()


def test_enrolled_identity_in_gateway_yaml(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "enrollment.json").write_text(json.dumps(
        {"gateway": "school-9", "token": "t" * 43}))
    (tmp_path / "g.yaml").write_text("gateway:\n  report_stats: true\n")
    cfg = load_config(tmp_path / "g.yaml")
    assert (cfg.gateway_id, cfg.gateway_token, cfg.report_stats) == ("school-9", "t" * 43, True)
    (tmp_path / "g.yaml").write_text("gateway:\n  id: school-1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "g.yaml")
    assert "g.yaml:2" in str(exc.value) and "enrolled as 'school-9'" in str(exc.value)
    # a token written in gateway.yaml wins over the enrollment
    (tmp_path / "g.yaml").write_text("gateway:\n  id: gw-x\n  token: " + "x" * 20 + "\n")
    assert load_config(tmp_path / "g.yaml").gateway_token == "x" * 20


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_publishers_serve_the_same_serial_documents(
        tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    """Serial-addressed documents (feeds[].by_serial) are cached for a year under their URL,
    so two publishers on one database must build the same bytes for a serial, forced ids
    included: the publication time comes from serial_times, not from the process."""
    from gateway.feedformat.document import parse_feed
    from gateway.feedformat.signing import generate_keys, load_signer
    from gateway.publisher.serialfeed import SerialDocs

    target = (request.getfixturevalue("postgres").new_database("serialdocs")
              if backend == "postgresql" else tmp_path / "p.sqlite3")
    key, _ = generate_keys(tmp_path / "keys")
    first, second = Store(target), Store(target)
    first.add_entries([_entry(1)])
    serial = first.add_entries([_entry(2)], forced=True)
    docs = [SerialDocs(s, load_signer(key), 1000, 1 << 20) for s in (first, second)]
    for since in (None, 1):
        a, b = (d.document(serial, since) for d in docs)
        assert a is not None and b is not None
        assert (a.body, a.signature, a.etag) == (b.body, b.signature, b.etag)
    diff = docs[0].document(serial, 1)
    assert diff is not None and parse_feed(diff.body).forced == ("E2",)
    first.close()
    second.close()


def test_an_entrys_acks_are_found_by_index(tmp_path: Path) -> None:
    """GET /v1/entries/ID reads one entry's acks: with 10,000 gateways there are millions of
    ack rows, and a scan of all of them per request (docs/fleet-scale.md) is not an answer."""
    store = Store(tmp_path / "p.sqlite3")
    plan = " ".join(str(tuple(r)) for r in store.db.execute(
        "EXPLAIN QUERY PLAN SELECT gateway FROM acks WHERE entry_id=?", ("E1",)))
    assert "USING INDEX acks_entry" in plan or "USING COVERING INDEX acks_entry" in plan, plan
    store.close()
