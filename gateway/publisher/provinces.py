"""The ministry's view of its provinces: which school gateway belongs to which province, and the
per-province roll-up metrics.

Schools behind a province ack through it; the ministry records each under the id
"<province>/<school>" (a gateway id cannot contain "/", so the two never collide) in the
ordinary gateways/acks tables, so every per-gateway metric and `safegate report` section shows
it, and keeps the (gateway, province) pairs here for the roll-ups. Label values stay bounded:
provinces are configured, and each may register at most limits.province_gateways schools.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.feedformat.stats import LATENCY_BUCKETS
from gateway.publisher.db import Database
from gateway.publisher.metrics import overdue_counts
from gateway.publisher.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS province_gateways (gateway TEXT PRIMARY KEY,
  province TEXT NOT NULL, first_seen REAL NOT NULL);
CREATE INDEX IF NOT EXISTS province_gateways_province ON province_gateways (province);
"""
# safegate_publisher_province_acks_rejected_total{province, reason}
PROVINCE_REJECT_REASONS = ("malformed", "too_large", "future_serial", "unknown_entries",
                           "province_full")


def namespaced(province: str, school: str) -> str:
    return f"{province}/{school}"


class ProvinceRegistry:
    """The province_gateways table (in the publisher database) and the refusal counters."""

    def __init__(self, db: Database, provinces: list[str], limit: int,
                 registry: CollectorRegistry) -> None:
        self.db = db
        self.provinces = sorted(provinces)
        self.limit = limit
        db.executescript(SCHEMA)
        self.rejected = Counter("safegate_publisher_province_acks_rejected",
                                "Acks forwarded by a province and refused whole, by reason.",
                                ["province", "reason"], registry=registry)
        for p in self.provinces:
            for reason in PROVINCE_REJECT_REASONS:
                self.rejected.labels(p, reason)

    def admit(self, province: str, gateway: str, now: float) -> bool:
        """Register `gateway` under `province`; False once the province has `limit` schools."""
        if self.db.execute("SELECT 1 FROM province_gateways WHERE gateway=?",
                           (gateway,)).fetchone():
            return True
        # One write transaction: two ministry processes admitting at once would both see
        # room for the last school and both insert.
        with self.db.write() as db:
            if db.execute("SELECT 1 FROM province_gateways WHERE gateway=?",
                          (gateway,)).fetchone():
                return True
            count = int(db.execute("SELECT count(*) FROM province_gateways WHERE province=?",
                                   (province,)).fetchone()[0])
            if count >= self.limit:
                return False
            db.execute("INSERT OR IGNORE INTO province_gateways (gateway, province, first_seen) "
                       "VALUES (?,?,?)", (gateway, province, now))
        return True

    def gateways(self) -> dict[str, str]:
        """gateway -> province, for the configured provinces only."""
        known = set(self.provinces)
        return {g: p for g, p in self.db.execute(
            "SELECT gateway, province FROM province_gateways ORDER BY gateway") if p in known}


class ProvinceCollector(Collector):
    """Per-province roll-ups (and the gateway -> province pairs for joins in PromQL)."""

    def __init__(self, store: Store, provinces: ProvinceRegistry, overdue_after_hours: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.provinces = provinces
        self.overdue_after_hours = overdue_after_hours
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        store, names = self.store, self.provinces.provinces
        members = self.provinces.gateways()
        info = GaugeMetricFamily("safegate_publisher_gateway_province",
                                 "1 for each school gateway that reports through a province "
                                 "(join on gateway for per-province views).",
                                 labels=["gateway", "province"])
        for gw, p in members.items():
            info.add_metric([gw, p], 1)
        yield info

        def gauge(name: str, text: str, values: dict[str, float]) -> Metric:
            g = GaugeMetricFamily(name, text, labels=["province"])
            for p in names:
                g.add_metric([p], values.get(p, 0))
            return g

        count: dict[str, float] = {}
        for p in members.values():
            count[p] = count.get(p, 0) + 1
        yield gauge("safegate_publisher_province_gateways",
                    "School gateways that have acked through the province.", count)
        serial, rows = store.serial(), store.gateway_rows()
        behind: dict[str, float] = {}
        oldest: dict[str, float] = {}
        for gw, p in members.items():
            row = rows.get(gw)
            if row is None or row.applied_serial < serial:
                behind[p] = behind.get(p, 0) + 1
            last = (row.last_ack or 0.0) if row else 0.0
            oldest[p] = min(oldest.get(p, last), last)
        yield gauge("safegate_publisher_province_gateways_behind",
                    "School gateways of the province below the feed's serial.", behind)
        yield gauge("safegate_publisher_province_oldest_ack_timestamp_seconds",
                    "The oldest last-ack time among the province's gateways (0: one never "
                    "acked).", oldest)
        overdue: dict[str, float] = {}
        for gw, n in overdue_counts(store, list(members), self.clock(),
                                    self.overdue_after_hours).items():
            overdue[members[gw]] = overdue.get(members[gw], 0) + n
        yield gauge("safegate_publisher_province_overdue_entries",
                    "Overdue (gateway, entry) pairs in the province: mandatory block entries "
                    "past their deadline a school gateway has not verified.", overdue)
        yield from self._traffic(members)
        yield self._latency(members)

    def _traffic(self, members: dict[str, str]) -> Iterator[Metric]:
        queries = CounterMetricFamily("safegate_publisher_province_queries",
                                      "DNS queries the province's gateways reported.",
                                      labels=["province"])
        blocked = CounterMetricFamily("safegate_publisher_province_blocked",
                                      "Blocked queries the province's gateways reported.",
                                      labels=["province"])
        q: dict[str, int] = {}
        b: dict[str, int] = {}
        for gw, _cat, _tier, nq, nb in self.store.stats_totals():
            p = members.get(gw)
            if p is not None:
                q[p] = q.get(p, 0) + nq
                b[p] = b.get(p, 0) + nb
        for p in self.provinces.provinces:
            queries.add_metric([p], q.get(p, 0))
            blocked.add_metric([p], b.get(p, 0))
        yield queries
        yield blocked

    def _latency(self, members: dict[str, str]) -> Metric:
        h = HistogramMetricFamily(
            "safegate_publisher_province_enforcement_latency_seconds",
            "Issued -> verified, over every (school gateway, entry) of the province.",
            labels=["province"])
        values: dict[str, list[float]] = {p: [] for p in self.provinces.provinces}
        for gw, seconds in self.store.verified_latencies():
            p = members.get(gw)
            if p is not None:
                values[p].append(seconds)
        for p, vals in values.items():
            buckets = [(repr(float(le)), sum(1 for v in vals if v <= le))
                       for le in LATENCY_BUCKETS]
            buckets.append(("+Inf", len(vals)))
            h.add_metric([p], buckets, sum(vals))
        return h
