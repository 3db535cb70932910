"""Feed metrics (names are a contract) and the hourly query aggregates shared in acks.

The aggregates are what a publisher may learn about a school's traffic: per hour, per category
and tier, how many queries and how many were blocked. Never a client address or a name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.feedformat.stats import HOUR, LATENCY_BUCKETS, PROBE_RESULTS, hour_of

log = logging.getLogger(__name__)

REJECT_REASONS = ("unsigned", "bad_signature", "truncated", "malformed", "old_serial", "guard",
                  "http", "too_big", "not_modified", "stale")


class QueryCounts(Protocol):
    """The DNS path's counters (runtime's DnsStats): queries by (action, category, tier,
    protocol), only ever growing within a process."""

    @property
    def queries(self) -> Mapping[tuple[str, str, str, str], int]: ...


class StatsSink(Protocol):
    """Where closed hours go (the ledger's stats_hourly)."""

    def add_stats(self, hour: int, delta: dict[tuple[str, str], tuple[int, int]]) -> None: ...


class FeedMetrics:
    """Every feed metric, created against the registry passed in (README "Metrics")."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.serial = Gauge("safegate_feed_serial", "Serial of the feed document in force.",
                            ["feed"], registry=registry)
        self.last_success = Gauge(
            "safegate_feed_last_success_timestamp_seconds",
            "When the feed was last fetched (or found unchanged) and valid; for a signed feed only "
            "while its newest verified document is within max_age.", ["feed"],
            registry=registry)
        self.document_age = Gauge(
            "safegate_feed_document_age_seconds",
            "Seconds since the publisher signed the newest verified document of a signed feed "
            "(+Inf until one is verified).", ["feed"], registry=registry)
        self.stale = Gauge(
            "safegate_feed_stale",
            "1 while a signed feed's newest verified document is older than feeds[].max_age "
            "(its last-known-good copy stays enforced).", ["feed"], registry=registry)
        self.entries = Gauge("safegate_feed_entries", "Entries in force per feed and category.",
                             ["feed", "category"], registry=registry)
        self.latency = Histogram(
            "safegate_enforcement_latency_seconds",
            "Time from an entry's issued_at to the first self-probe that saw it blocked.",
            ["feed"], buckets=LATENCY_BUCKETS, registry=registry)
        self.overdue = Gauge(
            "safegate_enforcement_overdue_entries",
            "Mandatory block entries past their deadline (or issued_at + 24 h) and not verified.",
            ["feed"], registry=registry)
        self.probes = Counter("safegate_probe_checks", "Self-probes of feed entries, by result.",
                              ["result"], registry=registry)
        self.rejected = Counter("safegate_feed_rejected",
                                "Feed documents not applied, by reason.", ["feed", "reason"],
                                registry=registry)
        self.refused = Counter("safegate_feed_refused_entries",
                               "Feed entries refused because they cover a never_block name.",
                               ["feed"], registry=registry)
        self.held = Gauge("safegate_feed_held_updates",
                          "1 while an oversized update waits for `safegate feeds confirm`.",
                          ["feed"], registry=registry)
        self.held_entries = Gauge(
            "safegate_feed_held_entries",
            "Changes of a signed feed held by max_change (out of force until `safegate feeds "
            "confirm`; later updates apply meanwhile).", ["feed"], registry=registry)
        self.outbox_pending = Gauge("safegate_feed_outbox_pending",
                                    "Acks waiting to be delivered to publishers.",
                                    registry=registry)
        self.ack_failures = Counter(
            "safegate_feed_ack_failures",
            "Ack deliveries that failed; each is retried (the ack waits in the outbox).",
            ["feed", "reason"], registry=registry)
        self.ack_unauthorized = Gauge(
            "safegate_feed_ack_unauthorized",
            "1 while the publisher refuses this gateway's token (401/403: unknown or revoked; "
            "enroll again). Acks wait in the outbox meanwhile.", ["feed"], registry=registry)
        for result in PROBE_RESULTS:
            self.probes.labels(result)
        self._categories: dict[str, set[str]] = {}

    def init_feed(self, feed: str) -> None:
        for reason in REJECT_REASONS:
            self.rejected.labels(feed, reason)
        self.refused.labels(feed)
        self.held.labels(feed).set(0)
        self.held_entries.labels(feed).set(0)
        self.overdue.labels(feed).set(0)

    def init_acks(self, feed: str, reasons: tuple[str, ...]) -> None:
        for reason in reasons:
            self.ack_failures.labels(feed, reason)
        self.ack_unauthorized.labels(feed).set(0)

    def init_signed(self, feed: str, age: Callable[[], float], max_age: float) -> None:
        """Age and staleness of a signed feed, computed at scrape time from `age`."""
        self.document_age.labels(feed).set_function(age)
        self.stale.labels(feed).set_function(lambda: float(not age() <= max_age))

    def set_entries(self, feed: str, by_category: dict[str, int]) -> None:
        """Replace the feed's per-category counts (categories that vanished go to 0)."""
        for category in self._categories.get(feed, set()) - set(by_category):
            self.entries.labels(feed, category).set(0)
        for category, n in by_category.items():
            self.entries.labels(feed, category).set(n)
        self._categories[feed] = self._categories.get(feed, set()) | set(by_category)


class HourlyStats:
    """Turns the DNS path's ever-growing counters into per-hour deltas stored in stats_hourly.

    Counters only grow within a process, so a delta needs only the previous snapshot; the
    partial hour is flushed on stop and added to (not replacing) the stored row on restart.
    """

    def __init__(self, dns: QueryCounts, ledger: StatsSink, clock: Callable[[], float],
                 on_hour: Callable[[int], None] | None = None) -> None:
        self.dns = dns
        self.ledger = ledger
        self.clock = clock
        self.on_hour = on_hour
        self.hour = hour_of(clock())
        self._base: dict[tuple[str, str], tuple[int, int]] = {}

    def totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(category, tier) -> (queries, blocked) since start; probes and tierless excluded."""
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for (action, category, tier, protocol), n in list(self.dns.queries.items()):
            if protocol == "probe" or not tier:
                continue
            key = (category or "none", tier)
            q, b = out.get(key, (0, 0))
            out[key] = (q + n, b + (n if action == "blocked" else 0))
        return out

    def flush(self) -> int:
        """Store what was counted since the last flush under the current hour; returns it."""
        now = self.totals()
        delta = {}
        for key, (q, b) in now.items():
            q0, b0 = self._base.get(key, (0, 0))
            if q - q0 or b - b0:
                delta[key] = (q - q0, b - b0)
        self._base = now
        hour = self.hour
        self.ledger.add_stats(hour, delta)
        return hour

    def tick(self) -> bool:
        """At an hour boundary: close the finished hour (True if one was closed)."""
        current = hour_of(self.clock())
        if current <= self.hour:
            return False
        closed = self.flush()
        self.hour = current
        if self.on_hour is not None:
            self.on_hour(closed)
        return True

    def seconds_to_next_hour(self) -> float:
        return max(0.5, self.hour + HOUR - self.clock())
