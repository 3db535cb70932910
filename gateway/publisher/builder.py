"""The legacy `/v1/feed` documents, signed once per (serial, since) and re-signed at the
heartbeat (the serial-addressed ones of `by_serial` feeds are in serialfeed.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.feedformat.document import Feed, now_iso
from gateway.feedformat.signing import Signer
from gateway.publisher.store import Store


@dataclass(frozen=True)
class SignedDoc:
    serial: int
    body: bytes
    signature: str
    full_fallback: bool = False   # a snapshot served for a diff request that was too old


class FeedBuilder:
    """Signed documents, built once per (serial, since): every gateway woken by a new serial
    asks for the same diff at the same moment.

    The heartbeat: a cached document older than `heartbeat` seconds is built and signed again
    (new generated_at, same entries), so whatever a gateway fetches is at most that old even
    on a feed nobody has written to for weeks. Gateways check that age (feeds[].max_age):
    a cache or relay replaying an old answer cannot pass for a live publisher.
    """

    MAX_CACHED = 256

    def __init__(self, store: Store, signer: Signer, diff_history: int,
                 heartbeat: float = 3600.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.store = store
        self.signer = signer
        self.diff_history = diff_history
        self.heartbeat = heartbeat
        self.clock = clock
        self._cache: dict[tuple[int, int | None], tuple[SignedDoc, float]] = {}

    def build(self, current: int, since: int | None) -> SignedDoc:
        """A snapshot (since None, or since older than diff_history) or a diff from `since`."""
        full_fallback = since is not None and current - since > self.diff_history
        key = (current, None if full_fallback else since)
        now = self.clock()
        cached = self._cache.get(key)
        doc = cached[0] if cached is not None and now - cached[1] < self.heartbeat else None
        if doc is None:
            if key[1] is None:
                serial, entries = self.store.snapshot()
                feed = Feed(serial, now_iso(), tuple(entries))
            else:
                serial, entries, removed = self.store.diff(key[1])
                feed = Feed(serial, now_iso(), tuple(entries), tuple(removed), key[1])
            feed = replace(feed, forced=tuple(self.store.forced_ids(key[1], serial)))
            body = feed.to_bytes()
            doc = SignedDoc(serial, body, self.signer.sign(body))
            if serial == current:   # a write can land between serial() and the read
                if len(self._cache) >= self.MAX_CACHED:
                    self._cache.clear()
                self._cache[key] = (doc, now)
        if full_fallback:
            doc = SignedDoc(doc.serial, doc.body, doc.signature, True)
        return doc
