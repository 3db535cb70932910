"""Publisher metrics, computed from SQLite at scrape time (the CLI writes from elsewhere).

Label values are bounded: `gateway` comes from publisher.yaml, `category`/`tier` are checked
names from acks, `result` is one of PROBE_RESULTS.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.feedformat.document import FeedEntry, parse_time
from gateway.feedformat.stats import LATENCY_BUCKETS, PROBE_RESULTS
from gateway.publisher.store import Store


class AckMetrics:
    """Acks refused or trimmed, counted in-process (they never reach the database)."""

    def __init__(self, registry: CollectorRegistry, gateways: list[str],
                 reasons: tuple[str, ...]) -> None:
        self.rejected = Counter("safegate_publisher_acks_rejected",
                                "Acks refused whole (nothing recorded), by reason.",
                                ["gateway", "reason"], registry=registry)
        self.stats_dropped = Counter(
            "safegate_publisher_ack_stats_dropped",
            "Stats rows not stored because the gateway already has limits.stats_series "
            "(category, tier) series.", ["gateway"], registry=registry)
        for gw in gateways:
            for reason in reasons:
                self.rejected.labels(gw, reason)
            self.stats_dropped.labels(gw)


def entry_deadline(entry: FeedEntry, default_hours: float) -> float:
    """Unix time by which gateways must enforce `entry` (its deadline, else issued + default)."""
    if entry.deadline is not None:
        return parse_time(entry.deadline).timestamp()
    return (parse_time(entry.issued_at) + timedelta(hours=default_hours)).timestamp()


def overdue_counts(store: Store, gateways: list[str], now: float,
                   default_hours: float) -> dict[str, int]:
    """Per gateway: live mandatory block entries past their deadline it has not verified (nor
    acked not_applicable: it has no part that enforces that type)."""
    due = [e.id for e in store.mandatory_block_entries()
           if entry_deadline(e, default_hours) <= now]
    verified = store.settled_ids()
    return {gw: sum(1 for eid in due if eid not in verified.get(gw, set())) for gw in gateways}


class PublisherCollector(Collector):
    """Serial, entries and per-gateway compliance, read fresh on every scrape."""

    def __init__(self, store: Store, gateways: list[str] | Callable[[], list[str]],
                 overdue_after_hours: float, clock: Callable[[], float] = time.time) -> None:
        """`gateways`: a list, or a function giving the current list (enrolled gateways come
        and go while the publisher runs)."""
        self.store = store
        self._gateways = gateways
        self.gateways = [] if callable(gateways) else sorted(gateways)
        self.overdue_after_hours = overdue_after_hours
        self.clock = clock
        # Gateways not in publisher.yaml that report anyway: a ministry's school gateways
        # behind its provinces (gateway/publisher/provinces.py), bounded there.
        self.extra_gateways: Callable[[], list[str]] = list

    def _all_gateways(self) -> list[str]:
        return sorted(set(self.gateways).union(self.extra_gateways()))

    def collect(self) -> Iterator[Metric]:
        store = self.store
        if callable(self._gateways):
            self.gateways = sorted(self._gateways())
        gateways = self._all_gateways()
        g = GaugeMetricFamily("safegate_publisher_serial", "Current serial of the feed.")
        g.add_metric([], store.serial())
        yield g
        g = GaugeMetricFamily("safegate_publisher_entries", "Live feed entries per category "
                              "(an entry in two categories counts in both).",
                              labels=["category"])
        for cat, n in sorted(store.category_counts().items()):
            g.add_metric([cat], n)
        yield g

        rows = store.gateway_rows()
        applied = GaugeMetricFamily("safegate_publisher_gateway_applied_serial",
                                    "Highest feed serial the gateway says it applied.",
                                    labels=["gateway"])
        last = GaugeMetricFamily("safegate_publisher_gateway_last_ack_timestamp_seconds",
                                 "When the gateway's last ack arrived (0: never).",
                                 labels=["gateway"])
        for gw in gateways:
            row = rows.get(gw)
            applied.add_metric([gw], row.applied_serial if row else 0)
            last.add_metric([gw], (row.last_ack or 0) if row else 0)
        yield applied
        yield last

        overdue = GaugeMetricFamily(
            "safegate_publisher_gateway_overdue_entries",
            "Mandatory block entries past their deadline that the gateway has not verified.",
            labels=["gateway"])
        for gw, n in overdue_counts(store, gateways, self.clock(),
                                    self.overdue_after_hours).items():
            overdue.add_metric([gw], n)
        yield overdue

        queries = CounterMetricFamily("safegate_publisher_gateway_queries",
                                      "DNS queries the gateway reported, from its acks.",
                                      labels=["gateway", "category", "tier"])
        blocked = CounterMetricFamily("safegate_publisher_gateway_blocked",
                                      "Blocked queries the gateway reported, from its acks.",
                                      labels=["gateway", "category", "tier"])
        configured = set(gateways)
        for gw, cat, tier, q, b in store.stats_totals():
            if gw in configured:
                queries.add_metric([gw, cat, tier], q)
                blocked.add_metric([gw, cat, tier], b)
        yield queries
        yield blocked

        yield self._latency(store, gateways)

        probes = CounterMetricFamily("safegate_publisher_gateway_probe_checks",
                                     "Self-probe results the gateway reported, from its acks.",
                                     labels=["gateway", "result"])
        totals = store.probe_totals()
        for gw in gateways:
            for result in PROBE_RESULTS:
                probes.add_metric([gw, result], totals.get((gw, result), 0))
        yield probes

    def _latency(self, store: Store, gateways: list[str]) -> Metric:
        """Issued -> verified per gateway, from the acks: the regulator's own measurement of
        how fast each order took effect (the gateways' histograms are their own view)."""
        h = HistogramMetricFamily(
            "safegate_publisher_enforcement_latency_seconds",
            "Time from an entry's issued_at to the gateway's ack that a self-probe saw it "
            "enforced.", labels=["gateway"])
        by_gateway: dict[str, list[float]] = {gw: [] for gw in gateways}
        for gw, seconds in store.verified_latencies():
            if gw in by_gateway:
                by_gateway[gw].append(seconds)
        for gw, values in by_gateway.items():
            buckets = [(repr(float(b)), sum(1 for v in values if v <= b))
                       for b in LATENCY_BUCKETS]
            buckets.append(("+Inf", len(values)))
            h.add_metric([gw], buckets, sum(values))
        return h
