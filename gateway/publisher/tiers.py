"""The province tier's HTTP side (docs/national-layout.md), added to a publisher's app.

A province (publisher.yaml `upstream:`) serves the mirrored national feed at
/v1/national/feed, takes its schools' acks for it at /v1/national/acks (a gateway sends a
feed's acks next to the feed URL) and forwards them to the ministry. A ministry
(`provinces:`) takes those forwarded acks at /v1/provinces/acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.feedformat.signing import SIGNATURE_HEADER
from gateway.publisher import gateways_api
from gateway.publisher.acks import AckError, check_ack, parse_ack
from gateway.publisher.app import (
    COLLECTOR,
    CONFIG,
    FULL_HEADER,
    STORE,
    _bearer,
    _error,
    _gateway_of,
    _if_none_match,
    _int_param,
    _read_bounded,
    _same,
    _wait_param,
)
from gateway.publisher.config import _GATEWAY_ID, PublisherConfig
from gateway.publisher.mirror import MIRROR_REASONS, NationalMirror
from gateway.publisher.national_view import NationalView, NationalViewCollector
from gateway.publisher.provinces import ProvinceCollector, ProvinceRegistry, namespaced
from gateway.publisher.store import Store
from gateway.publisher.upstream_acks import (
    RESULTS,
    NationalIds,
    UpstreamOutbox,
    UpstreamSender,
    provinces_acks_url,
)

log = logging.getLogger("safegate.publisher")

MIRROR = web.AppKey("mirror", NationalMirror)
OUTBOX = web.AppKey("upstream_outbox", UpstreamOutbox)
PROVINCES = web.AppKey("provinces", ProvinceRegistry)
FORWARDED = web.AppKey("forwarded", dict)
NATIONAL_IDS = web.AppKey("national_ids", NationalIds)
DEFERRED = web.AppKey("deferred", dict)
NATIONAL_VIEW = web.AppKey("national_view", NationalView)
# safegate_publisher_national_acks_deferred_total{reason}: school acks answered 503 because
# the province's outbox (limits.upstream_pending) or the school's share of it
# (limits.upstream_pending_per_school) is full; the school keeps them and retries.
DEFER_REASONS = ("pending_full", "school_pending_full")


def add_tiers(app: web.Application, store: Store, config: PublisherConfig,
              registry: CollectorRegistry) -> None:
    """Routes and tasks for `upstream:` and `provinces:` (nothing when neither is set)."""
    if config.upstream is not None:
        mirror = NationalMirror(config.upstream, config.limits.mirror_diffs,
                                config.limits.upstream_document_bytes)
        app[NATIONAL_IDS] = NationalIds(store.db)
        mirror.on_new_ids = app[NATIONAL_IDS].add
        app[NATIONAL_VIEW] = NationalView(store.db)
        mirror.on_installed = app[NATIONAL_VIEW].installed
        registry.register(NationalViewCollector(app[NATIONAL_VIEW],
                                                lambda: gateways_api.all_gateways(app),
                                                config.overdue_after_hours))
        mirror.load()
        app[MIRROR] = mirror
        app[OUTBOX] = UpstreamOutbox(store.db)
        app[FORWARDED] = dict.fromkeys((*RESULTS, "posts", "batching"), 0)
        app[DEFERRED] = dict.fromkeys(DEFER_REASONS, 0)
        registry.register(ProvinceSideCollector(mirror, app[OUTBOX], app[FORWARDED],
                                                app[DEFERRED]))
        app.router.add_get("/v1/national/feed", get_national_feed)
        app.router.add_post("/v1/national/acks", post_national_ack)
        app.cleanup_ctx.append(_upstream_tasks)
        app.on_shutdown.append(_release_mirror_waiters)
    if config.provinces:
        provinces = ProvinceRegistry(store.db, list(config.provinces),
                                     config.limits.province_gateways, registry)
        app[PROVINCES] = provinces
        app[COLLECTOR].extra_gateways = lambda: list(provinces.gateways())
        registry.register(ProvinceCollector(store, provinces, config.overdue_after_hours))
        app.router.add_post("/v1/provinces/acks", post_province_ack)


async def _upstream_tasks(app: web.Application) -> AsyncIterator[None]:
    upstream = app[CONFIG].upstream
    assert upstream is not None
    mirror = app[MIRROR]
    session = aiohttp.ClientSession()
    limits = app[CONFIG].limits
    sender = UpstreamSender(app[OUTBOX], provinces_acks_url(upstream.url), upstream.token,
                            session, app[FORWARDED], max_count=limits.upstream_batch_acks,
                            max_bytes=limits.upstream_batch_bytes)
    tasks = [asyncio.create_task(mirror.run(session), name="national-mirror"),
             asyncio.create_task(sender.run(), name="upstream-acks")]
    yield
    mirror.watcher.close()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await session.close()


async def _release_mirror_waiters(app: web.Application) -> None:
    app[MIRROR].watcher.close()


# ---------------------------------------------------------------------- province side


async def get_national_feed(request: web.Request) -> web.StreamResponse:
    """The ministry's documents as it signed them: snapshot, diff, 304, long-poll."""
    mirror = request.app[MIRROR]
    since = _int_param(request, "since")
    wait = _wait_param(request)
    current = mirror.serial
    if mirror.snapshot is None:
        return _error(503, "the national feed has not been fetched from the ministry yet",
                      {"Retry-After": "10"})
    if since is not None and since > current:
        return _error(400, f"since={since} is newer than the mirrored national feed (serial "
                           f"{current}): fetch a full snapshot")
    up_to_date = (since == current) if since is not None else (
        current in _if_none_match(request))
    if up_to_date and (wait <= 0 or not await mirror.watcher.wait_beyond(current, wait)):
        return web.Response(status=304, headers={"ETag": f'"{current}"'})
    found = mirror.document_for(since)
    assert found is not None
    doc, full = found
    headers = {SIGNATURE_HEADER: doc.signature, "ETag": f'"{doc.serial}"',
               "Cache-Control": "no-cache"}
    if full:
        headers[FULL_HEADER] = "1"
    return web.Response(body=doc.body, content_type="application/json", headers=headers)


async def post_national_ack(request: web.Request) -> web.Response:
    """A school's ack for national entries: checked, kept in the outbox, then 200."""
    gateway = _gateway_of(request)
    if isinstance(gateway, web.Response):
        return gateway
    config, mirror, outbox = request.app[CONFIG], request.app[MIRROR], request.app[OUTBOX]
    try:
        body = await _read_bounded(request, config.limits.ack_bytes)
        ack = parse_ack(body)
    except AckError as exc:
        return _error(exc.status, str(exc))
    if ack.gateway != gateway:
        return _error(403, f"this token belongs to gateway {gateway!r}, not {ack.gateway!r}")
    if ack.serial > mirror.serial:
        return _error(409, f"serial {ack.serial} is newer than the mirrored national feed "
                           f"(serial {mirror.serial}); nothing was recorded")
    known = mirror.known_ids()
    unknown = request.app[NATIONAL_IDS].unknown(
        [e.entry_id for e in ack.entries if e.entry_id not in known])
    if unknown:
        return _error(422, f"{len(unknown)} entry id(s) are not in the national feed: "
                           f"{', '.join(repr(i) for i in unknown[:5])}; nothing was recorded")
    limit = config.limits.upstream_pending
    if outbox.pending() >= limit:
        request.app[DEFERRED]["pending_full"] += 1
        log.warning("%d acks wait for the ministry (limits.upstream_pending): refusing the "
                    "ack of %s until they drain", limit, gateway)
        return _error(503, "too many acks wait for the ministry; retry later",
                      {"Retry-After": "60"})
    share = config.limits.upstream_pending_per_school
    if outbox.pending_of(gateway) >= share:
        request.app[DEFERRED]["school_pending_full"] += 1
        log.warning("%d acks of %s wait for the ministry (limits.upstream_pending_per_school): "
                    "refusing more from it until they drain", share, gateway)
        return _error(503, f"{share} acks of this gateway wait for the ministry; retry later",
                      {"Retry-After": "60"})
    # Recorded before it is queued: a failure between the two makes the school retry, and
    # recording again changes nothing.
    request.app[NATIONAL_VIEW].record(ack, time.time())
    outbox.add(gateway, body)
    return web.json_response({"ok": True})


class ProvinceSideCollector(Collector):
    """The mirror's state and the forwarding outbox."""

    def __init__(self, mirror: NationalMirror, outbox: UpstreamOutbox,
                 forwarded: dict[str, int], deferred: dict[str, int]) -> None:
        self.mirror = mirror
        self.outbox = outbox
        self.forwarded = forwarded
        self.deferred = deferred

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("safegate_publisher_mirror_serial",
                              "Serial of the national feed mirrored (0: none yet).")
        g.add_metric([], self.mirror.serial)
        yield g
        age = self.mirror.document_age()
        g = GaugeMetricFamily("safegate_publisher_mirror_document_age_seconds",
                              "Seconds since the ministry signed the mirrored snapshot "
                              "(-1: none yet).")
        g.add_metric([], -1.0 if age == float("inf") else age)
        yield g
        c = CounterMetricFamily("safegate_publisher_mirror_rejected",
                                "National documents or fetches the mirror refused, by reason "
                                "(the last-known-good copy stays served).", labels=["reason"])
        for reason in MIRROR_REASONS:
            c.add_metric([reason], self.mirror.rejected.get(reason, 0))
        yield c
        g = GaugeMetricFamily("safegate_publisher_mirror_diffs",
                              "National diffs kept to serve schools step by step "
                              "(limits.mirror_diffs).")
        g.add_metric([], len(self.mirror.diffs))
        yield g
        g = GaugeMetricFamily("safegate_publisher_upstream_pending_acks",
                              "School acks for national entries not yet accepted by the "
                              "ministry.")
        g.add_metric([], self.outbox.pending())
        yield g
        c = CounterMetricFamily("safegate_publisher_upstream_acks",
                                "School acks forwarded to the ministry, by its answer "
                                "(refused: dropped as invalid).", labels=["result"])
        for result in RESULTS:
            c.add_metric([result], self.forwarded.get(result, 0))
        yield c
        c = CounterMetricFamily("safegate_publisher_upstream_posts",
                                "POSTs to the ministry's /v1/provinces/acks (each carries up "
                                "to limits.upstream_batch_acks acks).")
        c.add_metric([], self.forwarded.get("posts", 0))
        yield c
        g = GaugeMetricFamily("safegate_publisher_upstream_batching",
                              "1 while acks go to the ministry in batches; 0 after it refused "
                              "the batched form (one ack per POST).")
        g.add_metric([], self.forwarded.get("batching", 0))
        yield g
        c = CounterMetricFamily("safegate_publisher_national_acks_deferred",
                                "School acks answered 503 (kept by the school) because the "
                                "province's outbox or the school's share of it is full.",
                                labels=["reason"])
        for reason in DEFER_REASONS:
            c.add_metric([reason], self.deferred.get(reason, 0))
        yield c


# ---------------------------------------------------------------------- ministry side


def _province_of(request: web.Request) -> str | web.Response:
    token = _bearer(request)
    province = None
    if token is not None:
        for pid, p in request.app[CONFIG].provinces.items():
            if _same(token, p.token):
                province = pid
    if province is None:
        return _error(401, "a valid province token is required",
                      {"WWW-Authenticate": 'Bearer realm="safegate-publisher"'})
    return province


async def post_province_ack(request: web.Request) -> web.Response:
    """Acks forwarded by a province, each recorded as "<province>/<school>": one ack (the
    gateway's form), or {"acks": [...]} answered per ack in order (docs/feeds-contract.md)."""
    province = _province_of(request)
    if isinstance(province, web.Response):
        return province
    config, provinces = request.app[CONFIG], request.app[PROVINCES]
    try:
        body = await _read_bounded(request, config.limits.ack_bytes)
    except AckError as exc:
        provinces.rejected.labels(province, exc.reason).inc()
        return _error(exc.status, str(exc))
    batch = _batch_of(body)
    if batch is None:
        status, answer = _record_forwarded(request, province, body)
        return (web.json_response(answer) if status == 200
                else _error(status, str(answer["error"])))
    if isinstance(batch, str):
        provinces.rejected.labels(province, "malformed").inc()
        return _error(400, batch)
    limit = config.limits.upstream_batch_acks
    if len(batch) > limit:
        provinces.rejected.labels(province, "too_large").inc()
        return _error(413, f"{len(batch)} acks in one request; at most {limit} "
                           "(limits.upstream_batch_acks): nothing was recorded")
    results = []
    for item in batch:
        status, answer = _record_forwarded(request, province, item)
        results.append({"status": status, **answer})
    return web.json_response({"ok": True, "results": results})


def _batch_of(body: bytes) -> list[bytes] | str | None:
    """The acks of a batched POST (each re-encoded for parse_ack), an error for a malformed
    batch, None for the single-ack form."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None                          # parse_ack says what is wrong
    if not isinstance(doc, dict) or "acks" not in doc or "gateway" in doc:
        return None
    acks = doc["acks"]
    if not isinstance(acks, list):
        return "acks must be a list of acks"
    return [json.dumps(a).encode() for a in acks]


def _record_forwarded(request: web.Request, province: str, body: bytes
                      ) -> tuple[int, dict[str, Any]]:
    """One forwarded ack: (200, what was recorded) or (HTTP status, the error)."""
    config, store, provinces = request.app[CONFIG], request.app[STORE], request.app[PROVINCES]
    try:
        ack = parse_ack(body)
        if not _GATEWAY_ID.fullmatch(ack.gateway):
            raise AckError(f"gateway id {ack.gateway!r} is not a valid gateway id")
        check_ack(ack, store)
        gateway = namespaced(province, ack.gateway)
        if not provinces.admit(province, gateway, time.time()):
            raise AckError(f"province {province!r} already has {provinces.limit} school "
                           "gateways (limits.province_gateways); nothing was recorded", 422,
                           "province_full")
    except AckError as exc:
        provinces.rejected.labels(province, exc.reason).inc()
        log.warning("ack forwarded by province %s refused (%s): %s", province, exc.reason, exc)
        return exc.status, {"error": str(exc)}
    dropped = store.record_ack(dataclasses.replace(ack, gateway=gateway), time.time(),
                               config.limits.stats_series)
    return 200, {"ok": True, "gateway": gateway, "stats_dropped": dropped}
