"""The gateway's feed client against a tiny loopback publisher serving crafted documents.

Every bad document must be rejected with its reason while the list already in force keeps
being enforced, which is checked with self-probes through the live query path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from gateway.cli.feeds import confirm, status
from gateway.config.gateway import load_config
from gateway.feedformat.document import Feed, FeedEntry, LegalBasis, now_iso
from gateway.feedformat.signing import SIGNATURE_HEADER, Signer, generate_keys, load_signer
from gateway.feeds.context import Rejected
from gateway.feeds.ledger import LedgerEntry
from gateway.feeds.manager import FeedManager
from gateway.feeds.signed import looks_truncated
from gateway.runtime.app import Gateway
from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.procs import write_gateway_config
from tests.support.wait import async_wait_for

pytestmark = pytest.mark.integration

ISSUED = "2026-11-20T08:00:00Z"
BASIS = LegalBasis("BTTTT", "QD-1/2026", "2026-11-20")


def entry(eid: str, value: str, *, mandatory: bool = True, etype: str = "domain",
          categories: tuple[str, ...] = ("csam",), action: str = "block") -> FeedEntry:
    return FeedEntry(eid, etype, value, categories, action, mandatory,
                 BASIS if mandatory else None, ISSUED, None)


def doc(serial: int, entries: list[FeedEntry], since: int | None = None,
        removed: tuple[str, ...] = (), generated_at: str | None = None) -> bytes:
    """Signed now unless told otherwise (an old document makes the feed stale: max_age)."""
    return Feed(serial, generated_at or now_iso(), tuple(entries), removed, since).to_bytes()


@dataclass
class Publisher:
    """GET /v1/feed answers with whatever `reply` returns; requests are recorded."""

    reply: Callable[[web.Request], web.StreamResponse | Any] = lambda r: web.Response(status=503)
    requests: list[dict[str, Any]] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1/feed"))

    async def _feed(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"query": dict(request.query), "headers": dict(request.headers)})
        out = self.reply(request)
        if asyncio.iscoroutine(out):
            out = await out
        assert isinstance(out, web.StreamResponse)
        return out

    async def _acks(self, request: web.Request) -> web.Response:
        self.acks.append(await request.json())
        return web.json_response({"ok": True})

    def serve(self, body: bytes, signer: Signer | None, headers: dict[str, str] | None = None
              ) -> None:
        hdrs = dict(headers or {})
        if signer is not None:
            hdrs[SIGNATURE_HEADER] = signer.sign(body)
        self.reply = lambda r: web.Response(body=body, headers=hdrs,
                                            content_type="application/json")


@pytest.fixture
async def publisher() -> AsyncIterator[Publisher]:
    pub = Publisher()
    app = web.Application()
    app.router.add_get("/v1/feed", pub._feed)
    app.router.add_post("/v1/acks", pub._acks)
    pub.server = TestServer(app, host="127.0.0.1")
    await pub.server.start_server()
    yield pub
    await pub.server.close()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Signer, Path, Signer]:
    """(signer, its public key file, a signer the gateway does not trust)."""
    key, pub = generate_keys(tmp_path / "keys")
    other, _ = generate_keys(tmp_path / "keys", "other")
    return load_signer(key), pub, load_signer(other)


def feed_config(directory: Path, upstream_port: int, feeds: list[dict[str, Any]],
                **extra: Any) -> Path:
    return write_gateway_config(directory, upstream_port=upstream_port,
                                policies={"p.yaml": POLICY}, lists=LISTS, lists_yaml=LISTS_YAML,
                                extra={"feeds": feeds, **extra})


@pytest.fixture
async def gateway(tmp_path: Path, unbound: ub.UnboundServer) -> AsyncIterator[Gateway]:
    """A running gateway without feeds; tests attach a FeedManager and drive it by hand."""
    cfg = write_gateway_config(tmp_path / "gw", upstream_port=unbound.port,
                               policies={"p.yaml": POLICY}, lists=LISTS, lists_yaml=LISTS_YAML)
    gw = Gateway(cfg)
    await gw.start()
    yield gw
    await gw.stop()


async def manager_for(gw: Gateway, cfg_path: Path) -> FeedManager:
    m = FeedManager(load_config(cfg_path), gw, CollectorRegistry(), gw.metrics.dns)
    await m.start(background=False)
    return m


def sample(m: FeedManager, name: str, **labels: str) -> float:
    for metric in (m.metrics.rejected, m.metrics.refused, m.metrics.held, m.metrics.serial,
                   m.metrics.held_entries,
                   m.metrics.probes):
        for fam in metric.collect():
            for s in fam.samples:
                if s.name == name and s.labels == labels:
                    return s.value
    raise KeyError(name)


async def blocked(gw: Gateway, name: str) -> bool:
    return (await gw.probe(name)).blocked


def verified_row(feeds: FeedManager, eid: str) -> LedgerEntry | None:
    """The ledger row of feed "central"'s entry `eid` once it is verified, else None."""
    row = feeds.ledger.get("central", eid)
    return row if row is not None and row.verified_at is not None else None


def feed_item(url: str, pub: Path, **kw: Any) -> dict[str, Any]:
    return {"name": "central", "url": url, "type": "safegate", "public_key": str(pub),
            "interval": 60, "long_poll": 0, "acks": False, **kw}


async def test_bad_documents_are_rejected_and_the_previous_list_stays(
        tmp_path: Path, unbound: ub.UnboundServer, gateway: Gateway, publisher: Publisher,
        keys: tuple[Signer, Path, Signer]) -> None:
    signer, pub, stranger = keys
    cfg = feed_config(tmp_path / "feeds", unbound.port, [feed_item(publisher.url, pub)])
    m = await manager_for(gateway, cfg)
    client = m.clients["central"]
    try:
        good = doc(1, [entry("E-1", "malware.example")])
        publisher.serve(good, signer)
        assert await client.poll_once() == "updated"
        assert await blocked(gateway, "www.malware.example")
        assert publisher.requests[-1]["query"] == {}  # first fetch: a full snapshot

        newer = doc(2, [entry("E-1", "malware.example"), entry("E-2", "phish.example")])
        older = doc(0, [entry("E-9", "phish.example")])
        replay = doc(1, [entry("E-9", "phish.example")])
        cut = newer[: len(newer) // 2]

        async def short_body(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={SIGNATURE_HEADER: signer.sign(newer)})
            resp.content_length = len(newer)
            await resp.prepare(request)
            await resp.write(newer[:100])
            assert request.transport is not None
            request.transport.close()
            return resp

        cases: list[tuple[str, Callable[[], None]]] = [
            ("bad_signature", lambda: publisher.serve(newer.replace(b"phish", b"phizh"), None,
                                                      {SIGNATURE_HEADER: signer.sign(newer)})),
            ("truncated", lambda: publisher.serve(cut, None,
                                                  {SIGNATURE_HEADER: signer.sign(newer)})),
            ("truncated", lambda: setattr(publisher, "reply", short_body)),
            ("unsigned", lambda: publisher.serve(newer, None)),
            ("bad_signature", lambda: publisher.serve(newer, stranger)),
            ("malformed", lambda: publisher.serve(b'{"version": 1, "serial": "x"}', signer)),
            ("old_serial", lambda: publisher.serve(older, signer)),
            ("old_serial", lambda: publisher.serve(replay, signer)),
            ("http", lambda: setattr(publisher, "reply", lambda r: web.Response(status=500))),
        ]
        for reason, arrange in cases:
            arrange()
            with pytest.raises(Rejected) as info:
                await client.poll_once()
            assert info.value.reason == reason, (reason, str(info.value))
            assert client.serial == 1
            assert await blocked(gateway, "malware.example"), reason
            assert not await blocked(gateway, "phish.example"), reason
        assert sample(m, "safegate_feed_rejected_total", feed="central",
                      reason="bad_signature") == 2
        assert sample(m, "safegate_feed_rejected_total", feed="central", reason="truncated") == 2
        assert sample(m, "safegate_feed_rejected_total", feed="central", reason="old_serial") == 2

        # The same document again is fine (no-op); then the good update applies.
        publisher.serve(good, signer)
        assert await client.poll_once() == "unchanged"
        publisher.serve(newer, signer)
        assert await client.poll_once() == "updated"
        assert await blocked(gateway, "phish.example")
    finally:
        await m.stop()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


async def test_document_age_max_age_and_what_a_304_is_worth(
        tmp_path: Path, unbound: ub.UnboundServer, gateway: Gateway, publisher: Publisher,
        keys: tuple[Signer, Path, Signer]) -> None:
    """The age is the signed generated_at of the newest verified document: an old one makes
    the feed stale at once (last_success stays 0), past max_age / 2 the client asks without
    If-None-Match and refuses a 304; a re-signed copy (heartbeat) makes it fresh, is stored,
    and counts again after a restart; then 304s to conditional polls are success again."""
    signer, pub, _ = keys
    cfg = feed_config(tmp_path / "feeds", unbound.port,
                      [feed_item(publisher.url, pub, max_age=3600)])
    entries = [entry("E-1", "malware.example")]
    old = doc(1, entries, generated_at=_iso(time.time() - 10 * 3600))
    m = await manager_for(gateway, cfg)
    client = m.clients["central"]

    def metric(name: str) -> float:
        for fam in (m.metrics.document_age, m.metrics.stale, m.metrics.last_success):
            for smp in next(iter(fam.collect())).samples:
                if smp.name == name and smp.labels == {"feed": "central"}:
                    return float(smp.value)
        return 0.0   # last_success before the first success: no sample

    try:
        assert metric("safegate_feed_document_age_seconds") == float("inf")
        assert metric("safegate_feed_stale") == 1
        publisher.serve(old, signer)
        assert await client.poll_once() == "updated"   # applied: blocks are never refused
        assert await blocked(gateway, "malware.example")
        assert 10 * 3600 <= metric("safegate_feed_document_age_seconds") < 10 * 3600 + 60
        assert metric("safegate_feed_stale") == 1
        assert metric("safegate_feed_last_success_timestamp_seconds") == 0
        assert client.check_fresh() is False

        # old: the next poll is unconditional; a 304 to it, or the same old copy, is refused
        publisher.reply = lambda r: web.Response(status=304)
        with pytest.raises(Rejected) as info:
            await client.poll_once()
        assert info.value.reason == "not_modified"
        asked = publisher.requests[-1]
        assert asked["query"] == {} and "If-None-Match" not in asked["headers"]
        assert asked["headers"]["Cache-Control"] == "no-cache"
        publisher.serve(old, signer)
        with pytest.raises(Rejected) as info:
            await client.poll_once()
        assert info.value.reason == "stale"
        assert metric("safegate_feed_last_success_timestamp_seconds") == 0

        resigned = doc(1, entries)   # same serial and entries, signed now
        publisher.serve(resigned, signer)
        assert await client.poll_once() == "unchanged"
        assert metric("safegate_feed_document_age_seconds") < 60
        assert metric("safegate_feed_stale") == 0 and client.check_fresh() is True
        assert metric("safegate_feed_last_success_timestamp_seconds") > 0
        publisher.reply = lambda r: web.Response(status=304)
        assert await client.poll_once() == "unchanged"   # conditional again, and trusted
        assert publisher.requests[-1]["query"]["since"] == "1"
    finally:
        await m.stop()
    m = await manager_for(gateway, cfg)   # a restart re-verifies the stored re-signed copy
    try:
        assert m.clients["central"].document_age() < 60
    finally:
        await m.stop()


def test_truncation_heuristic() -> None:
    body = doc(3, [entry("E-1", "malware.example")])
    assert not looks_truncated(body)
    assert all(looks_truncated(body[:n]) for n in (1, 10, len(body) // 2, len(body) - 1))


async def test_diffs_apply_persist_and_a_gap_asks_for_a_snapshot(
        tmp_path: Path, unbound: ub.UnboundServer, gateway: Gateway, publisher: Publisher,
        keys: tuple[Signer, Path, Signer]) -> None:
    signer, pub, _ = keys
    cfg = feed_config(tmp_path / "feeds", unbound.port,
                      [feed_item(publisher.url, pub, long_poll=5)])
    m = await manager_for(gateway, cfg)
    client = m.clients["central"]
    try:
        publisher.serve(doc(1, [entry("E-1", "malware.example")]), signer)
        assert await client.poll_once() == "updated"
        publisher.serve(doc(2, [entry("E-2", "phish.example", etype="domain-exact")], since=1,
                            removed=("E-1",)), signer)
        assert await client.poll_once() == "updated"
        assert publisher.requests[-1]["query"] == {"since": "1", "wait": "5"}
        assert publisher.requests[-1]["headers"]["If-None-Match"] == '"1"'
        assert await blocked(gateway, "phish.example")
        assert not await blocked(gateway, "www.phish.example")  # domain-exact
        assert not await blocked(gateway, "malware.example")     # removed
        state = m.config.state_dir / "feeds"
        assert (state / "central.d" / "000000000002.json").exists()
        row = m.ledger.get("central", "E-1")
        assert row is not None and row.outcome == "removed" and row.removed_at is not None

        publisher.serve(doc(9, [entry("E-3", "drugs.test")], since=7), signer)
        assert await client.poll_once() == "need_full"
        publisher.serve(doc(9, [entry("E-3", "drugs.test")]), signer)
        assert await client.poll_once() == "updated"
        assert publisher.requests[-1]["query"] == {}   # asked for the full snapshot
        assert await blocked(gateway, "drugs.test") and not await blocked(gateway,
                                                                          "phish.example")
        assert not list((state / "central.d").glob("*.json"))  # the snapshot replaced diffs
    finally:
        await m.stop()


async def test_last_known_good_is_enforced_after_a_restart_without_network(
        tmp_path: Path, unbound: ub.UnboundServer, publisher: Publisher,
        keys: tuple[Signer, Path, Signer]) -> None:
    signer, pub, _ = keys
    publisher.serve(doc(1, [entry("E-1", "malware.example")]), signer)
    cfg = feed_config(tmp_path, unbound.port, [feed_item(publisher.url, pub)])
    gw = Gateway(cfg)
    await gw.start()
    try:
        await async_wait_for(lambda: blocked(gw, "malware.example"),
                             what="malware.example blocked from the stored feed")
        publisher.serve(doc(2, [entry("E-1", "malware.example"), entry("E-2", "phish.example")],
                            since=1), signer)
        assert gw.feeds is not None
        assert await gw.feeds.clients["central"].poll_once() == "updated"
        row = await async_wait_for(lambda: verified_row(gw.feeds, "E-2"), what="E-2 verified")
        assert row.outcome == "verified"
    finally:
        await gw.stop()
    # The publisher goes away: the URL now refuses connections.
    data = yaml.safe_load(cfg.read_text())
    data["feeds"][0]["url"] = "http://127.0.0.1:9/v1/feed"
    cfg.write_text(yaml.safe_dump(data))
    gw2 = Gateway(cfg)
    await gw2.start()
    try:
        # start() returned (ready) with the stored copy already enforced: diff chain included
        assert await blocked(gw2, "malware.example") and await blocked(gw2, "phish.example")
        assert gw2.feeds is not None and gw2.feeds.clients["central"].serial == 2
        row = gw2.feeds.ledger.get("central", "E-2")
        assert row is not None and row.verified_at is not None  # kept across the restart
    finally:
        await gw2.stop()


async def test_tampered_stored_copy_is_not_enforced(
        tmp_path: Path, unbound: ub.UnboundServer, gateway: Gateway, publisher: Publisher,
        keys: tuple[Signer, Path, Signer]) -> None:
    signer, pub, _ = keys
    cfg = feed_config(tmp_path / "feeds", unbound.port, [feed_item(publisher.url, pub)])
    m = await manager_for(gateway, cfg)
    publisher.serve(doc(1, [entry("E-1", "malware.example")]), signer)
    assert await m.clients["central"].poll_once() == "updated"
    await m.stop()
    stored = m.config.state_dir / "feeds" / "central.json"
    stored.write_bytes(stored.read_bytes().replace(b"malware", b"malwart"))
    gateway.set_overlay("central", None)
    m2 = await manager_for(gateway, cfg)
    try:
        assert m2.clients["central"].applied is None
        assert not await blocked(gateway, "malwart.example")
    finally:
        await m2.stop()


async def test_never_block_refusal_and_held_update_with_confirm(
        tmp_path: Path, unbound: ub.UnboundServer, gateway: Gateway, publisher: Publisher,
        keys: tuple[Signer, Path, Signer]) -> None:
    signer, pub, _ = keys
    cfg = feed_config(tmp_path / "feeds", unbound.port, [feed_item(publisher.url, pub)],
                      feed_guard={"never_block": ["gov.vn", "social.test"],
                                  "max_change": {"ratio": 0.5, "entries": 3}})
    m = await manager_for(gateway, cfg)
    client = m.clients["central"]
    try:
        first = [entry("E-1", "malware.example"), entry("E-2", "www.social.test"),
                 entry("E-3", "vn"), entry("E-4", "phish.example")]
        publisher.serve(doc(1, first), signer)
        assert await client.poll_once() == "updated"
        assert await blocked(gateway, "malware.example")
        assert not await blocked(gateway, "www.social.test")
        outcomes = {e.entry_id: e.outcome for e in m.ledger.entries("central")}
        assert outcomes == {"E-1": "applied", "E-2": "refused", "E-3": "refused",
                            "E-4": "applied"}
        assert sample(m, "safegate_feed_refused_entries_total", feed="central") == 2

        big = first[:1] + [entry(f"N-{i}", f"n{i}.drugs.test") for i in range(5)]
        publisher.serve(doc(2, big), signer)
        # The big update's changes are held; the document itself is taken (serial 2), so the
        # next poll asks for what came after it.
        assert await client.poll_once() == "updated"
        assert client.serial == 2 and sample(m, "safegate_feed_held_updates",
                                             feed="central") == 1
        assert sample(m, "safegate_feed_held_entries", feed="central") == 8
        assert sample(m, "safegate_feed_rejected_total", feed="central", reason="guard") == 1
        assert await blocked(gateway, "phish.example")       # the old list stays
        assert not await blocked(gateway, "n1.drugs.test")
        items = status(m.config)
        assert items[0]["held"]["id"] == "2" and items[0]["held"]["changes"] == 8
        assert "N-1" in items[0]["held"]["ids"] and "E-4" in items[0]["held"]["ids"]

        # An urgent order published after it applies at once; the held part stays held.
        publisher.serve(doc(3, [entry("U-1", "urgent.example")], since=2), signer)
        assert await client.poll_once() == "updated"
        assert client.serial == 3 and await blocked(gateway, "urgent.example")
        assert not await blocked(gateway, "n1.drugs.test")
        assert await blocked(gateway, "phish.example")
        assert sample(m, "safegate_feed_held_entries", feed="central") == 8
        assert status(m.config)[0]["held"]["id"] == "2"

        held = confirm(m.config, "central")
        assert held["serial"] == 2
        assert m.check_confirmations() == 1
        assert client.serial == 3 and sample(m, "safegate_feed_held_updates",
                                             feed="central") == 0
        assert sample(m, "safegate_feed_held_entries", feed="central") == 0
        assert await blocked(gateway, "n1.drugs.test")
        assert await blocked(gateway, "urgent.example")
        assert not await blocked(gateway, "phish.example")
        with pytest.raises(Exception, match="no held update"):
            confirm(m.config, "central")
    finally:
        await m.stop()


async def test_a_forced_update_is_not_held_and_a_held_part_survives_a_restart(
        tmp_path: Path, unbound: ub.UnboundServer, gateway: Gateway, publisher: Publisher,
        keys: tuple[Signer, Path, Signer]) -> None:
    """The publisher's --force travels in the signed document (`forced` ids): those changes
    apply at once, never_block still wins; unforced ones beyond max_change are held, and stay
    held (out of force) across a restart."""
    signer, pub, _ = keys
    cfg = feed_config(tmp_path / "feeds", unbound.port, [feed_item(publisher.url, pub)],
                      feed_guard={"never_block": ["social.test"],
                                  "max_change": {"ratio": 0.5, "entries": 3}})
    m = await manager_for(gateway, cfg)
    client = m.clients["central"]
    try:
        publisher.serve(doc(1, [entry("E-1", "malware.example")]), signer)
        assert await client.poll_once() == "updated"
        forced = [entry(f"F-{i}", f"f{i}.drugs.test") for i in range(6)]
        forced.append(entry("F-social", "www.social.test"))
        body = Feed(2, now_iso(), tuple(forced), (), 1,
                    forced=tuple(e.id for e in forced)).to_bytes()
        publisher.serve(body, signer)
        assert await client.poll_once() == "updated"
        assert sample(m, "safegate_feed_held_updates", feed="central") == 0
        assert await blocked(gateway, "f5.drugs.test")
        assert not await blocked(gateway, "www.social.test")    # never_block still wins
        outcomes = {e.entry_id: e.outcome for e in m.ledger.entries("central")}
        assert outcomes["F-social"] == "refused" and outcomes["F-0"] == "applied"

        unforced = [entry(f"H-{i}", f"h{i}.drugs.test") for i in range(9)]
        publisher.serve(doc(3, unforced, since=2), signer)
        assert await client.poll_once() == "updated"
        assert sample(m, "safegate_feed_held_entries", feed="central") == 9
        assert not await blocked(gateway, "h0.drugs.test")
    finally:
        await m.stop()
    # The proxy builds its rules from the same files: held changes are out of its force too,
    # and it watches the held set (a confirm releases them without a new document).
    from gateway.proxy.sources import feed_files, feed_sets

    config = load_config(cfg)
    serial, proxy_entries = feed_sets(config)["central"]
    assert serial == 3 and {e.id for e in proxy_entries} >= {"F-0", "E-1"}
    assert not {e.id for e in proxy_entries} & {f"H-{i}" for i in range(9)}
    assert config.state_dir / "feeds" / "central.held.json" in feed_files(config)
    gateway.set_overlay("central", None)
    m2 = await manager_for(gateway, cfg)
    try:
        assert m2.clients["central"].serial == 3
        assert sample(m2, "safegate_feed_held_entries", feed="central") == 9
        assert await blocked(gateway, "f0.drugs.test")
        assert not await blocked(gateway, "h0.drugs.test")
    finally:
        await m2.stop()


async def test_plain_domains_feed_uses_etag_and_304(
        tmp_path: Path, unbound: ub.UnboundServer, gateway: Gateway,
        publisher: Publisher) -> None:
    body = b"# list\nmalware.example\nphish.example\n"

    def reply(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304)
        return web.Response(body=body, headers={"ETag": '"v1"'}, content_type="text/plain")

    publisher.reply = reply
    cfg = feed_config(tmp_path / "feeds", unbound.port, [
        {"name": "isp", "url": publisher.url, "type": "domains", "category": "malware",
         "mandatory": True, "interval": 60}])
    m = await manager_for(gateway, cfg)
    client = m.clients["isp"]
    try:
        assert await client.poll_once() == "updated"
        assert await blocked(gateway, "www.phish.example")
        assert await client.poll_once() == "unchanged"
        assert publisher.requests[-1]["headers"]["If-None-Match"] == '"v1"'
        assert len(publisher.requests) == 2
    finally:
        await m.stop()
    # and it is enforced from disk after a restart, before any request
    gateway.set_overlay("isp", None)
    m2 = await manager_for(gateway, cfg)
    try:
        assert await blocked(gateway, "malware.example")
        assert len(publisher.requests) == 2
    finally:
        await m2.stop()


async def test_plain_list_over_feed_bytes_is_refused_and_the_old_list_stays(
        tmp_path: Path, unbound: ub.UnboundServer, gateway: Gateway,
        publisher: Publisher) -> None:
    """limits.files.feed_bytes bounds every download, declared (Content-Length) or streamed
    (chunked, no length): refused with reason too_big, the list in force stays."""
    small = b"malware.example\n"
    big = b"".join(b"n%d.example\n" % i for i in range(20))
    state = {"body": small, "chunked": False}

    async def reply(request: web.Request) -> web.StreamResponse:
        if not state["chunked"]:
            return web.Response(body=state["body"], content_type="text/plain")
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(big), 16):
            await resp.write(big[i:i + 16])
        await resp.write_eof()
        return resp

    publisher.reply = reply
    cfg = feed_config(tmp_path / "feeds", unbound.port, [
        {"name": "isp", "url": publisher.url, "type": "domains", "category": "malware",
         "mandatory": True, "interval": 60}], limits={"files": {"feed_bytes": 100}})
    m = await manager_for(gateway, cfg)
    client = m.clients["isp"]
    try:
        assert await client.poll_once() == "updated"
        state["body"] = big
        for chunked in (False, True):
            state["chunked"] = chunked
            with pytest.raises(Rejected) as exc:
                await client.poll_once()
            assert exc.value.reason == "too_big" and "feed_bytes (100)" in str(exc.value)
        assert sample(m, "safegate_feed_rejected_total", feed="isp", reason="too_big") == 2
        assert await blocked(gateway, "malware.example")
        assert not await blocked(gateway, "n1.example")
    finally:
        await m.stop()


async def test_acks_reach_the_publisher_with_entry_states(
        tmp_path: Path, unbound: ub.UnboundServer, gateway: Gateway, publisher: Publisher,
        keys: tuple[Signer, Path, Signer]) -> None:
    signer, pub, _ = keys
    cfg = feed_config(tmp_path / "feeds", unbound.port,
                      [feed_item(publisher.url, pub, acks=True)],
                      gateway={"id": "th-test", "token": "secret", "report_stats": True})
    m = await manager_for(gateway, cfg)
    try:
        publisher.serve(doc(1, [entry("E-1", "malware.example")]), signer)
        assert await m.clients["central"].poll_once() == "updated"
        assert m.prober is not None
        prober = asyncio.get_running_loop().create_task(m.prober.run())
        await async_wait_for(lambda: verified_row(m, "E-1"), what="E-1 verified by the prober")
        prober.cancel()
        assert await m.senders[0].send_once()
        ack = publisher.acks[-1]
        assert ack["gateway"] == "th-test" and ack["feed"] == "central" and ack["serial"] == 1
        assert [e["outcome"] for e in ack["entries"]] == ["verified"]
        assert ack["probes"]["blocked"] >= 1
        assert m.ledger.outbox_pending() == 0
    finally:
        await m.stop()


async def test_config_errors_name_file_and_line(tmp_path: Path, unbound: ub.UnboundServer,
                                                keys: tuple[Signer, Path, Signer]) -> None:
    _, pub, _ = keys
    bad = [
        ({"name": "x", "url": "http://h/v1/feed", "type": "domains"}, "needs category"),
        ({"name": "x", "url": "http://h/v1/feed"}, "needs public_key"),
        ({"name": "x", "url": "http://h/v1/feed", "public_key": str(pub), "color": 1},
         "unknown key 'color'"),
        ({"name": "x", "url": "http://h/v1/feed", "public_key": str(pub)}, "acks need"),
        ({"name": "x", "url": "ftp://h/", "public_key": str(pub), "acks": False}, r"http\(s\)"),
        ({"name": "x", "url": "http://h/l", "type": "domains", "category": "malware",
          "max_age": 60}, "max_age is only for type safegate"),
        ({"name": "x", "url": "http://h/v1/feed", "public_key": str(pub), "acks": False,
          "max_age": 0}, "max_age must be a positive number of seconds"),
        ({"name": "x", "url": "http://h/l", "type": "domains", "category": "malware",
          "by_serial": True}, "by_serial is only for type safegate"),
        ({"name": "x", "url": "http://h/v1/feed", "public_key": str(pub), "acks": False,
          "by_serial": "yes"}, "by_serial"),
    ]
    for item, message in bad:
        cfg = feed_config(tmp_path / "c", unbound.port, [item])
        with pytest.raises(Exception, match=message) as info:
            load_config(cfg)
        assert f"{cfg}:" in str(info.value)
    good = feed_config(tmp_path / "g", unbound.port, [
        {"name": "central", "url": "https://feeds.example.vn/v1/feed", "public_key": [str(pub)],
         "acks": False}], feed_guard={"never_block": ["gov.vn"]})
    c = load_config(good)
    assert c.feeds[0].type == "safegate" and c.feeds[0].long_poll == 30
    assert c.feeds[0].max_age == 86400 and c.feeds[0].by_serial is False
    assert c.feed_guard.never_block == ("gov.vn", "feeds.example.vn")


async def test_long_poll_brings_a_new_entry_in_force_within_a_second(
        tmp_path: Path, unbound: ub.UnboundServer, publisher: Publisher,
        keys: tuple[Signer, Path, Signer]) -> None:
    signer, pub, _ = keys
    """The publish reaches the gateway through the long poll that was waiting for it, not a
    later interval poll (interval 60 s, long poll 60 s, both far longer than the test waits).
    How fast that is belongs in bench/, not in a test on a shared machine."""
    docs = {1: doc(1, [entry("E-1", "malware.example")])}
    changed = asyncio.Event()
    parked = 0                                  # requests waiting in the long poll right now
    answered: list[tuple[int, bool, int]] = []  # (request number, it waited, serial served)

    async def reply(request: web.Request) -> web.Response:
        nonlocal parked
        number = len(publisher.requests)
        since = int(request.query.get("since", "0"))
        latest = max(docs)
        waited = False
        if since and latest <= since:
            parked += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), float(request.query.get("wait", "0")))
            finally:
                parked -= 1
            waited = True
            latest = max(docs)
            if latest <= since:
                return web.Response(status=304)
        answered.append((number, waited, latest))
        body = docs[latest]
        return web.Response(body=body, headers={SIGNATURE_HEADER: signer.sign(body)})

    publisher.reply = reply
    cfg = feed_config(tmp_path, unbound.port, [feed_item(publisher.url, pub, long_poll=60)])
    gw = Gateway(cfg)
    await gw.start()
    try:
        assert gw.feeds is not None
        client = gw.feeds.clients["central"]
        await async_wait_for(lambda: client.serial == 1 and parked == 1,
                             what="the client's long poll since serial 1 is waiting")
        assert publisher.requests[-1]["query"] == {"since": "1", "wait": "60"}
        published_at = len(publisher.requests)
        docs[2] = doc(2, [entry("E-1", "malware.example"), entry("E-2", "phish.example")])
        changed.set()   # (serves the full document: the client accepts a snapshot any time)
        feeds = gw.feeds
        row = await async_wait_for(lambda: verified_row(feeds, "E-2"), what="E-2 verified")
        assert row.outcome == "verified"
        first = next(a for a in answered if a[2] == 2)
        assert first[1] and first[0] <= published_at, (
            f"serial 2 came from request {first} and not the long poll parked before the "
            f"publish (requests before it: {published_at})")
    finally:
        await gw.stop()


def test_safegate_process_with_feeds_serves_stored_copy_and_stops_cleanly(
        tmp_path: Path, unbound: ub.UnboundServer, safegate_factory: Any,
        keys: tuple[Signer, Path, Signer]) -> None:
    signer, pub, _ = keys
    cfg = feed_config(tmp_path, unbound.port,
                      [feed_item("http://127.0.0.1:9/v1/feed", pub, acks=True)],
                      gateway={"id": "th-test", "token": "t"})
    body = doc(4, [entry("E-1", "malware.example")])
    state = tmp_path / "var" / "feeds"
    state.mkdir(parents=True)
    (state / "central.json").write_bytes(body)
    (state / "central.sig").write_text(signer.sign(body))
    proc = safegate_factory(cfg)
    r = proc.query("www.malware.example", payload=1232)
    assert [o.code for o in r.options if hasattr(o, "code")] == [16]
    text = proc.metrics_text()
    for line in ('safegate_feed_serial{feed="central"} 4.0',
                 'safegate_feed_entries{category="csam",feed="central"} 1.0',
                 'safegate_feed_held_updates{feed="central"} 0.0',
                 'safegate_feed_rejected_total{feed="central",reason="http"}',
                 "safegate_enforcement_latency_seconds_bucket",
                 'safegate_enforcement_overdue_entries{feed="central"}',
                 'safegate_probe_checks_total{result="blocked"}',
                 "safegate_feed_outbox_pending"):
        assert line in text, line
