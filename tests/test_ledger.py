"""Ledger, outbox and hourly stats: durable across restarts, correct under an injected clock."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from gateway.compliance.selfprobe import NetworkProbe, ProbeResult
from gateway.dns.stats import DnsStats
from gateway.feedformat.document import FeedEntry, LegalBasis
from gateway.feeds.acks import AckSender, AckTarget, acks_url, merge
from gateway.feeds.ledger import Ledger
from gateway.feeds.manager import RETRY_DELAYS, Prober, probe_verdict
from gateway.feeds.stats import FeedMetrics, HourlyStats
from gateway.util.outbox import backoff

T0 = 1_795_132_800.0   # 2026-11-20T00:00:00Z
BASIS = LegalBasis("BTTTT", "QD-1", "2026-11-20")


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def entry(eid: str, value: str = "bad.example", *, mandatory: bool = True,
          deadline: str | None = None, issued: str = "2026-11-19T08:00:00Z") -> FeedEntry:
    return FeedEntry(eid, "domain", value, ("csam",), "block", mandatory,
                 BASIS if mandatory else None, issued, deadline)


TARGET = AckTarget("http://127.0.0.1:1/v1/acks", "th-test", "central", report_stats=True)


def test_schema_is_the_contract(tmp_path: Path) -> None:
    Ledger(tmp_path / "l.db").close()
    conn = sqlite3.connect(tmp_path / "l.db")
    cols = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")]
            for t in ("entries", "probes", "outbox", "stats_hourly")}
    assert cols["entries"] == [
        "feed", "entry_id", "type", "value", "categories", "mandatory", "authority", "decision",
        "decision_date", "serial", "issued_at", "deadline", "received_at", "applied_at",
        "verified_at", "removed_at", "outcome", "probe_failures"]
    assert cols["probes"] == ["ts", "feed", "entry_id", "result"]
    assert cols["outbox"] == ["id", "created", "url", "body", "attempts", "next_attempt"]
    assert cols["stats_hourly"] == ["hour", "category", "tier", "queries", "blocked"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_record_survives_restart_and_reapply_keeps_times(tmp_path: Path) -> None:
    clock = Clock()
    led = Ledger(tmp_path / "l.db", clock)
    e1, e2 = entry("E-1"), entry("E-2", "other.example")
    assert led.record("central", 1, [(e1, "applied"), (e2, "refused")], [], T0, T0 + 1,
                      TARGET) == ["E-1", "E-2"]
    led.record_probe("central", "E-1", "blocked", T0 + 2, gave_up=False, ack=TARGET, serial=1)
    led.close()

    clock.t += 100
    led = Ledger(tmp_path / "l.db", clock)
    # a restart re-applying the same entries changes nothing and sends no ack
    assert led.record("central", 1, [(e1, "applied"), (e2, "refused")], [], clock.t, clock.t,
                      TARGET) == []
    row = led.get("central", "E-1")
    assert row is not None
    assert (row.received_at, row.applied_at, row.verified_at, row.outcome) == (
        T0, T0 + 1, T0 + 2, "verified")
    assert led.outbox_pending() == 2   # the apply and the verification, both still queued
    led.record("central", 2, [], ["E-1"], clock.t, clock.t, TARGET)
    row = led.get("central", "E-1")
    assert row is not None and row.outcome == "removed" and row.removed_at == clock.t
    bodies = [json.loads(r[0]) for r in led.conn.execute("SELECT body FROM outbox ORDER BY id")]
    assert [e["outcome"] for e in bodies[-1]["entries"]] == ["removed"]
    assert bodies[0]["entries"][1] == {"id": "E-2", "received_at": "2026-11-20T00:00:00Z",
                                       "applied_at": None, "verified_at": None,
                                       "outcome": "refused"}
    led.close()


def test_overdue_counts_unverified_mandatory_entries_past_deadline(tmp_path: Path) -> None:
    clock = Clock()
    led = Ledger(tmp_path / "l.db", clock)
    issued = "2026-11-19T08:00:00Z"   # = T0 - 16 h
    led.record("f", 1, [
        (entry("A", deadline="2026-11-19T12:00:00Z"), "applied"),     # deadline passed
        (entry("B", "b.example", deadline="2026-11-21T00:00:00Z"), "applied"),   # not yet
        (entry("C", "c.example", issued=issued), "applied"),           # issued + 24 h
        (entry("D", "d.example", mandatory=False, deadline="2026-11-19T12:00:00Z"), "applied"),
        (entry("E", "e.example", deadline="2026-11-19T12:00:00Z"), "refused"),
    ], [], T0, T0, None)
    assert led.overdue("f", T0) == 1
    led.record_probe("f", "A", "blocked", T0, gave_up=False, ack=None, serial=1)
    assert led.overdue("f", T0) == 0
    assert led.overdue("f", T0 + 86400) == 1            # C: past issued_at + 24 h
    assert led.overdue("f", T0 + 3 * 86400) == 2        # and B past its deadline
    led.close()


def test_probe_failures_then_failed_then_recovery(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db")
    led.record("f", 1, [(entry("A"), "applied")], [], T0, T0, TARGET)
    assert led.record_probe("f", "A", "not_blocked", T0, gave_up=False, ack=TARGET,
                            serial=1) == (None, None)
    assert led.record_probe("f", "A", "error", T0, gave_up=True, ack=TARGET,
                            serial=1) == ("failed", None)
    new, latency = led.record_probe("f", "A", "blocked", T0 + 5, gave_up=False, ack=TARGET,
                                    serial=1)
    issued = entry("A").issued_at
    assert new == "verified" and latency is not None and latency > 0
    row = led.get("f", "A")
    assert row is not None and row.probe_failures == 2 and row.verified_at == T0 + 5
    assert issued and led.probe_counts() == {"blocked": 1, "not_blocked": 1, "error": 1}
    led.close()


def test_backoff_doubles_to_five_minutes_with_jitter() -> None:
    rng = random.Random(1)
    for attempt, base in [(0, 1), (1, 2), (3, 8), (8, 256), (9, 300), (30, 300)]:
        for _ in range(50):
            assert 0.8 * base <= backoff(attempt, rng) <= 1.2 * base


def test_probe_schedule_and_verdicts(tmp_path: Path) -> None:
    p = Prober.__new__(Prober)
    p.retry_delays, p.recheck = RETRY_DELAYS, 300.0
    delays = [p.next_delay(i) for i in range(11)]
    assert [d for d, _ in delays[:4]] == [0.2, 0.5, 1.0, 2.0]
    assert [g for _, g in delays].index(True) == 9   # the 10th try gives up
    assert delays[10] == (300.0, True)
    led = Ledger(tmp_path / "l.db")
    led.record("f", 1, [(entry("A"), "applied")], [], T0, T0, None)
    row = led.get("f", "A")
    assert row is not None
    both = ProbeResult("bad.example", (NetworkProbe("a", "127.0.0.1", 0, 16, True),
                                       NetworkProbe("b", "::1", 0, None, False)))
    assert probe_verdict(both, row, None) == "not_blocked"
    assert probe_verdict(ProbeResult("x"), row, None) == "error"
    led.close()


def test_hourly_stats_deltas_and_restart(tmp_path: Path) -> None:
    clock = Clock(3600 * 500_000 + 10)
    led = Ledger(tmp_path / "l.db", clock)
    dns = DnsStats()
    closed: list[int] = []
    hs = HourlyStats(dns, led, clock, closed.append)
    for _ in range(3):
        dns.count("cached", "", "thcs", "udp", 0.001)
    dns.count("blocked", "adult", "thcs", "udp", 0.001)
    dns.count("blocked", "adult", "thcs", "probe", 0.001)   # self-probes are not traffic
    dns.count("refused", "", "", "udp", 0.001)               # no tier: not a school's query
    assert not hs.tick()
    clock.t += 3600
    assert hs.tick() and closed == [3600 * 500_000]
    assert led.stats_for(closed[0]) == [
        {"hour": "2027-01-15T08:00:00Z", "category": "adult", "tier": "thcs", "queries": 1,
         "blocked": 1},
        {"hour": "2027-01-15T08:00:00Z", "category": "none", "tier": "thcs", "queries": 3,
         "blocked": 0}]
    dns.count("blocked", "adult", "thcs", "udp", 0.001)
    hs.flush()                           # stop mid-hour
    led.close()
    led = Ledger(tmp_path / "l.db", clock)
    dns2 = DnsStats()                    # a new process counts from zero
    hs2 = HourlyStats(dns2, led, clock)
    dns2.count("blocked", "adult", "thcs", "udp", 0.001)
    hs2.flush()
    rows = led.stats_for(hs2.hour)
    assert rows == [{"hour": "2027-01-15T09:00:00Z", "category": "adult", "tier": "thcs",
                     "queries": 2, "blocked": 2}]
    led.enqueue_stats(hs2.hour, [(TARGET, 7)])
    body = json.loads(led.conn.execute("SELECT body FROM outbox").fetchone()[0])
    assert body["stats"] == rows and body["serial"] == 7 and body["entries"] == []
    assert "client" not in json.dumps(body)
    led.close()


def test_merge_keeps_newest_state() -> None:
    a = {"gateway": "g", "feed": "f", "serial": 1,
         "entries": [{"id": "A", "outcome": "applied"}], "stats": []}
    b = {"gateway": "g", "feed": "f", "serial": 2,
         "entries": [{"id": "A", "outcome": "verified"}, {"id": "B", "outcome": "applied"}],
         "stats": [{"hour": "h", "category": "c", "tier": "t", "queries": 1, "blocked": 0}]}
    m = merge([a, b])
    assert m["serial"] == 2 and [e["outcome"] for e in m["entries"]] == ["verified", "applied"]
    assert acks_url("https://feeds.example.vn:8443/v1/feed?x=1") == \
        "https://feeds.example.vn:8443/v1/acks"


class AckServer:
    def __init__(self) -> None:
        self.status = 503
        self.received: list[dict[str, Any]] = []
        self.auth: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization", ""))
        body = await request.json()
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        self.received.append(body)
        return web.json_response({"ok": True})


@pytest.fixture
async def ack_server() -> AsyncIterator[tuple[AckServer, str]]:
    srv = AckServer()
    app = web.Application()
    app.router.add_post("/v1/acks", srv.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield srv, str(server.make_url("/v1/acks"))
    await server.close()


async def test_outbox_survives_outage_and_restart(tmp_path: Path,
                                                  ack_server: tuple[AckServer, str]) -> None:
    srv, url = ack_server
    target = AckTarget(url, "th-test", "central")
    clock = Clock()
    led = Ledger(tmp_path / "l.db", clock)
    led.record("central", 1, [(entry("A"), "applied")], [], T0, T0, target)
    led.record("central", 2, [(entry("B", "b.example"), "applied")], [], T0, T0, target)
    led.record("other", 5, [(entry("Z"), "applied")], [], T0, T0,
               AckTarget(url, "th-test", "other"))
    async with aiohttp.ClientSession() as session:
        sender = AckSender(led, target, "tok", session,
                           FeedMetrics(CollectorRegistry()).outbox_pending, clock,
                           rng=random.Random(0))
        assert not await sender.send_once()          # publisher down: kept, retry scheduled
        rows = led.conn.execute("SELECT attempts, next_attempt FROM outbox ORDER BY id").fetchall()
        assert [r[0] for r in rows] == [1, 1, 0]
        assert 0.8 <= rows[0][1] - T0 <= 1.2
    led.close()                                      # the gateway restarts

    led = Ledger(tmp_path / "l.db", clock)
    assert led.outbox_pending() == 3
    srv.status = 200
    async with aiohttp.ClientSession() as session:
        sender = AckSender(led, target, "tok", session,
                           FeedMetrics(CollectorRegistry()).outbox_pending, clock)
        assert await sender.send_once()
    assert srv.auth[-1] == "Bearer tok"
    assert len(srv.received) == 1                    # both pending acks of the feed in one POST
    ack = srv.received[0]
    assert ack["serial"] == 2 and [e["id"] for e in ack["entries"]] == ["A", "B"]
    assert ack["sent_at"].endswith("Z") and set(ack["probes"]) == {"blocked", "not_blocked",
                                                                    "error"}
    assert led.outbox_pending() == 1                 # the other feed's ack is its own sender's
    led.close()


def test_acks_go_next_to_a_v1_feed_path() -> None:
    """A province serves the national feed at /v1/national/feed and takes its acks next to it
    (docs/national-layout.md); other feed URLs keep the origin's /v1/acks."""
    assert acks_url("http://p.example:8443/v1/national/feed?x=1") == \
        "http://p.example:8443/v1/national/acks"
    assert acks_url("http://p.example/v1/feed") == "http://p.example/v1/acks"
    assert acks_url("http://p.example/feeds/central.json") == "http://p.example/v1/acks"
