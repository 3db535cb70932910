"""The feed through an ordinary HTTP cache: Debian's nginx in front of a real publisher process.

Gateways (the real feed client, ledger and ack outbox: bench/fleetsim.py) fetch by serial
through nginx: the publisher answers each immutable document once, not once per gateway;
waiting gateways are woken through the cache; a body tampered with in nginx's cache is caught
by the signature, the rules in force stay, and the next poll goes around the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import re
import sqlite3
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import dns.edns
import dns.message
import dns.query
import pytest
from prometheus_client import CollectorRegistry

from bench.fleetsim import FEED, SimGateway, gateway_id, gateway_token, sessions
from gateway.feeds.context import Rejected
from gateway.feeds.stats import FeedMetrics
from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.feeds import NAME, acked, entry
from tests.support.nginx_cache import CachingNginx, start_caching_nginx
from tests.support.publisher import PublisherProcess, start_publisher
from tests.support.wait import async_wait_for, wait_for

pytestmark = pytest.mark.integration

GATEWAYS = 20


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[PublisherProcess]:
    gws = [{"id": gateway_id(n), "token": gateway_token(n)} for n in range(GATEWAYS + 1)]
    pub = start_publisher(tmp_path / "pub", extra={"gateways": gws})
    try:
        yield pub
    finally:
        pub.kill()


@pytest.fixture
def nginx(tmp_path: Path, publisher: PublisherProcess) -> Iterator[CachingNginx]:
    proxy = start_caching_nginx(tmp_path / "nginx", publisher.url.removeprefix("http://"))
    try:
        yield proxy
    finally:
        proxy.stop()


def publish(pub: PublisherProcess, rid: str, value: str) -> int:
    r = pub.request("POST", "/v1/entries", body={"entries": [entry(rid, value)]},
                    token=pub.setup.admin_token)
    assert r.status == 201, r.body
    return int(r.json()["serial"])


def doc_requests(pub: PublisherProcess) -> dict[str, float]:
    """safegate_publisher_feed_requests_total by kind (answered 200) from the publisher."""
    text = pub.request("GET", "/metrics").body.decode()
    out: dict[str, float] = {}
    for kind, value in re.findall(r'safegate_publisher_feed_requests_total\{kind="(\w+)",'
                                  r'status="200"\} (\S+)', text):
        out[kind] = float(value)
    return out


def verified_by(pub: PublisherProcess, rid: str) -> int:
    r = pub.request("GET", f"/v1/entries/{rid}")
    return sum(1 for g in r.json()["gateways"] if g["verified_at"]) if r.status == 200 else 0


class Fleet:
    def __init__(self, url: str, public_key: Path, state: Path, count: int) -> None:
        self.feed_session, self.ack_session = sessions(count)
        self.metrics = FeedMetrics(CollectorRegistry())
        self.gateways = [SimGateway(n, url, public_key, state / gateway_id(n),
                                    self.feed_session, self.ack_session, self.metrics,
                                    long_poll=20) for n in range(count)]

    def at(self, serial: int) -> bool:
        return all(g.client.serial == serial for g in self.gateways)

    async def close(self) -> None:
        for g in self.gateways:
            await g.stop()
        await self.feed_session.close()
        await self.ack_session.close()


@pytest.fixture
async def fleet(tmp_path: Path, publisher: PublisherProcess, nginx: CachingNginx
                ) -> AsyncIterator[Fleet]:
    f = Fleet(nginx.url + "/v1/feed", publisher.setup.public_key, tmp_path / "gw", GATEWAYS)
    try:
        yield f
    finally:
        await f.close()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def _get_once(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET that does not follow redirects."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_documents_are_immutable_serial_addressed_and_the_head_short_lived(
        publisher: PublisherProcess, nginx: CachingNginx) -> None:
    serial = publish(publisher, "C-1", "one.example")
    status, headers, body = _get(f"{nginx.url}/v1/feed/snapshot/{serial}")
    assert status == 200
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    etag = headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)      # strong: no W/
    assert "SafeGate-Signature" in headers
    # The same bytes again (from the cache), and a 304 for the ETag.
    status2, headers2, body2 = _get(f"{nginx.url}/v1/feed/snapshot/{serial}")
    assert (status2, body2, headers2["X-Cache-Status"]) == (200, body, "HIT")
    assert _get(f"{nginx.url}/v1/feed/snapshot/{serial}", {"If-None-Match": etag})[0] == 304
    # Built again by the publisher itself: byte for byte the same document and signature.
    direct = _get(f"{publisher.url}/v1/feed/snapshot/{serial}")
    assert direct[2] == body and direct[1]["SafeGate-Signature"] == headers[
        "SafeGate-Signature"]
    head = _get(f"{nginx.url}/v1/feed/head")
    assert head[0] == 200 and head[1]["Cache-Control"] == "public, max-age=1"
    # A document of a serial the feed moved past redirects to the current one, briefly
    # cacheable; a serial the feed never reached is not found (and not cached).
    serial2 = publish(publisher, "C-2", "two.example")
    moved = _get_once(nginx.port, f"/v1/feed/diff/0/{serial2 - 1}")
    assert moved[0] == 302 and moved[1]["Location"] == str(serial2)
    assert moved[1]["Cache-Control"] == "public, max-age=1"
    followed = _get(f"{nginx.url}/v1/feed/diff/0/{serial2 - 1}")
    assert followed[0] == 200 and b'"serial":%d' % serial2 in followed[2]
    gone = _get(f"{nginx.url}/v1/feed/snapshot/{serial2 + 1}")
    assert gone[0] == 404 and gone[1]["Cache-Control"] == "no-store"
    assert _get(f"{nginx.url}/v1/feed/diff/{serial}/{serial2}")[0] == 200
    # The legacy endpoint keeps working, uncached.
    legacy = _get(f"{nginx.url}/v1/feed")
    assert legacy[0] == 200 and legacy[1]["Cache-Control"] == "no-cache"


async def test_fleet_behind_nginx_costs_the_publisher_per_serial_not_per_gateway(
        publisher: PublisherProcess, nginx: CachingNginx, fleet: Fleet) -> None:
    first = await asyncio.to_thread(publish, publisher, "C-1", "one.example")
    for g in fleet.gateways:
        g.start()
    await async_wait_for(lambda: fleet.at(first), 60, what="every gateway at the first serial")
    before = await asyncio.to_thread(doc_requests, publisher)
    # Every gateway now waits on head?after=first through nginx; publish twice.
    second = await asyncio.to_thread(publish, publisher, "C-2", "two.example")
    await async_wait_for(lambda: fleet.at(second), 60, what="every gateway woken to serial 2")
    third = await asyncio.to_thread(publish, publisher, "C-3", "three.example")
    await async_wait_for(lambda: fleet.at(third), 60, what="every gateway woken to serial 3")
    for rid in ("C-1", "C-2", "C-3"):
        await async_wait_for(lambda rid=rid: asyncio.to_thread(verified_by, publisher, rid),
                             60, what=f"{rid} verified")
        n = await async_wait_for(
            lambda rid=rid: asyncio.to_thread(lambda: verified_by(publisher, rid) == GATEWAYS),
            60, what=f"{rid} acked verified by every gateway")
        assert n
    after = await asyncio.to_thread(doc_requests, publisher)
    got = {k: after.get(k, 0) - before.get(k, 0) for k in ("snapshot", "diff", "head")}
    # Two serials: the publisher built and sent each diff about once, whatever the fleet size
    # (a gateway that lagged a serial may ask one more diff); never once per gateway.
    assert got["snapshot"] == 0
    assert 2 <= got["diff"] <= 4, got
    # Waiting gateways were woken through the cache: their long polls were coalesced.
    assert got["head"] < GATEWAYS, got
    assert after.get("snapshot", 0) == 1   # the one first download, shared by all 20
    served = [f for f in nginx.log_lines() if f[1].startswith("/v1/feed/diff/")]
    assert len([f for f in served if f[2] == "200"]) >= 2 * GATEWAYS


def _cache_file(nginx: CachingNginx, uri: str) -> Path:
    key = hashlib.md5(uri.encode()).hexdigest()
    return nginx.directory / "cache" / key[-1] / key[-3:-1] / key


async def test_tampered_cache_entry_is_rejected_and_the_rules_in_force_stay(
        tmp_path: Path, publisher: PublisherProcess, nginx: CachingNginx) -> None:
    first = await asyncio.to_thread(publish, publisher, "T-1", "kept.example")
    feed_session, ack_session = sessions(1)
    metrics = FeedMetrics(CollectorRegistry())
    url = nginx.url + "/v1/feed"

    def gateway() -> SimGateway:
        return SimGateway(GATEWAYS, url, publisher.setup.public_key, tmp_path / "gw-t",
                          feed_session, ack_session, metrics, long_poll=0)

    try:
        g = gateway()
        g.client.load_local()
        assert await g.client.poll_once() == "updated" and g.client.serial == first
        await g.stop()
        second = await asyncio.to_thread(publish, publisher, "T-2", "new.example")
        uri = f"/v1/feed/diff/{first}/{second}"
        assert (await asyncio.to_thread(_get, nginx.url + uri))[0] == 200   # now cached
        path = _cache_file(nginx, uri)
        # nginx may finish writing its cache file just after the answer went out
        await async_wait_for(path.exists, 20, what=f"nginx cached {uri} in {path}")
        raw = path.read_bytes()
        assert raw.count(b"new.example") == 1
        path.write_bytes(raw.replace(b"new.example", b"bad.example"))   # same length
        # The gateway restarts from its last-known-good copy and meets the poisoned cache.
        g = gateway()
        g.client.load_local()
        with pytest.raises(Rejected) as caught:
            await g.client.poll_once()
        assert caught.value.reason == "bad_signature"
        assert g.client.serial == first
        assert g.overlay is not None and g.overlay.match(b"kept.example")
        assert not g.overlay.match(b"bad.example")
        assert _sample(metrics, "safegate_feed_rejected_total", feed=FEED,
                       reason="bad_signature") == 1
        # The next poll goes around the cache (the publisher's own, uncached answer).
        assert await g.client.poll_once() == "updated"
        assert g.client.serial == second
        assert g.overlay.match(b"new.example") and not g.overlay.match(b"bad.example")
        # ...and the one after is by serial again (a head through nginx).
        assert g.client.part.by_serial is not None and not g.client.part.by_serial.bypass
        await g.stop()
    finally:
        await feed_session.close()
        await ack_session.close()


def _sample(metrics: FeedMetrics, name: str, **labels: Any) -> float:
    for metric in metrics.rejected.collect():
        for s in metric.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


async def test_a_serial_the_feed_never_reached_is_not_found(
        tmp_path: Path, publisher: PublisherProcess) -> None:
    async with aiohttp.ClientSession() as session:
        serial = await asyncio.to_thread(publish, publisher, "G-1", "g1.example")
        async with session.get(f"{publisher.url}/v1/feed/snapshot/{serial + 5}") as resp:
            assert resp.status == 404
            assert resp.headers["Cache-Control"] == "no-store"


async def test_the_head_vouches_for_a_document_published_long_ago(
        tmp_path: Path, publisher: PublisherProcess, nginx: CachingNginx) -> None:
    """An immutable document keeps its serial's publication time; the signed head (fetched
    through the cache) is what says the copy is still the latest, so a quiet feed stays fresh."""
    serial = await asyncio.to_thread(publish, publisher, "Q-1", "quiet.example")
    db = sqlite3.connect(publisher.setup.directory / "var" / "publisher.sqlite3")
    with db:   # published months ago (max_age is one day); nothing fetched it yet
        db.execute("UPDATE serial_times SET at='2026-01-01T00:00:00Z' WHERE serial=?",
                   (serial,))
    db.close()
    feed_session, ack_session = sessions(1)
    try:
        g = SimGateway(GATEWAYS, nginx.url + "/v1/feed", publisher.setup.public_key,
                       tmp_path / "gw-q", feed_session, ack_session,
                       FeedMetrics(CollectorRegistry()), long_poll=0)
        g.client.load_local()
        assert await g.client.poll_once() == "updated"
        body = _get(f"{nginx.url}/v1/feed/snapshot/{serial}")[2]
        assert b'"generated_at":"2026-01-01T00:00:00Z"' in body
        assert g.client.document_age() < 3600 and g.client.check_fresh()
        assert await g.client.poll_once() == "unchanged"   # long_poll 0: the interval
        assert g.client.document_age() < 3600
        await g.stop()
    finally:
        await feed_session.close()
        await ack_session.close()


def test_a_real_gateway_follows_the_feed_by_serial_through_nginx(
        publisher: PublisherProcess, nginx: CachingNginx, unbound: ub.UnboundServer,
        safegate_factory: Any) -> None:
    """`python -m gateway run` with feeds[].by_serial behind nginx: blocked, verified, acked;
    a removal lifts the block; the documents came from the serial-addressed URLs."""
    extra = {"gateway": {"id": gateway_id(0), "token": gateway_token(0)},
             "feeds": [{"name": "central", "url": nginx.url + "/v1/feed", "type": "safegate",
                        "public_key": str(publisher.setup.public_key), "long_poll": 20,
                        "by_serial": True}]}
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML, extra=extra)
    assert _ede(gw.dns_port, NAME) is None
    publish(publisher, "BS-1", NAME)
    wait_for(lambda: _ede(gw.dns_port, "www." + NAME) == 16, 20, what="blocked with EDE 16")
    wait_for(lambda: acked(publisher, "BS-1", gateway_id(0)), 30, what="acked verified")
    r = publisher.request("DELETE", "/v1/entries/BS-1", token=publisher.setup.admin_token)
    assert r.status == 200, r.body
    wait_for(lambda: _ede(gw.dns_port, NAME) is None, 20, what="block lifted")
    kinds = {f[1].split("/")[3] for f in nginx.log_lines()
             if f[2] == "200" and f[1].startswith("/v1/feed/")}
    assert kinds == {"head", "snapshot", "diff"}, kinds
    assert not [f for f in nginx.log_lines() if f[1] == "/v1/feed"]   # never the legacy URL


def _ede(port: int, name: str) -> int | None:
    q = dns.message.make_query(name, "A", use_edns=0)
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=2)
    codes = [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)]
    return codes[0] if codes else None


def test_distinct_document_urls_cannot_grow_the_publishers_document_cache(
        tmp_path: Path) -> None:
    """limits.document_cache_bytes bounds the signed documents the publisher keeps built,
    whatever URLs a client asks for (every diff base is a distinct document)."""
    limit = 1500
    gws = [{"id": gateway_id(0), "token": gateway_token(0)}]
    pub = start_publisher(tmp_path / "pub", extra={
        "gateways": gws, "limits": {"document_cache_bytes": limit}})
    try:
        last = 0
        for i in range(8):
            last = publish(pub, f"L-{i}", f"l{i}.example")
        sizes = []
        for since in range(last):
            r = pub.request("GET", f"/v1/feed/diff/{since}/{last}")
            assert r.status == 200
            sizes.append(len(r.body))
        kept = _gauge(pub, "safegate_publisher_document_cache_bytes")
        assert sum(sizes) > limit      # the client asked for more than the bound
        assert 0 < kept <= limit or kept == sizes[-1], (kept, sizes)
    finally:
        pub.kill()


def _gauge(pub: PublisherProcess, name: str) -> float:
    for line in pub.request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_the_publishers_listen_backlog_is_the_configured_one(tmp_path: Path) -> None:
    """limits.listen_backlog reaches listen(): ss shows it as the listening socket's Send-Q."""
    pub = start_publisher(tmp_path / "pub", extra={
        "gateways": [{"id": gateway_id(0), "token": gateway_token(0)}],
        "limits": {"listen_backlog": 77}})
    try:
        port = pub.url.rsplit(":", 1)[1]
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                             text=True, check=True).stdout.split()
        assert out[2] == "77", out   # State Recv-Q Send-Q(backlog) Local Peer
    finally:
        pub.kill()
