"""One feed's client: last-known-good first, then long-poll, verify, guard, persist, apply.

This is the driver shared by both kinds of feed: the polling loop with its backoff, the HTTP
fetch with its size limit, start-up and the operator's confirmation of a held update. What a
response means is the business of the feed's part: gateway/feeds/signed.py (signed documents,
their chain on disk in snapshots.py, their freshness) or plain.py (unauthenticated lists);
hold.py is the guard both share, install.py puts a signed entry set in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config.feeds import FeedConfig, FeedGuardConfig
from gateway.config.limits import FileLimits
from gateway.feeds.acks import AckTarget
from gateway.feeds.byserial import SerialPoll
from gateway.feeds.context import FeedContext, OnApplied, OverlayTarget, Rejected
from gateway.feeds.hold import HoldGuard, held_paths
from gateway.feeds.install import Installer
from gateway.feeds.ledger import Ledger
from gateway.feeds.plain import PlainFeed
from gateway.feeds.signed import MAX_DIFFS, Applied, SignedFeed
from gateway.feeds.stats import FeedMetrics
from gateway.util.httpfetch import FetchError, fetch
from gateway.util.outbox import backoff

log = logging.getLogger(__name__)

MIN_GAP = 1.0                  # never more than one request per second


class FeedClient:
    """Fetches one feed and keeps the gateway's overlay for it current."""

    def __init__(self, cfg: FeedConfig, guard: FeedGuardConfig, target: OverlayTarget,
                 session: aiohttp.ClientSession | None, ledger: Ledger, metrics: FeedMetrics,
                 state_dir: Path, ack: AckTarget | None = None,
                 on_applied: OnApplied | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] | None = None,
                 rng: random.Random | None = None,
                 max_bytes: int = FileLimits.feed_bytes, proxy: bool = False) -> None:
        self.ctx = FeedContext(cfg, guard, target, ledger, metrics, state_dir, ack, clock,
                               proxy)
        self.session = session
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.max_bytes = max_bytes     # cfg.limits.files.feed_bytes
        self.failures = 0
        self.hold = HoldGuard(self.ctx)
        metrics.init_feed(cfg.name)
        self.part: SignedFeed | PlainFeed = (
            SignedFeed(self.ctx, self._get, self.hold, Installer(self.ctx, on_applied))
            if cfg.signed else PlainFeed(self.ctx, self._get, self.hold))
        if isinstance(self.part, SignedFeed) and cfg.by_serial:
            self.part.by_serial = SerialPoll(self.part, self._get_url, MAX_DIFFS)

    @property
    def cfg(self) -> FeedConfig:
        return self.ctx.cfg

    @property
    def name(self) -> str:
        return self.ctx.name

    @property
    def ack(self) -> AckTarget | None:
        return self.ctx.ack

    @property
    def applied(self) -> Applied | None:
        """A signed feed's document in force (None for a plain feed)."""
        return self.part.applied if isinstance(self.part, SignedFeed) else None

    @property
    def serial(self) -> int:
        return self.part.serial if isinstance(self.part, SignedFeed) else 0

    @property
    def busy(self) -> bool:
        """An update is being applied (a confirmation waits)."""
        return self.part.busy

    @property
    def held_id(self) -> str:
        return self.hold.held_id

    def document_age(self) -> float:
        """Seconds since the publisher signed the newest verified document (signed feeds)."""
        assert isinstance(self.part, SignedFeed)
        return self.part.document_age()

    def check_fresh(self) -> bool:
        """Log when a signed feed turns stale or fresh again; returns whether it is fresh."""
        assert isinstance(self.part, SignedFeed)
        return self.part.check_fresh()

    # ------------------------------------------------------------------ start-up

    def load_local(self) -> bool:
        """Apply the last-known-good copy (re-verified) before any network access."""
        self.hold.load()
        try:
            return self.part.load_local()
        except (OSError, ValueError) as exc:
            log.error("feed %s: cannot read the stored copy: %s", self.name, exc)
            return False

    # ------------------------------------------------------------------ polling

    async def run(self) -> None:
        """Poll forever: long-poll when the publisher holds requests, back off on failure."""
        sleep = self.sleep or _sleep
        cfg = self.cfg
        while True:
            started = self.ctx.clock()
            try:
                status = await self.poll_once()
            except Rejected as exc:
                if cfg.signed:
                    self.check_fresh()
                self.failures += 1
                delay = backoff(self.failures - 1, self.rng)
                log.warning("feed %s: update rejected (%s): %s; keeping serial %d, retrying in "
                            "%.0fs", self.name, exc.reason, exc, self.serial, delay)
                await sleep(delay)
                continue
            self.failures = 0
            if cfg.signed:
                self.check_fresh()
            took = self.ctx.clock() - started
            if status == "need_full":
                delay = 0.0
            elif status == "held":
                delay = cfg.interval
            elif status == "unchanged" and (not cfg.signed or not cfg.long_poll
                                            or took < cfg.long_poll / 2):
                # The publisher answered at once: it does not hold requests, so poll on the
                # interval (the interval is the floor between polls without long-poll).
                delay = cfg.interval - took
            else:
                delay = MIN_GAP - took
            if delay > 0:
                await sleep(delay)

    async def poll_once(self) -> str:
        """One request: updated | unchanged | need_full | held; raises Rejected."""
        try:
            return await self.part.poll()
        except Rejected as exc:
            self.ctx.metrics.rejected.labels(self.name, exc.reason).inc()
            raise

    async def _get(self, params: dict[str, str], headers: dict[str, str], timeout: float
                   ) -> tuple[int, bytes, Mapping[str, str]]:
        return await self._get_url(self.cfg.url, params, headers, timeout)

    async def _get_url(self, url: str, params: dict[str, str], headers: dict[str, str],
                       timeout: float, *, missing_ok: bool = False
                       ) -> tuple[int, bytes, Mapping[str, str]]:
        """GET with the size limit; 304 (and 404 when `missing_ok`) returned, else 200."""
        assert self.session is not None
        try:
            return await fetch(self.session, url, params=params, headers=headers,
                               timeout=timeout, max_bytes=self.max_bytes,
                               limit_key="limits.files.feed_bytes", missing_ok=missing_ok)
        except FetchError as exc:
            raise Rejected(exc.reason, str(exc)) from None

    # ------------------------------------------------------------------ held updates

    def confirm(self, held_id: str) -> bool:
        """Apply the held update the operator confirmed (by its id: the serial or sha256)."""
        if not self.hold.held_id or held_id != self.hold.held_id:
            log.error("feed %s: confirmation for %r, but %s is held", self.name, held_id,
                      self.hold.held_id or "nothing")
            return False
        if isinstance(self.part, SignedFeed):
            n = self.part.release()
            log.warning("feed %s: %d held changes (update %s) confirmed by the operator and "
                        "applied", self.name, n, held_id)
            return True
        try:
            body, sig = self.hold.read()
            meta = json.loads(sig or "{}")
            self.part.accept(body, meta.get("etag", ""),
                             meta.get("last_modified", ""), confirmed=True)
        except (OSError, ValueError) as exc:
            log.error("feed %s: cannot read the held update: %s", self.name, exc)
            return False
        except Rejected as exc:
            self.ctx.metrics.rejected.labels(self.name, exc.reason).inc()
            log.error("feed %s: the held update can no longer be applied (%s): %s", self.name,
                      exc.reason, exc)
            return False
        log.warning("feed %s: held update %s confirmed by the operator and applied", self.name,
                    held_id)
        self.hold.clear()
        return True


STATUS_IDS = 20     # held entry ids shown by `safegate feeds status` (the count is exact)


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def status_of(state_dir: Path, name: str) -> dict[str, Any]:
    """What `safegate feeds status` shows from the files (works with the gateway stopped)."""
    d = state_dir / "feeds"
    out: dict[str, Any] = {"feed": name}
    with contextlib.suppress(OSError, ValueError):
        held = json.loads(held_paths(state_dir, name)[0].read_text())
        entries = held.pop("entries", None)
        if isinstance(entries, dict):   # a signed feed: its held changes, by entry id
            held["ids"] = sorted(entries)[:STATUS_IDS]
        out["held"] = held
    with contextlib.suppress(OSError, ValueError):
        out["snapshot_serial"] = json.loads((d / f"{name}.json").read_bytes())["serial"]
    diffs = sorted((d / f"{name}.d").glob("*.json"))
    if diffs:
        out["serial"] = int(diffs[-1].stem)
        out["diffs"] = len(diffs)
    elif "snapshot_serial" in out:
        out["serial"] = out["snapshot_serial"]
    with contextlib.suppress(OSError, ValueError):
        out["list_sha256"] = json.loads((d / f"{name}.meta.json").read_text())["sha256"]
    return out
