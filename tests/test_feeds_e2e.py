"""The whole loop with real processes: publisher -> two gateways -> acks -> regulator's view.

An entry added at the publisher is blocked by both gateways and acked within 5 s; a publisher
outage does not stop enforcement and acks arrive later; a gateway restarted with no publisher
reachable still enforces; a removal lifts the block; the report matches the ledger.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.feeds import NAME, acked, ede_of, entry, gateway_extra
from tests.support.interposer import ThreadedApp
from tests.support.procs import REPO_ROOT, SafeGateProcess
from tests.support.publisher import (
    ADMIN_TOKEN,
    PublisherProcess,
    start_publisher,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[PublisherProcess]:
    pub = start_publisher(tmp_path / "publisher", gateways=("gw-a", "gw-b"))
    yield pub
    pub.kill()


def start_gateways(pub: PublisherProcess, unbound: ub.UnboundServer,
                   safegate_factory: Any) -> list[SafeGateProcess]:
    return [safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                             lists=LISTS, lists_yaml=LISTS_YAML, extra=gateway_extra(pub, gid))
            for gid in ("gw-a", "gw-b")]


def test_entry_is_blocked_by_both_gateways_and_acked_within_5s(
        publisher: PublisherProcess, unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    gws = start_gateways(publisher, unbound, safegate_factory)
    for gw in gws:
        assert ede_of(gw.dns_port, NAME) is None  # resolves before the order
    r = publisher.request("POST", "/v1/entries", body={"entries": [entry("BCA-2026-0001")]},
                          token=ADMIN_TOKEN)
    assert r.status == 201, r.body
    for gw in gws:
        wait_for(lambda gw=gw: ede_of(gw.dns_port, "www." + NAME) == 16, 5.0,
                 what="blocked with EDE 16 on both gateways")
    for gid in ("gw-a", "gw-b"):
        wait_for(lambda gid=gid: acked(publisher, "BCA-2026-0001", gid),
                 30.0, what=f"{gid} acked the entry as verified")
    metrics = publisher.request("GET", "/metrics").body.decode()
    assert 'safegate_publisher_gateway_applied_serial{gateway="gw-a"} 1.0' in metrics
    assert 'safegate_publisher_gateway_overdue_entries{gateway="gw-b"} 0.0' in metrics
    # The regulator's own measurement, from the acks: issued -> verified within 10 s.
    for gid in ("gw-a", "gw-b"):
        assert (f'safegate_publisher_enforcement_latency_seconds_count{{gateway="{gid}"}} 1.0'
                in metrics)
        assert (f'safegate_publisher_enforcement_latency_seconds_bucket{{gateway="{gid}",'
                f'le="10.0"}} 1.0' in metrics)
    gm = gws[0].metrics_text()
    assert 'safegate_feed_serial{feed="central"} 1.0' in gm
    assert 'safegate_probe_checks_total{result="blocked"}' in gm

    # removal lifts the block everywhere
    r = publisher.request("DELETE", "/v1/entries/BCA-2026-0001", token=ADMIN_TOKEN)
    assert r.status in (200, 204), r.body
    for gw in gws:
        wait_for(lambda gw=gw: ede_of(gw.dns_port, NAME) is None, 5.0, what="block lifted")


def test_publisher_outage_and_gateway_restart_without_publisher(
        tmp_path: Path, publisher: PublisherProcess, unbound: ub.UnboundServer,
        safegate_factory: Any) -> None:
    gw_a, gw_b = start_gateways(publisher, unbound, safegate_factory)
    r = publisher.request("POST", "/v1/entries", body={"entries": [entry("BCA-2026-0002")]},
                          token=ADMIN_TOKEN)
    assert r.status == 201
    for gw in (gw_a, gw_b):
        wait_for(lambda gw=gw: ede_of(gw.dns_port, NAME) == 16, 5.0, what="enforced on both")
    wait_for(lambda: acked(publisher, "BCA-2026-0002", "gw-a"), 5.0, what="first ack")
    publisher.stop()
    # publisher down: both keep enforcing
    assert ede_of(gw_a.dns_port, NAME) == 16 and ede_of(gw_b.dns_port, NAME) == 16
    # a gateway restarted with no publisher reachable enforces its last-known-good copy
    assert gw_b.config is not None
    gw_b.stop()
    restarted = safegate_factory(gw_b.config)
    assert ede_of(restarted.dns_port, NAME) == 16
    # the publisher comes back (same database, same port): acks that waited arrive
    pub2 = start_publisher(publisher.setup.directory)
    try:
        r = pub2.request("POST", "/v1/entries",
                         body={"entries": [entry("BCA-2026-0003", "adult.example")]},
                         token=ADMIN_TOKEN)
        assert r.status == 201
        for gw in (gw_a, restarted):
            # The clients back off exponentially (1 s doubling, +-20 %) while the publisher is
            # down: an outage of ~20 s (slow restarts on a busy machine) leaves a retry up to
            # ~38 s out. Returns as soon as it holds.
            wait_for(lambda gw=gw: ede_of(gw.dns_port, "adult.example") == 16, 90.0,
                     what="new entry after the outage")
        wait_for(lambda: acked(pub2, "BCA-2026-0003", "gw-b"), 90.0, what="ack after the outage")
    finally:
        pub2.kill()


def test_report_matches_the_ledger(publisher: PublisherProcess, unbound: ub.UnboundServer,
                                   safegate_factory: Any) -> None:
    (gw,) = start_gateways(publisher, unbound, safegate_factory)[:1]
    batch = [entry(f"BCA-2026-1{i:03d}", f"e{i}.adult-site.test") for i in range(5)]
    assert publisher.request("POST", "/v1/entries", body={"entries": batch},
                             token=ADMIN_TOKEN).status == 201
    for e in batch:
        wait_for(lambda e=e: ede_of(gw.dns_port, e["value"]) == 16, 5.0, what="batch enforced")
    assert gw.config is not None
    ledger = gw.config.parent / "var" / "ledger.sqlite3"

    def verified() -> int:
        with sqlite3.connect(ledger) as db:
            return int(db.execute("SELECT COUNT(*) FROM entries WHERE verified_at IS NOT NULL"
                                  ).fetchone()[0])

    wait_for(lambda: verified() == 5, 5.0, what="all five verified in the ledger")
    today = time.strftime("%Y-%m-%d")
    out = subprocess.run([sys.executable, "-m", "gateway", "report", "-c", str(gw.config),
                          "--from", today, "--to", today, "--format", "json", "--tz", "UTC"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (section,) = report["sections"]
    with sqlite3.connect(ledger) as db:
        latencies = sorted(r[0] for r in db.execute(
            "SELECT verified_at - issued_at FROM entries WHERE outcome = 'verified'"))
    assert len(latencies) == 5
    assert section["all"]["received"] == 5 and section["mandatory"]["received"] == 5
    # no deadline in these entries: verified means within deadline
    assert section["all"]["within_deadline"] == 5
    assert section["all"]["never"] == section["all"]["late"] == 0
    assert section["latency"]["count"] == 5
    assert section["latency"]["median_s"] == pytest.approx(latencies[2], abs=1e-3)
    assert section["latency"]["p95_s"] == pytest.approx(latencies[4], abs=1e-3)
    assert {e["id"] for e in section["entries"]} == {e["id"] for e in batch}


# ---------------------------------------------------------------------- freshness, size


def gauge(gw: SafeGateProcess, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 when absent, as a counter never touched)."""
    for fam in text_string_to_metric_families(gw.metrics_text()):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


class Relay(ThreadedApp):
    """An HTTP cache between publisher and gateway (aiohttp, in its own thread): it forwards
    the first `forward` requests, then answers 304 Not Modified to everything, as a broken or
    hostile cache may, until `forward` is raised again."""

    def __init__(self, upstream: str, forward: int = 1) -> None:
        super().__init__()
        self.upstream = upstream
        self.forward = forward
        self.requests: list[dict[str, str]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/feed", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        if self.forward <= 0:
            return web.Response(status=304, headers={"ETag": '"1"'})
        self.forward -= 1
        headers = {k: v for k, v in request.headers.items()
                   if k in ("If-None-Match", "Cache-Control", "Pragma")}
        async with aiohttp.ClientSession() as session, session.get(
                self.upstream + request.path_qs, headers=headers) as r:
            body = await r.read()
            keep = {k: v for k, v in r.headers.items()
                    if k in ("SafeGate-Signature", "ETag", "Cache-Control", "X-SafeGate-Full")}
            return web.Response(status=r.status, body=body or None, headers=keep,
                                content_type=None if r.status == 304 else r.content_type)



def test_a_relay_answering_304_forever_makes_the_feed_stale_not_frozen(
        tmp_path: Path, unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    """A cache that answers 304 to every poll must not hold a gateway one serial behind with
    a fresh last_success: past max_age the feed is stale (metric, log), the client asks
    without If-None-Match, and it catches up as soon as the relay passes requests again."""
    pub = start_publisher(tmp_path / "publisher", gateways=("gw-a",), extra={"heartbeat": 1})
    relay = Relay(pub.url).start()
    try:
        assert pub.request("POST", "/v1/entries", body={"entries": [entry("BCA-1")]},
                           token=ADMIN_TOKEN).status == 201
        max_age = 4
        gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                              lists=LISTS, lists_yaml=LISTS_YAML, extra={"feeds": [
                                  {"name": "central", "url": relay.url + "/v1/feed",
                                   "type": "safegate", "public_key": str(pub.setup.public_key),
                                   "interval": 1, "long_poll": 10, "acks": False,
                                   "max_age": max_age}]})
        feed = {"feed": "central"}
        wait_for(lambda: gauge(gw, "safegate_feed_serial", **feed) == 1, 20, what="serial 1")
        assert ede_of(gw.dns_port, NAME) == 16
        assert pub.request("POST", "/v1/entries", body={"entries": [
            entry("BCA-2", "adult.example")]}, token=ADMIN_TOKEN).status == 201

        wait_for(lambda: gauge(gw, "safegate_feed_stale", **feed) == 1, 60, what="stale")
        assert gauge(gw, "safegate_feed_document_age_seconds", **feed) > max_age
        # stale, yet the last-known-good stays enforced and the missed entry is missed
        assert gauge(gw, "safegate_feed_serial", **feed) == 1
        assert ede_of(gw.dns_port, NAME) == 16   # EDE 16 (censored): the feed's block
        assert ede_of(gw.dns_port, "adult.example") != 16   # the local policy's, if any
        # the relay's 304s no longer count as success, and no longer as an answer at all
        last = gauge(gw, "safegate_feed_last_success_timestamp_seconds", **feed)
        seen = gauge(gw, "safegate_feed_rejected_total", reason="not_modified", **feed)
        wait_for(lambda: gauge(gw, "safegate_feed_rejected_total", reason="not_modified",
                               **feed) > seen, 60, what="another 304 from the relay")
        assert gauge(gw, "safegate_feed_last_success_timestamp_seconds", **feed) == last
        unconditional = relay.requests[-1]
        assert "If-None-Match" not in unconditional
        assert unconditional.get("Cache-Control") == "no-cache"
        wait_for(lambda: "STALE" in gw.stderr_text(), 10, what="logged as stale")

        relay.forward = 1_000_000   # the relay passes requests again
        wait_for(lambda: gauge(gw, "safegate_feed_serial", **feed) == 2, 90, what="caught up")
        wait_for(lambda: ede_of(gw.dns_port, "adult.example") == 16, 10, what="new entry enforced")
        wait_for(lambda: gauge(gw, "safegate_feed_stale", **feed) == 0, 30, what="fresh again")
        assert gauge(gw, "safegate_feed_last_success_timestamp_seconds", **feed) > last
        wait_for(lambda: "fresh again" in gw.stderr_text(), 10, what="logged fresh again")
    finally:
        relay.stop()
        pub.kill()


def test_a_feed_document_over_the_size_limit_is_refused_and_the_old_one_stays(
        tmp_path: Path, unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    pub = start_publisher(tmp_path / "publisher", gateways=("gw-a",))
    try:
        assert pub.request("POST", "/v1/entries", body={"entries": [entry("BCA-1")]},
                           token=ADMIN_TOKEN).status == 201
        limit = 4096
        gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                              lists=LISTS, lists_yaml=LISTS_YAML, extra={
                                  "limits": {"files": {"feed_bytes": limit}},
                                  "feeds": [{"name": "central", "url": pub.url + "/v1/feed",
                                             "type": "safegate", "acks": False,
                                             "public_key": str(pub.setup.public_key),
                                             "interval": 1, "long_poll": 10}]})
        feed = {"feed": "central"}
        wait_for(lambda: gauge(gw, "safegate_feed_serial", **feed) == 1, 20, what="serial 1")
        big = [entry(f"BIG-{i}", f"big{i}.example") for i in range(40)]
        r = pub.request("POST", "/v1/entries", body={"entries": big}, token=ADMIN_TOKEN)
        assert r.status == 201
        assert len(pub.request("GET", "/v1/feed?since=1").body) > limit
        wait_for(lambda: gauge(gw, "safegate_feed_rejected_total", reason="too_big",
                               **feed) >= 1, 30, what="the big diff refused")
        assert gauge(gw, "safegate_feed_serial", **feed) == 1
        assert ede_of(gw.dns_port, NAME) == 16
        assert ede_of(gw.dns_port, "big0.example") is None
        wait_for(lambda: "limits.files.feed_bytes" in gw.stderr_text(), 10, what="logged")
    finally:
        pub.kill()
