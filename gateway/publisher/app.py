"""The publisher's HTTP API: the signed feed, the admin write API, acks, RPZ and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.feedformat.rpz import to_rpz
from gateway.feedformat.signing import SIGNATURE_HEADER, Signer
from gateway.feedformat.stats import iso
from gateway.publisher import gateways_api
from gateway.publisher.acks import REJECT_REASONS, AckError, check_ack, parse_ack
from gateway.publisher.builder import FeedBuilder
from gateway.publisher.config import PublisherConfig
from gateway.publisher.edits import EditError, Editor, Guard
from gateway.publisher.hotline import ReportInbox
from gateway.publisher.hotline import add_routes as add_report_routes
from gateway.publisher.metrics import AckMetrics, PublisherCollector, entry_deadline
from gateway.publisher.serialfeed import add_routes as add_serial_routes
from gateway.publisher.store import Store, StoredEntry, StoreError
from gateway.publisher.tokens import TokenIndex
from gateway.publisher.watch import SerialWatcher

log = logging.getLogger("safegate.publisher")

MAX_WAIT = 60.0
MAX_BODY = 32 * 1024 * 1024   # the admin write API (a batch of entries); acks have their own
FULL_HEADER = "X-SafeGate-Full"
_STATUS = {"invalid": 400, "refused": 422, "conflict": 409, "not_found": 404}
_ETAG = re.compile(r'"(\d+)"')


STORE = web.AppKey("store", Store)
CONFIG = web.AppKey("config", PublisherConfig)
REGISTRY = web.AppKey("registry", CollectorRegistry)
WATCHER = web.AppKey("watcher", SerialWatcher)
BUILDER = web.AppKey("builder", FeedBuilder)
EDITOR = web.AppKey("editor", Editor)
ACK_METRICS = web.AppKey("ack_metrics", AckMetrics)
COLLECTOR = web.AppKey("collector", PublisherCollector)
TOKENS = web.AppKey("tokens", TokenIndex)


def make_app(store: Store, signer: Signer, config: PublisherConfig,
             registry: CollectorRegistry, poll_interval: float = 0.1) -> web.Application:
    """The whole publisher API; the serial watcher runs while the app does (cleanup_ctx)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[STORE] = store
    app[CONFIG] = config
    app[REGISTRY] = registry
    app[WATCHER] = SerialWatcher(store.serial, poll_interval)
    app[BUILDER] = FeedBuilder(store, signer, config.diff_history, config.heartbeat)
    app[ACK_METRICS] = AckMetrics(registry, sorted(config.gateways), REJECT_REASONS)
    app[TOKENS] = TokenIndex(config.gateways)
    app[EDITOR] = Editor(store, Guard(config.never_block, config.max_change_ratio,
                                      config.max_change_entries))
    gateways_api.add_routes(app, store, config, registry, _require_admin)
    app[COLLECTOR] = PublisherCollector(store, lambda: gateways_api.all_gateways(app),
                                        config.overdue_after_hours)
    registry.register(app[COLLECTOR])
    app.cleanup_ctx.append(_watch)
    app.on_shutdown.append(_release_waiters)
    app.router.add_get("/v1/feed", get_feed)
    app.router.add_get("/v1/entries", list_entries)
    app.router.add_post("/v1/entries", add_entries)
    app.router.add_get("/v1/entries/{id}", get_entry)
    app.router.add_delete("/v1/entries/{id}", remove_entry)
    app.router.add_post("/v1/acks", post_ack)
    app.router.add_get("/v1/rpz", get_rpz)
    add_serial_routes(app, store, signer, app[WATCHER], config.diff_history,
                      config.limits.document_cache_bytes, registry)
    add_report_routes(app, ReportInbox(store.db), registry, _gateway_of, _require_admin)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def _watch(app: web.Application) -> AsyncIterator[None]:
    watcher = app[WATCHER]
    task = asyncio.create_task(watcher.run(), name="serial-watcher")
    yield
    watcher.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _release_waiters(app: web.Application) -> None:
    app[WATCHER].close()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# ---------------------------------------------------------------------- the feed


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise web.HTTPBadRequest(text=f"{name} must be a non-negative integer\n")
    return int(raw)


def _wait_param(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait < float("inf"):
        raise web.HTTPBadRequest(text="wait must be a number of seconds (at most 60)\n")
    return min(wait, MAX_WAIT)


def _if_none_match(request: web.Request) -> set[int]:
    return {int(m) for m in _ETAG.findall(request.headers.get("If-None-Match", ""))}


async def get_feed(request: web.Request) -> web.StreamResponse:
    """Snapshot, diff (?since=N), 304 when up to date, long-poll with ?wait=S."""
    since = _int_param(request, "since")
    wait = _wait_param(request)
    store, watcher = request.app[STORE], request.app[WATCHER]
    current = store.serial()
    if since is not None and since > current:
        return _error(400, f"since={since} is newer than the feed (serial {current}): "
                           "fetch a full snapshot")
    etags = _if_none_match(request)
    if (since == current) if since is not None else (current in etags):
        if wait <= 0 or not await watcher.wait_beyond(current, wait):
            return web.Response(status=304, headers={"ETag": f'"{current}"'})
        current = store.serial()
    doc = request.app[BUILDER].build(current, since)
    headers = {SIGNATURE_HEADER: doc.signature, "ETag": f'"{doc.serial}"',
               "Cache-Control": "no-cache"}
    if doc.full_fallback:
        headers[FULL_HEADER] = "1"
    return web.Response(body=doc.body, content_type="application/json", headers=headers)


async def get_rpz(request: web.Request) -> web.Response:
    serial, entries = request.app[STORE].snapshot()
    text = to_rpz((e for e in entries if e.mandatory), serial=serial)
    return web.Response(text=text, content_type="text/plain", headers={"ETag": f'"{serial}"'})


# ---------------------------------------------------------------------- entries


def _stored_json(s: StoredEntry) -> dict[str, Any]:
    out = s.entry.to_json()
    out.update(added_serial=s.added_serial, removed_serial=s.removed_serial,
               removed_at=s.removed_at)
    return out


async def list_entries(request: web.Request) -> web.Response:
    store = request.app[STORE]
    include_removed = request.query.get("removed", "") in ("1", "true", "yes")
    return web.json_response({"serial": store.serial(), "entries": [
        _stored_json(s) for s in store.list_entries(include_removed)]})


async def get_entry(request: web.Request) -> web.Response:
    """The entry and, per gateway, when it received, applied and verified it."""
    store, config = request.app[STORE], request.app[CONFIG]
    entry_id = request.match_info["id"]
    stored = store.get_entry(entry_id)
    if stored is None:
        return _error(404, f"no entry with id {entry_id!r}")
    due = entry_deadline(stored.entry, config.overdue_after_hours)
    now = time.time()
    acks = store.acks_for_entry(entry_id)
    rows = store.gateway_rows()
    gateways = []
    for gw in sorted(set(gateways_api.all_gateways(request.app)) | set(acks)):
        ack = acks.get(gw)
        verified = ack.verified_at if ack else None
        gateways.append({
            "gateway": gw,
            "applied_serial": rows[gw].applied_serial if gw in rows else 0,
            "received_at": iso(ack.received_at) if ack else None,
            "applied_at": iso(ack.applied_at) if ack else None,
            "verified_at": iso(verified),
            "outcome": ack.outcome if ack else "pending",
            "within_deadline": None if verified is None else verified <= due,
            "overdue": (stored.entry.mandatory and stored.entry.action == "block"
                        and stored.removed_serial is None and verified is None and now > due
                        and not (ack is not None and ack.outcome == "not_applicable")),
        })
    out = _stored_json(stored)
    out.update(due_at=iso(due), gateways=gateways)
    return web.json_response(out)


def _require_admin(request: web.Request) -> web.Response | None:
    admin = request.app[CONFIG].admin_token
    if admin is None:
        return _error(403, "the write API is disabled (no admin_token in publisher.yaml); "
                           "use `safegate feed add/remove`")
    token = _bearer(request)
    if token is None or not _same(token, admin):
        return _error(401, "a valid admin token is required",
                      {"WWW-Authenticate": 'Bearer realm="safegate-publisher"'})
    return None


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (UnicodeDecodeError, ValueError) as exc:
        raise EditError(f"the body is not valid JSON: {exc}") from None


async def add_entries(request: web.Request) -> web.Response:
    """POST {"entries": [...], "force": false}: one batch, one new serial."""
    denied = _require_admin(request)
    if denied is not None:
        return denied
    try:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("entries"), list):
            raise EditError('the body must be {"entries": [...]}')
        unknown = sorted(set(body) - {"entries", "force"})
        if unknown:
            raise EditError(f"unknown field(s) {', '.join(unknown)}")
        force = body.get("force", False) is True
        serial, entries = request.app[EDITOR].add(body["entries"], force)
    except (EditError, StoreError) as exc:
        return _error(_STATUS.get(exc.kind, 400), str(exc))
    request.app[WATCHER].check()
    log.info("added %d entries via the API at serial %d: %s", len(entries), serial,
             ", ".join(e.id for e in entries[:20]))
    return web.json_response({"serial": serial, "ids": [e.id for e in entries]}, status=201)


async def remove_entry(request: web.Request) -> web.Response:
    denied = _require_admin(request)
    if denied is not None:
        return denied
    entry_id = request.match_info["id"]
    force = request.query.get("force", "") in ("1", "true", "yes")
    try:
        serial = request.app[EDITOR].remove(entry_id, force)
    except (EditError, StoreError) as exc:
        return _error(_STATUS.get(exc.kind, 400), str(exc))
    request.app[WATCHER].check()
    log.info("removed %s via the API at serial %d", entry_id, serial)
    return web.json_response({"serial": serial, "id": entry_id})


# ---------------------------------------------------------------------- acks, metrics


def _gateway_of(request: web.Request) -> str | web.Response:
    """The gateway id whose token the request bears, or the 401 to answer."""
    token = _bearer(request)
    # Configured tokens: one lookup by the token's digest (gateway/publisher/tokens.py), not a
    # comparison with each (O(gateways) per ack: 2.3 ms at 10,000 gateways); then the enrolled
    # ones, read now, so a revocation counts from the next request.
    gateway = None if token is None else (request.app[TOKENS].gateway(token)
                                          or gateways_api.enrolled(request.app, token))
    if gateway is None:
        return _error(401, "a valid gateway token is required",
                      {"WWW-Authenticate": 'Bearer realm="safegate-publisher"'})
    return gateway


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    """The body, or AckError(413) past `limit` bytes (declared or actually sent)."""
    too_big = AckError(f"the ack is larger than {limit} bytes (limits.ack_bytes); send fewer "
                       "entries per POST", 413, "too_large")
    if request.content_length is not None and request.content_length > limit:
        raise too_big
    chunks, size = [], 0
    while chunk := await request.content.read(65536):   # chunked: no length to check first
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def post_ack(request: web.Request) -> web.Response:
    """A gateway's report of what it applied and verified (docs/feeds-contract.md).

    An ack is refused whole (4xx, nothing stored) when it is malformed, too large, claims a
    serial the feed never reached, or names entries the feed never had; stats rows beyond
    the gateway's series budget are dropped and counted, the rest of the ack is kept.
    """
    gateway = _gateway_of(request)
    if isinstance(gateway, web.Response):
        return gateway
    config, store, metrics = request.app[CONFIG], request.app[STORE], request.app[ACK_METRICS]
    try:
        ack = parse_ack(await _read_bounded(request, config.limits.ack_bytes))
        if ack.gateway != gateway:
            return _error(403, f"this token belongs to gateway {gateway!r}, not "
                               f"{ack.gateway!r}")
        check_ack(ack, store)
    except AckError as exc:
        metrics.rejected.labels(gateway, exc.reason).inc()
        log.warning("ack from gateway %s refused (%s): %s", gateway, exc.reason, exc)
        return _error(exc.status, str(exc))
    dropped = store.record_ack(ack, time.time(), config.limits.stats_series)
    if dropped:
        metrics.stats_dropped.labels(gateway).inc(dropped)
        log.warning("ack from gateway %s: %d stats rows dropped (limits.stats_series = %d "
                    "(category, tier) series per gateway)", gateway, dropped,
                    config.limits.stats_series)
        return web.json_response({"ok": True, "stats_dropped": dropped})
    return web.json_response({"ok": True})


async def get_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")
