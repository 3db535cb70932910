"""Fetching a signed feed by serial, so an HTTP cache in front of the publisher can serve it.

One poll: long-poll the signed head (GET /v1/feed/head?after=OURS&wait=S, every gateway on the
same serial asks the same URL, which a cache coalesces), verify it, and when it names a newer
serial fetch the immutable diff from ours (or the snapshot when we have no base, the chain is
long, or ours is older than the publisher keeps diffs for). The document then goes through the
signed feed's usual checks (signature before parsing, guard, chain on disk).

A cache cannot forge anything: a tampered head or document fails its signature, the rules in
force stay, and the next poll goes around the cache once (the legacy GET /v1/feed, which
caches do not store) so a poisoned cache entry cannot hold a gateway back for its year of
validity. Freshness comes from the head: an immutable document's own generated_at is when its
serial was published, so the head's signing time is what says "still the latest, as of now".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from gateway.feedformat.document import FeedError
from gateway.feedformat.head import HEAD_PATH, Head, diff_path, parse_head, snapshot_path
from gateway.feedformat.signing import SIGNATURE_HEADER, Verifier
from gateway.feeds.context import FeedContext, Rejected

log = logging.getLogger(__name__)

# Rejections a cache in between could cause: the next poll bypasses the cache.
CACHE_SUSPECT = ("unsigned", "bad_signature", "truncated", "malformed", "old_serial")
DOC_TIMEOUT = 60.0


class FetchUrl(Protocol):
    """GET url -> (status, body, headers); 404 is returned (not raised) when missing_ok."""

    async def __call__(self, url: str, params: dict[str, str], headers: dict[str, str],
                       timeout: float, *, missing_ok: bool = False
                       ) -> tuple[int, bytes, Mapping[str, str]]: ...


class AppliedLike(Protocol):
    @property
    def serial(self) -> int: ...
    @property
    def diffs(self) -> int: ...


class SignedLike(Protocol):
    """What a by-serial poll needs from the signed feed (gateway/feeds/signed.py)."""

    ctx: FeedContext
    verifier: Verifier
    want_full: bool

    @property
    def applied(self) -> AppliedLike | None: ...
    @property
    def serial(self) -> int: ...
    def fresh(self) -> bool: ...
    def saw_signed_at(self, generated_at: str) -> None: ...
    async def accept_async(self, body: bytes, signature: str | None) -> str: ...


def feed_base(url: str) -> str:
    """The publisher's base URL: the feed URL without its /v1/feed (or its origin)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    path = path[:-len("/v1/feed")] if path.endswith("/v1/feed") else ""
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class SerialPoll:
    """The by-serial half of a signed feed's poll (FeedConfig.by_serial)."""

    def __init__(self, feed: SignedLike, fetch: FetchUrl, max_diffs: int) -> None:
        self.feed = feed
        self.fetch = fetch
        self.max_diffs = max_diffs
        self.base = feed_base(feed.ctx.cfg.url)
        self.bypass = False     # the next poll goes around caches (set after a suspect reject)

    def _head(self, body: bytes, signature: str | None) -> Head:
        try:
            self.feed.verifier.verify(body, signature)
            return parse_head(body)
        except FeedError as exc:
            raise Rejected(exc.reason, f"feed head: {exc}") from None

    async def poll(self) -> str:
        """updated | unchanged | current (no news after a long poll) | moved | need_full."""
        feed, cfg = self.feed, self.feed.ctx.cfg
        applied = feed.applied
        params: dict[str, str] = {}
        if applied is not None:
            params["after"] = str(applied.serial)
            if cfg.long_poll:
                params["wait"] = str(int(cfg.long_poll))
        try:
            # Twice the long poll: behind a cache, a gateway that joins a coalesced wait just
            # as its answer expires waits out the next one too (seen at 10,000 gateways).
            _, body, headers = await self.fetch(self.base + HEAD_PATH, params, {},
                                                2 * cfg.long_poll + 30)
            head = self._head(body, headers.get(SIGNATURE_HEADER))
            if applied is not None and head.serial < applied.serial:
                raise Rejected("old_serial", f"the head names serial {head.serial}, older than "
                                             f"the applied {applied.serial}")
        except Rejected as exc:
            self._suspect(exc)
            raise
        if applied is not None and head.serial == applied.serial:
            feed.saw_signed_at(head.generated_at)
            if feed.fresh():
                feed.ctx.success()
            # "current" keeps the 1 s gap between long polls; without long polls, the interval
            return "current" if cfg.long_poll else "unchanged"
        use_diff = (applied is not None and not feed.want_full
                    and applied.diffs < self.max_diffs
                    and head.serial - applied.serial <= head.diff_history)
        path = (diff_path(applied.serial, head.serial) if use_diff and applied is not None
                else snapshot_path(head.serial))
        status, body, headers = await self.fetch(self.base + path, {}, {}, DOC_TIMEOUT,
                                                 missing_ok=True)
        if status == 404:
            log.info("feed %s: %s is gone (the publisher moved past serial %d); asking the "
                     "head again", feed.ctx.name, path, head.serial)
            return "moved"
        try:
            result = await feed.accept_async(body, headers.get(SIGNATURE_HEADER))
        except Rejected as exc:
            self._suspect(exc)
            raise
        if result == "need_full":
            feed.want_full = True
            return result
        feed.want_full = False
        if feed.serial == head.serial:
            feed.saw_signed_at(head.generated_at)
        if feed.fresh():
            feed.ctx.success()
        return result

    def _suspect(self, exc: Rejected) -> None:
        if exc.reason in CACHE_SUSPECT:
            self.bypass = True
            log.warning("feed %s: %s from the serial-addressed feed (a cache in between may "
                        "hold a bad copy); next poll goes to %s directly", self.feed.ctx.name,
                        exc.reason, self.feed.ctx.cfg.url)
