"""Subscribers from the ISP's provisioning system: poll a URL, validate, keep last-known-good.

The file at `subscribers.url` is fetched with ETag / If-Modified-Since; a new body is parsed and
its tiers checked BEFORE it replaces the local copy in state_dir, so a broken or truncated export
never changes who gets which policy. The replaced copy is picked up by the gateway's reload (the
file watch), which reuses the tables parsed here instead of parsing a million lines twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config.limits import FileLimits
from gateway.config.subscribers import SubscribersSource
from gateway.errors import ConfigError, ConfigErrors
from gateway.policy.subscribers import Subscribers, file_fingerprint, load_subscribers
from gateway.util.atomic import durable_replace

log = logging.getLogger(__name__)

MAX_BODY = 512 * 1024 * 1024   # a few million lines; anything bigger is not a subscribers file
RESULTS = ("updated", "unchanged", "rejected", "error")


class SubscribersFeedMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.polls = Counter("safegate_subscribers_updates",
                             "Polls of subscribers.url, by result (rejected: the new file was "
                             "invalid and the running subscribers were kept).", ["result"],
                             registry=registry)
        self.last_success = Gauge("safegate_subscribers_last_success_timestamp_seconds",
                                  "When subscribers.url last answered with a valid file "
                                  "(new or unchanged).", registry=registry)
        for result in RESULTS:
            self.polls.labels(result)


class SubscribersFeed:
    """One poller. `tiers` gives the running policy's tier names; `prime` hands a validated
    parse to the builder; the file watch then reloads."""

    def __init__(self, source: SubscribersSource, path: Path,
                 tiers: Callable[[], Iterable[str]], prime: Callable[[Subscribers], None],
                 metrics: SubscribersFeedMetrics, clock: Callable[[], float] = time.time,
                 limits: FileLimits | None = None) -> None:
        self.source = source
        self.limits = limits or FileLimits()   # the bounds the reload will apply to the copy
        self.path = path
        self.tiers = tiers
        self.prime = prime
        self.metrics = metrics
        self.clock = clock
        self.etag = ""
        self.last_modified = ""

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop`; the first poll is immediate (a new node has no copy yet)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            while not stop.is_set():
                await self.poll_once(session)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.source.interval)

    async def poll_once(self, session: aiohttp.ClientSession) -> str:
        """One poll; returns and counts its result (one of RESULTS)."""
        try:
            result = await self._poll(session)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("subscribers: %s: %s", self.source.url, exc or type(exc).__name__)
            result = "error"
        except Exception:
            # Anything else (a bug, an export nothing foresaw) must not end the poller: the
            # running subscribers stay and the next poll tries again.
            log.exception("subscribers: polling %s failed", self.source.url)
            result = "error"
        self.metrics.polls.labels(result).inc()
        if result in ("updated", "unchanged"):
            self.metrics.last_success.set(self.clock())
        return result

    async def _poll(self, session: aiohttp.ClientSession) -> str:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        if self.source.token_file is not None:
            token = self.source.token_file.read_text().strip()
            headers["Authorization"] = f"Bearer {token}"
        async with session.get(self.source.url, headers=headers) as resp:
            if resp.status == 304:
                return "unchanged"
            if resp.status != 200:
                log.warning("subscribers: %s answered HTTP %d", self.source.url, resp.status)
                return "error"
            body = await resp.content.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                log.error("subscribers: %s is larger than %d bytes; ignored", self.source.url,
                          MAX_BODY)
                return "rejected"
            etag = resp.headers.get("ETag", "")
            modified = resp.headers.get("Last-Modified", "")
        if self._same_as_local(body):
            self.etag, self.last_modified = etag, modified
            return "unchanged"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.new")
        tmp.write_bytes(body)
        try:
            subs = await asyncio.to_thread(self._validate, tmp)
        except (ConfigError, ConfigErrors) as exc:
            for line in str(exc).splitlines()[:20]:
                log.error("subscribers: rejected the new file from %s, keeping the running "
                          "one: %s", self.source.url, line.replace(str(tmp), self.source.url))
            tmp.unlink(missing_ok=True)
            return "rejected"
        durable_replace(tmp, self.path)
        subs.path = self.path
        subs.fingerprint = file_fingerprint(self.path)   # rename keeps inode, size, mtime
        self.prime(subs)
        self.etag, self.last_modified = etag, modified
        log.info("subscribers: %d prefixes from %s", subs.count, self.source.url)
        return "updated"

    def _validate(self, path: Path) -> Subscribers:
        subs = load_subscribers(path, self.limits)
        subs.check_tiers(self.tiers())
        return subs

    def _same_as_local(self, body: bytes) -> bool:
        try:
            local = self.path.read_bytes()
        except OSError:
            return False
        return hashlib.sha256(local).digest() == hashlib.sha256(body).digest()
