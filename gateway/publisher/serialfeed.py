"""The feed at serial-addressed URLs, for ordinary HTTP caches (docs/feeds-contract.md).

- GET /v1/feed/snapshot/{serial} and /v1/feed/diff/{since}/{serial}: the signed documents.
  Their bytes depend only on the serial (generated_at is when the serial was published), so
  they are served `immutable` for a year with a strong ETag: a cache in front of the
  publisher (nginx) asks once per URL, whatever the number of gateways.
- GET /v1/feed/head?after=N&wait=S: a small signed head naming the latest serial, long-polled
  while the latest is N. Cacheable for one second only: a cache with a lock per URL
  (nginx proxy_cache_lock) turns every gateway waiting on serial N into one request.

Documents are built only for the current serial (the database keeps no history of replaced
rows): a URL for an older serial that no cache holds redirects (302, cacheable for a second)
to the same document at the current serial; a diff wider than diff_history, or a serial the
feed has not reached, answers 404 (not cacheable) and the gateway asks the head again.

Documents are signed and carry nothing per gateway, so like GET /v1/feed they are served
without authentication (a cache can hold one copy for everyone); acks stay authenticated.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.feedformat.document import Feed, now_iso
from gateway.feedformat.head import HEAD_PATH, Head
from gateway.feedformat.signing import SIGNATURE_HEADER, Signer
from gateway.publisher.store import Store
from gateway.publisher.watch import SerialWatcher

IMMUTABLE = "public, max-age=31536000, immutable"
HEAD_CACHE = "public, max-age=1"    # long enough for a cache to hand one answer to its waiters
NOT_CACHEABLE = "no-store"
MAX_WAIT = 60.0
KINDS = ("legacy", "head", "snapshot", "diff")
STATUSES = ("200", "304", "4xx", "5xx")


@dataclass(frozen=True)
class Doc:
    body: bytes
    signature: str
    etag: str


class FeedRequestMetrics:
    """Feed requests and bytes the publisher itself answered (behind a cache: its misses)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("safegate_publisher_feed_requests",
                                "Feed requests answered by this publisher, by URL kind and "
                                "status class.", ["kind", "status"], registry=registry)
        self.bytes = Counter("safegate_publisher_feed_bytes",
                             "Feed response body bytes sent by this publisher, by URL kind.",
                             ["kind"], registry=registry)
        for kind in KINDS:
            self.bytes.labels(kind)
            for status in STATUSES:
                self.requests.labels(kind, status)

    def count(self, kind: str, status: int, size: int) -> None:
        label = str(status) if status in (200, 304) else f"{min(status // 100, 5)}xx"
        self.requests.labels(kind, label if label in STATUSES else "5xx").inc()
        self.bytes.labels(kind).inc(size)


class SerialDocs:
    """Builds and keeps the documents of the current serial; bytes are a function of the
    serial alone (the serial's publication time, canonical JSON, deterministic Ed25519)."""

    def __init__(self, store: Store, signer: Signer, diff_history: int, max_bytes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.signer = signer
        self.diff_history = diff_history
        self.max_bytes = max_bytes          # limits.document_cache_bytes
        self.clock = clock
        self._docs: OrderedDict[tuple[int, int | None], Doc] = OrderedDict()
        self.size = 0                        # bytes of the documents kept
        self._head: tuple[int, float, Doc] | None = None

    def _keep(self, key: tuple[int, int | None], doc: Doc) -> None:
        self._docs[key] = doc
        self.size += len(doc.body)
        while self.size > self.max_bytes and len(self._docs) > 1:
            _, old = self._docs.popitem(last=False)
            self.size -= len(old.body)

    def _sign(self, body: bytes) -> Doc:
        return Doc(body, self.signer.sign(body), f'"{hashlib.sha256(body).hexdigest()[:32]}"')

    def document(self, serial: int, since: int | None) -> Doc | None:
        """The snapshot (since None) or diff at `serial`; None when `serial` is not current."""
        key = (serial, since)
        doc = self._docs.get(key)
        if doc is not None:
            self._docs.move_to_end(key)
            return doc
        if since is None:
            current, entries = self.store.snapshot()
            if current != serial:
                return None
            feed = Feed(serial, self.store.serial_time(serial), tuple(entries))
        else:
            current, added, removed = self.store.diff(since)
            if current != serial:
                return None
            feed = Feed(serial, self.store.serial_time(serial), tuple(added), tuple(removed),
                        since)
        # The operator's --force travels in the signed bytes, as in /v1/feed (feeds/hold.py).
        feed = replace(feed, forced=tuple(self.store.forced_ids(since, serial)))
        doc = self._sign(feed.to_bytes())
        self._keep(key, doc)
        return doc

    def head(self, serial: int) -> Doc:
        """The signed head for `serial`, re-signed at most once a second."""
        now = self.clock()
        if self._head is not None and self._head[0] == serial and now - self._head[1] < 1.0:
            return self._head[2]
        doc = self._sign(Head(serial, now_iso(), self.diff_history).to_bytes())
        self._head = (serial, now, doc)
        return doc


def _serial(request: web.Request, name: str) -> int:
    raw = request.match_info.get(name) or request.query.get(name, "")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise web.HTTPBadRequest(text=f"{name} must be a non-negative integer\n")
    return int(raw)


def _answer(request: web.Request, doc: Doc, cache_control: str) -> web.Response:
    headers = {SIGNATURE_HEADER: doc.signature, "ETag": doc.etag,
               "Cache-Control": cache_control}
    if doc.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=doc.body, content_type="application/json", headers=headers)


def _moved(serial: int, current: int) -> web.Response:
    """A document URL for a serial the feed moved past: redirect to the same document at the
    current serial, cacheable as briefly as the head (every gateway that read the old head
    meets this at once; a cache hands them one answer). Relative, so a path prefix stays."""
    if serial >= current:   # >=: the write that made it current landed just now; ask again
        return _gone(f"serial {serial} is not the feed's latest (serial {current})")
    return web.Response(status=302, headers={"Location": str(current),
                                              "Cache-Control": HEAD_CACHE})


def _gone(message: str) -> web.Response:
    return web.json_response({"error": message}, status=404,
                             headers={"Cache-Control": NOT_CACHEABLE})


def add_routes(app: web.Application, store: Store, signer: Signer, watcher: SerialWatcher,
               diff_history: int, cache_bytes: int, registry: CollectorRegistry) -> None:
    """Register the serial-addressed feed and count every feed answer (legacy included)."""
    docs = SerialDocs(store, signer, diff_history, cache_bytes)
    metrics = FeedRequestMetrics(registry)
    Gauge("safegate_publisher_document_cache_bytes",
          "Bytes of signed serial-addressed documents kept built (limits.document_cache_bytes).",
          registry=registry).set_function(lambda: docs.size)

    async def get_head(request: web.Request) -> web.Response:
        after = _serial(request, "after") if "after" in request.query else None
        raw_wait = request.query.get("wait", "0")
        try:
            wait = min(max(float(raw_wait), 0.0), MAX_WAIT)
        except ValueError:
            raise web.HTTPBadRequest(text="wait must be a number of seconds\n") from None
        current = store.serial()
        if after is not None and current <= after and wait > 0:
            await watcher.wait_beyond(after, wait)
            current = store.serial()
        return _answer(request, docs.head(current), HEAD_CACHE)

    async def get_snapshot(request: web.Request) -> web.Response:
        serial = _serial(request, "serial")
        doc = docs.document(serial, None)
        if doc is None:
            return _moved(serial, store.serial())
        return _answer(request, doc, IMMUTABLE)

    async def get_diff(request: web.Request) -> web.Response:
        since, serial = _serial(request, "since"), _serial(request, "serial")
        if since >= serial or serial - since > diff_history:
            return _gone(f"no diff from {since} to {serial} (diffs span at most "
                         f"{diff_history} serials): fetch the snapshot")
        doc = docs.document(serial, since)
        if doc is None:
            return _moved(serial, store.serial())
        return _answer(request, doc, IMMUTABLE)

    app.router.add_get(HEAD_PATH, get_head)
    app.router.add_get("/v1/feed/snapshot/{serial}", get_snapshot)
    app.router.add_get("/v1/feed/diff/{since}/{serial}", get_diff)
    app.on_response_prepare.append(_counter(metrics))


def _counter(metrics: FeedRequestMetrics
             ) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        path = request.path
        if path == "/v1/feed":
            kind = "legacy"
        elif path == HEAD_PATH:
            kind = "head"
        elif path.startswith("/v1/feed/snapshot/"):
            kind = "snapshot"
        elif path.startswith("/v1/feed/diff/"):
            kind = "diff"
        else:
            return
        body = response.body if isinstance(response, web.Response) else None
        metrics.count(kind, response.status, len(body) if isinstance(body, bytes) else 0)
    return on_prepare
