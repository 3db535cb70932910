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
import logging
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.feedformat.signing import SIGNATURE_HEADER
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


def add_tiers(app: web.Application, store: Store, config: PublisherConfig,
              registry: CollectorRegistry) -> None:
    """Routes and tasks for `upstream:` and `provinces:` (nothing when neither is set)."""
    if config.upstream is not None:
        mirror = NationalMirror(config.upstream, config.limits.mirror_diffs,
                                config.limits.upstream_document_bytes)
        app[NATIONAL_IDS] = NationalIds(store.db)
        mirror.on_new_ids = app[NATIONAL_IDS].add
        mirror.load()
        app[MIRROR] = mirror
        app[OUTBOX] = UpstreamOutbox(store.db)
        app[FORWARDED] = dict.fromkeys(RESULTS, 0)
        registry.register(ProvinceSideCollector(mirror, app[OUTBOX], app[FORWARDED]))
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
    sender = UpstreamSender(app[OUTBOX], provinces_acks_url(upstream.url), upstream.token,
                            session, app[FORWARDED])
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
        log.warning("%d acks wait for the ministry (limits.upstream_pending): refusing the "
                    "ack of %s until they drain", limit, gateway)
        return _error(503, "too many acks wait for the ministry; retry later",
                      {"Retry-After": "60"})
    outbox.add(gateway, body)
    return web.json_response({"ok": True})


class ProvinceSideCollector(Collector):
    """The mirror's state and the forwarding outbox."""

    def __init__(self, mirror: NationalMirror, outbox: UpstreamOutbox,
                 forwarded: dict[str, int]) -> None:
        self.mirror = mirror
        self.outbox = outbox
        self.forwarded = forwarded

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
    """One school's ack, forwarded by its province: recorded as "<province>/<school>"."""
    province = _province_of(request)
    if isinstance(province, web.Response):
        return province
    config, store, provinces = request.app[CONFIG], request.app[STORE], request.app[PROVINCES]
    try:
        ack = parse_ack(await _read_bounded(request, config.limits.ack_bytes))
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
        return _error(exc.status, str(exc))
    dropped = store.record_ack(dataclasses.replace(ack, gateway=gateway), time.time(),
                               config.limits.stats_series)
    return web.json_response({"ok": True, "gateway": gateway, "stats_dropped": dropped})
