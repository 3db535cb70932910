"""Image hash checks for intercepted responses: gateway.proxy.hashes, off the event loop.

The image bytes live only in the flow being answered: a match stores a report with the URL and
the entry id, counts a metric, and the image is replaced. Nothing of the image is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.feedformat.document import FeedEntry
    from gateway.proxy.hashes import HashIndex, HashMatch

log = logging.getLogger(__name__)


def build_index(entries: Sequence[FeedEntry], max_bytes: int) -> HashIndex | None:
    """The index over the feeds' sha256/pdq entries; None when there are none."""
    if not entries or max_bytes < 1:
        return None
    from gateway.proxy.hashes import HashIndex, HashSettings, entries_from_feed_entries

    return HashIndex.from_entries(entries_from_feed_entries(entries),
                                  HashSettings(max_bytes=max_bytes))


def is_image(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower().startswith("image/")


class Scanner:
    """Runs the index's check (in the loop's thread pool) and times it."""

    def __init__(self, observe: Callable[[float], None]) -> None:
        self.observe = observe

    async def check(self, index: HashIndex, data: bytes, content_type: str) -> HashMatch | None:
        started = time.perf_counter()
        try:
            return await index.check(data, content_type)
        finally:
            self.observe(time.perf_counter() - started)
