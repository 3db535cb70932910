"""The proxy's self-probe: every feed URL/hash entry run through the rules the proxy serves with.

As the gateway probes a DNS entry through its live query path, the proxy probes its own
entries through its own matching code, on the very objects it swapped in: Rules.decide for a
request to the entry's URL from every client tier (what a browser's request gets), and the
HashIndex lookups an image's hash goes through (lookup_sha256, nearest). The verdicts go to
STATE_DIR/proxy-verdicts.json (gateway/feeds/proxyprobe.py owns the format), which the
gateway's prober reads to ack the entries verified. Nothing here does I/O but the write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from gateway.feedformat.document import FeedEntry
from gateway.feeds.proxyprobe import FeedVerdicts
from gateway.proxy.rules import BLOCKED, LEGAL, ClientTier, Rules
from gateway.proxy.urls import parse_entry_url

if TYPE_CHECKING:
    from gateway.proxy.hashes import HashIndex


def url_blocked(rules: Rules, tiers: Sequence[ClientTier], entry: FeedEntry) -> bool | None:
    """Whether a request for the entry's URL is answered with a block page from every tier
    expected to block it (all tiers for a mandatory entry; else those blocking one of its
    categories). None: no tier is expected to."""
    expected = [t for t in tiers if entry.mandatory or set(entry.categories) & t.blocked]
    if not expected:
        return None
    try:
        key = parse_entry_url(entry.value)
    except ValueError:
        return False   # the proxy could not index it either (sources.url_feed_entries)
    target = key.path + ("?" + urlencode(sorted(key.query)) if key.query else "")
    if not rules.intercepts(key.host, expected[0]):
        return False   # an https request for it would pass through undecrypted
    return all(rules.decide(t, key.host, key.port, target).action in (LEGAL, BLOCKED)
               for t in expected)


class HashProbe:
    """Hash entries against the index in force; a PDQ value found once is not searched again
    while it stays indexed (the lookup is deterministic: distance 0 is always within radius),
    so a reload probes only new values, not 100k of them."""

    def __init__(self) -> None:
        self._pdq_found: set[str] = set()

    def blocked(self, index: HashIndex | None, entry: FeedEntry, pdq: set[str]) -> bool:
        if index is None:
            return False
        if entry.type == "sha256":
            hit = index.lookup_sha256(bytes.fromhex(entry.value))
            return hit is not None and hit.entry.value == entry.value
        if entry.value in self._pdq_found and entry.value in pdq:
            return True
        hit = index.nearest([entry.value], 100)
        found = hit is not None and hit.distance == 0
        if found:
            self._pdq_found.add(entry.value)
        return found

    def forget_missing(self, pdq: set[str]) -> None:
        self._pdq_found &= pdq


def probe_feeds(rules: Rules, tiers: Sequence[ClientTier], index: HashIndex | None,
                feeds: Mapping[str, tuple[int, list[FeedEntry]]], hashes: HashProbe
                ) -> dict[str, FeedVerdicts]:
    """Per feed: which of its URL/hash block entries the rule set in force blocks."""
    pdq = index.pdq_values() if index is not None else set()
    hashes.forget_missing(pdq)
    out: dict[str, FeedVerdicts] = {}
    for name, (serial, entries) in feeds.items():
        blocked: set[str] = set()
        missed: set[str] = set()
        unexpected: set[str] = set()
        for e in entries:
            if e.action != "block":
                continue
            if e.type == "url":
                verdict = url_blocked(rules, tiers, e)
            elif e.type in ("sha256", "pdq"):
                verdict = hashes.blocked(index, e, pdq)
            else:
                continue
            (unexpected if verdict is None else blocked if verdict else missed).add(e.id)
        out[name] = FeedVerdicts(serial, frozenset(blocked), frozenset(missed),
                                 frozenset(unexpected))
    return out
