"""The province's national mirror against a real ministry publisher process: what it keeps,
what it serves a school at each serial, what it refuses, and how often it asks."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from gateway.feedformat.signing import SIGNATURE_HEADER, Verifier
from gateway.publisher.mirror import MirrorError, NationalMirror
from gateway.publisher.tierconfig import UpstreamConfig
from tests.support.feeds import entry
from tests.support.interposer import Interposer
from tests.support.publisher import ADMIN_TOKEN, PublisherProcess, run_feed, start_publisher

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_mirror(pub_url: str, key: Path, state: Path, clock: Clock) -> NationalMirror:
    cfg = UpstreamConfig(pub_url + "/v1/feed", (key,), "t" * 32, "ha-noi", state, refresh=1800)
    mirror = NationalMirror(cfg, max_diffs=2, max_bytes=1 << 20, clock=clock)
    mirror.long_poll = 1
    return mirror


def add(pub: PublisherProcess, rid: str, value: str) -> None:
    r = pub.request("POST", "/v1/entries", body={"entries": [entry(rid, value)]},
                    token=ADMIN_TOKEN)
    assert r.status == 201, r.body


async def poll(mirror: NationalMirror) -> bool:
    async with aiohttp.ClientSession() as session:
        return await mirror.poll_once(session)


def test_mirror_keeps_steps_serves_and_reloads_verified_documents(tmp_path: Path) -> None:
    pub = start_publisher(tmp_path / "ministry", gateways=())
    relay = Interposer(pub.url).start()
    try:
        clock = Clock()
        state = tmp_path / "mirror"
        mirror = make_mirror(relay.url, pub.setup.public_key, state, clock)
        assert mirror.document_for(None) is None          # nothing to serve yet
        add(pub, "BCA-1", "one.example")
        assert asyncio.run(poll(mirror)) and mirror.serial == 1
        add(pub, "BCA-2", "two.example")
        assert asyncio.run(poll(mirror)) and mirror.serial == 2
        # a school at 1 gets the ministry's diff 1 -> 2; at 0 (no diff kept) the snapshot
        found = mirror.document_for(1)
        assert found is not None
        diff, full = found
        assert (diff.since, diff.serial, full) == (1, 2, False)
        served = pub.request("GET", "/v1/feed?since=1")
        Verifier.from_files([pub.setup.public_key]).verify(diff.body, diff.signature)
        # byte for byte what the ministry serves (its documents are cached per serial)
        assert served.body == diff.body and served.headers[SIGNATURE_HEADER] == diff.signature
        assert b'"two.example"' in diff.body
        snap, full = mirror.document_for(0) or (None, None)
        assert snap is not None and snap.since is None and snap.serial == 2 and full is True
        assert mirror.known_ids() == {"BCA-1", "BCA-2"}

        # at most max_diffs (2) diffs are kept, on disk too
        add(pub, "BCA-3", "three.example")
        asyncio.run(poll(mirror))
        add(pub, "BCA-4", "four.example")
        asyncio.run(poll(mirror))
        assert sorted(mirror.diffs) == [2, 3]
        assert sorted(p.name for p in (state / "diffs").iterdir()) == ["2.doc", "3.doc"]

        # a restart serves the kept documents before the ministry answers; one altered on
        # disk is dropped
        doc3 = state / "diffs" / "3.doc"
        doc3.write_bytes(doc3.read_bytes().replace(b"four.example", b"fuor.example"))
        again = make_mirror(relay.url, pub.setup.public_key, state, clock)
        again.load()
        assert again.serial == 4 and sorted(again.diffs) == [2]
    finally:
        relay.stop()
        pub.kill()


def test_a_document_not_signed_by_the_ministry_is_refused_and_counted(tmp_path: Path) -> None:
    pub = start_publisher(tmp_path / "ministry", gateways=())
    other = tmp_path / "other"
    assert run_feed("keygen", "--out", str(other)).returncode == 0
    relay = Interposer(pub.url).start()
    try:
        add(pub, "BCA-1", "one.example")
        wrong_key = make_mirror(relay.url, other / "feed.pub", tmp_path / "m1", Clock())
        with pytest.raises(MirrorError) as exc:
            asyncio.run(poll(wrong_key))
        assert exc.value.reason == "bad_signature" and wrong_key.serial == 0
        mirror = make_mirror(relay.url, pub.setup.public_key, tmp_path / "m2", Clock())
        relay.tamper = (b"one.example", b"onf.example")
        with pytest.raises(MirrorError) as exc:
            asyncio.run(poll(mirror))
        assert exc.value.reason == "bad_signature" and mirror.snapshot is None
        assert not (tmp_path / "m2" / "snapshot.doc").exists()
        # limits.upstream_document_bytes: a document past it is refused while it streams
        relay.tamper = None
        small = make_mirror(relay.url, pub.setup.public_key, tmp_path / "m3", Clock())
        small.max_bytes = 100
        with pytest.raises(MirrorError) as exc:
            asyncio.run(poll(small))
        assert exc.value.reason == "too_big" and small.serial == 0
    finally:
        relay.stop()
        pub.kill()


def test_refresh_is_paced_by_the_mirror_not_by_the_documents_age(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The ministry re-signs hourly (heartbeat); with upstream.refresh at 30 min a mirror that
    refreshed on document age would ask for the full snapshot every second for half an hour."""
    pub = start_publisher(tmp_path / "ministry", gateways=())
    relay = Interposer(pub.url).start()
    try:
        add(pub, "BCA-1", "one.example")
        clock = Clock()
        mirror = make_mirror(relay.url, pub.setup.public_key, tmp_path / "m", clock)
        asyncio.run(poll(mirror))
        assert not mirror.needs_full()
        # the document is signed "now" in real time; make it look 40 minutes old
        assert mirror.snapshot is not None
        clock.now = mirror.snapshot.signed_at + 2400
        mirror.last_full = clock.now - 2000
        assert mirror.needs_full()
        asyncio.run(poll(mirror))                  # one refresh: same serial, same signing time
        assert mirror.document_age() > mirror.cfg.refresh
        assert not mirror.needs_full()             # and no second one until refresh passes
        full_requests = relay.requests
        with caplog.at_level(logging.INFO):
            assert asyncio.run(poll(mirror)) is False      # a long poll, answered 304
        assert relay.requests == full_requests + 1
        assert relay.last_query == "since=1&wait=1"
    finally:
        relay.stop()
        pub.kill()
