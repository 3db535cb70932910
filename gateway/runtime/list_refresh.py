"""lists.yaml `url:` sources: download on their `refresh:` schedule, keep last-known-good.

Each source's copy is STATE_DIR/lists/<sha256(url)[:16]>.list with a .meta.json beside it
(url, ETag, Last-Modified, sha256). A download is conditional (a 304 costs nothing), bounded by
limits.files.feed_bytes, and checked as a list of its format BEFORE it replaces the copy, so a
failed or garbage download (an HTML error page, a truncated file) never changes what is
enforced. A replaced copy is picked up by the gateway's reload (the file watch), like an edit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config.limits import FileLimits
from gateway.lists import ParsedRule, Skipped
from gateway.lists.catalog import URL_FORMAT, Source
from gateway.lists.parsers import parse
from gateway.util.atomic import atomic_write
from gateway.util.httpfetch import FetchError, conditional_headers, fetch

log = logging.getLogger(__name__)

RESULTS = ("updated", "unchanged", "rejected", "error")
TIMEOUT = 300.0          # one download, start to end (a big list on a slow uplink)
IDLE_WAKE = 30.0         # how soon a source added by a reload is first fetched


class ListRefreshMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refresh = Counter(
            "safegate_list_refresh",
            "Downloads of lists.yaml url: sources, by list name and result (rejected: not a "
            "usable list, error: HTTP or network failure; the last-known-good copy is kept "
            "for both).", ["list", "result"], registry=registry)
        self.last_success = Gauge(
            "safegate_list_last_success_timestamp_seconds",
            "When a lists.yaml url: source last answered with a valid list (new or unchanged).",
            ["list"], registry=registry)

    def init_list(self, name: str) -> None:
        for result in RESULTS:
            self.refresh.labels(name, result)


def list_problem(fmt: str, body: bytes) -> str | None:
    """Why `body` is not a list of format `fmt` worth enforcing, or None.

    The parsers skip lines they cannot use; a body with no entry, or with more unusable lines
    than entries, is a wrong page or file (a captive portal, an error page), not a list.
    """
    if b"\0" in body:
        return "binary data (a NUL byte), not a text list"
    lines = body.decode("utf-8", "replace").splitlines()
    if fmt == URL_FORMAT:
        usable = sum(1 for line in lines if line.strip() and not line.lstrip().startswith("#"))
        return None if usable else "no URL in it"
    entries = skipped = 0
    for item in parse(fmt, lines):
        if isinstance(item, ParsedRule):
            entries += 1
        elif isinstance(item, Skipped):
            skipped += 1
    if entries == 0:
        return f"no usable {fmt} entry ({skipped} lines skipped)"
    if skipped > entries:
        return f"more unusable lines ({skipped}) than {fmt} entries ({entries})"
    return None


def next_wait(source: Source, result: str, minimum: float) -> float:
    """Seconds until `source` is fetched again: its `refresh:` after a success, but never
    sooner than limits.files.list_refresh_min (a publisher is not hammered by a typo like
    `refresh: 1s`); that minimum after a failure."""
    return max(source.refresh, minimum) if result in ("updated", "unchanged") else minimum


def meta_path(source: Source) -> Path:
    return source.path.with_suffix(".meta.json")


class ListRefresher:
    """Keeps every url: source of the running catalog (`sources()`) downloaded."""

    def __init__(self, sources: Callable[[], list[Source]], metrics: ListRefreshMetrics,
                 limits: FileLimits, clock: Callable[[], float] = time.time) -> None:
        self.sources = sources
        self.metrics = metrics
        self.limits = limits       # feed_bytes/list_bytes bound a body, list_refresh_min a wait
        self.clock = clock
        self.due: dict[Path, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch each source when due (a new one at once) until `stop`."""
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                for source in self.sources():
                    if self.due.get(source.path, 0.0) <= self.clock():
                        result = await self.refresh(session, source)
                        wait = next_wait(source, result, self.limits.list_refresh_min)
                        self.due[source.path] = self.clock() + wait
                soonest = min(self.due.values(), default=self.clock() + IDLE_WAKE)
                delay = min(max(soonest - self.clock(), 0.1), IDLE_WAKE)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def refresh(self, session: aiohttp.ClientSession, source: Source) -> str:
        """One download of `source`; returns and counts its result (one of RESULTS)."""
        self.metrics.init_list(source.name)
        try:
            result = await self._refresh(session, source)
        except FetchError as exc:
            log.error("list %s: download of %s failed (%s): %s; keeping the last-known-good "
                      "copy", source.name, source.url, exc.reason, exc)
            result = "error"
        except OSError as exc:
            log.error("list %s: cannot store the copy of %s: %s", source.name, source.url, exc)
            result = "error"
        except Exception:
            # A bug or a response nothing foresaw must not end the refresher: the running list
            # stays and the next refresh tries again.
            log.exception("list %s: refreshing %s failed", source.name, source.url)
            result = "error"
        self.metrics.refresh.labels(source.name, result).inc()
        if result in ("updated", "unchanged"):
            self.metrics.last_success.labels(source.name).set(self.clock())
        return result

    async def _refresh(self, session: aiohttp.ClientSession, source: Source) -> str:
        meta = self._meta(source)
        headers = conditional_headers(meta.get("etag", ""), meta.get("last_modified", ""))
        log.info("list %s: checking %s", source.name, source.url)
        status, body, resp = await fetch(
            session, source.url, headers=headers, timeout=TIMEOUT,
            max_bytes=min(self.limits.feed_bytes, self.limits.list_bytes),
            limit_key="limits.files.feed_bytes")
        if status == 304:
            log.info("list %s: %s unchanged (304 Not Modified)", source.name, source.url)
            return "unchanged"
        digest = hashlib.sha256(body).hexdigest()
        new_meta = {"url": source.url, "etag": resp.get("ETag", ""),
                    "last_modified": resp.get("Last-Modified", ""), "sha256": digest}
        if digest == meta.get("sha256") and source.path.is_file():
            atomic_write(meta_path(source), json.dumps(new_meta).encode())
            log.info("list %s: %s unchanged (same content)", source.name, source.url)
            return "unchanged"
        problem = await asyncio.to_thread(list_problem, source.format, body)
        if problem is not None:
            log.error("list %s: rejected the download from %s: %s; keeping the last-known-good "
                      "copy", source.name, source.url, problem)
            return "rejected"
        source.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(source.path, body)
        atomic_write(meta_path(source), json.dumps(new_meta).encode())
        log.info("list %s: downloaded %d bytes from %s; reloading", source.name, len(body),
                 source.url)
        return "updated"

    @staticmethod
    def _meta(source: Source) -> dict[str, str]:
        """The stored copy's validators, if it is a copy of this URL."""
        try:
            meta = json.loads(meta_path(source).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(meta, dict) or meta.get("url") != source.url or \
                not source.path.is_file():
            return {}
        return {k: str(v) for k, v in meta.items()}
