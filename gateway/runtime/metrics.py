"""Prometheus metrics: names and labels are a contract (README "Metrics"); none carries a client.

Per-query counters are plain Python ints exported by a collector at scrape time: a
prometheus-client `.labels(...).inc()` costs about a microsecond, which the per-query path
cannot pay several times over. Slow-path metrics (upstreams, reloads) use prometheus-client
directly, always against the registry passed in (no global registry).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.dns.cache import SEGMENTS as CACHE_SEGMENTS
from gateway.dns.stats import LATENCY_BUCKETS, DnsStats, StreamStats
from gateway.dns.upstream_base import Upstream, UpstreamObserver

if TYPE_CHECKING:
    from gateway.dns.chain import Resolver
    from gateway.dns.rrl import Rrl


class StreamCollector(Collector):
    """Exports StreamStats at scrape time."""

    def __init__(self, stats: StreamStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("safegate_dns_stream_connections",
                              "Open DNS connections over TCP or TLS (DoT).", labels=["protocol"])
        for protocol, n in self.stats.connections.items():
            g.add_metric([protocol], n)
        yield g
        r = CounterMetricFamily("safegate_dns_stream_refused",
                                "DNS TCP/DoT connections refused at accept, by the limit hit.",
                                labels=["protocol", "reason"])
        for (protocol, reason), n in self.stats.refused.items():
            r.add_metric([protocol, reason], n)
        yield r
        c = CounterMetricFamily("safegate_dns_stream_closed",
                                "DNS TCP/DoT connections the gateway closed, by reason.",
                                labels=["protocol", "reason"])
        for (protocol, reason), n in self.stats.closed.items():
            c.add_metric([protocol, reason], n)
        yield c
        u = CounterMetricFamily("safegate_dns_udp_send_dropped",
                                "UDP replies dropped because the socket's send buffer and the "
                                "batched listener's queue (limits.udp.send_queue_bytes) were full.")
        u.add_metric([], self.stats.udp["send_dropped"])
        yield u


class GatewayCollector(Collector):
    """Exports DnsStats, the cache's counters and list sizes at scrape time."""

    def __init__(self, stats: DnsStats, cache_stats: Callable[[], dict[str, int]],
                 list_entries: Callable[[], dict[str, int]]) -> None:
        self.stats = stats
        self.cache_stats = cache_stats
        self.list_entries = list_entries

    def collect(self) -> Iterator[Metric]:
        q = CounterMetricFamily("safegate_dns_queries", "DNS queries answered, by what was done.",
                                labels=["action", "category", "tier", "protocol"])
        for labels, value in sorted(self.stats.queries.items()):
            q.add_metric(list(labels), value)
        yield q
        h = HistogramMetricFamily("safegate_dns_request_duration_seconds",
                                  "Time from a query's arrival to its reply being sent.")
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.stats.buckets, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        h.add_metric([], buckets, self.stats.duration_sum)
        yield h
        cache = self.cache_stats()
        for name, help_text in (("hits", "Answers served from the cache."),
                                ("misses", "Lookups that found no fresh cache entry."),
                                ("evictions", "Entries evicted to keep the cache bounded."),
                                ("stale_served", "Expired answers served because every upstream "
                                                 "failed (RFC 8767)."),
                                ("promotions", "Cached answers asked again while in probation, "
                                               "moved to the protected segment (a flood of "
                                               "unique names cannot evict them).")):
            c = CounterMetricFamily(f"safegate_cache_{name}", help_text)
            c.add_metric([], cache[name])
            yield c
        g = GaugeMetricFamily("safegate_cache_entries", "Entries in the answer cache.")
        g.add_metric([], cache["entries"])
        yield g
        # Per segment: probation (asked once) and protected (asked again).
        per_segment: tuple[tuple[type[CounterMetricFamily | GaugeMetricFamily], str, str], ...] = (
            (CounterMetricFamily, "evictions",
             "Entries evicted, by cache segment: probation (asked once) or protected (asked "
             "again; evicted only while probation is empty)."),
            (GaugeMetricFamily, "entries",
             "Entries in the answer cache, by segment (this process; probation holds at least "
             "limits.memory.cache_probation percent)."))
        for family, name, help_text in per_segment:
            f = family(f"safegate_cache_segment_{name}", help_text, labels=["segment"])
            for segment in CACHE_SEGMENTS:
                f.add_metric([segment], cache[f"{name}_{segment}"])
            yield f
        e = GaugeMetricFamily("safegate_list_entries", "Names loaded per category.",
                              labels=["category"])
        for category, n in sorted(self.list_entries().items()):
            e.add_metric([category], n)
        yield e


RRL_ACTIONS = ("slipped", "dropped")


class RrlCollector(Collector):
    """Response rate limiting (dns/rrl.py), read at scrape time: the check itself stays a few
    hundred nanoseconds, so it counts in plain ints."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts   # slipped, dropped, buckets

    def collect(self) -> Iterator[Metric]:
        counts = self.counts()
        c = CounterMetricFamily("safegate_rrl_limited",
                                "UDP responses held back by response rate limiting: sent as a "
                                "bare TC=1 reply (slipped) or not sent (dropped).",
                                labels=["action"])
        for action in RRL_ACTIONS:
            c.add_metric([action], counts.get(action, 0))
        yield c
        g = GaugeMetricFamily("safegate_rrl_buckets",
                              "(source prefix, response) buckets response rate limiting tracks "
                              "(at most limits.rrl.table_size per process).")
        g.add_metric([], counts.get("buckets", 0))
        yield g


class UpstreamHealthCollector(Collector):
    """safegate_upstream_healthy: each upstream's health as the forwarder keeps it (the same
    for udp, tls and https), read at scrape time from the primary's forwarders."""

    def __init__(self, upstreams: Callable[[], list[Upstream]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.upstreams = upstreams
        self.clock = clock   # the forwarder's clock: benched_until is on it

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("safegate_upstream_healthy",
                              "1 while an upstream is asked in its turn; 0 while benched after "
                              "dns.fail_threshold failures in a row (asked only as a last "
                              "resort until the bench ends).", labels=["upstream"])
        now = self.clock()
        health: dict[str, int] = {}
        for u in self.upstreams():
            health[u.label] = min(health.get(u.label, 1), int(u.benched_until <= now))
        for label, healthy in health.items():
            g.add_metric([label], healthy)
        yield g


class Metrics:
    """Every SafeGate gateway metric, created against one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.dns = DnsStats()
        self.streams = StreamStats()
        registry.register(StreamCollector(self.streams))
        self.upstream_queries = Counter(
            "safegate_upstream_queries", "Queries sent to upstream resolvers.",
            ["upstream", "protocol"], registry=registry)
        self.upstream_errors = Counter(
            "safegate_upstream_errors", "Failed upstream attempts, by reason.",
            ["upstream", "reason"], registry=registry)
        self.upstream_latency = Histogram(
            "safegate_upstream_request_duration_seconds", "Upstream round-trip time.",
            ["upstream"], buckets=LATENCY_BUCKETS, registry=registry)
        self.upstream_mismatched = Counter(
            "safegate_upstream_mismatched_replies",
            "Upstream replies ignored: unknown_id (late or spoofed), question (ID guessed, "
            "question wrong), case (dns.upstream_0x20 case not echoed: a spoofing attempt).",
            ["upstream", "reason"], registry=registry)
        self.upstream_dropped = Counter(
            "safegate_upstream_dropped",
            "Questions answered SERVFAIL without asking an upstream: limits.upstream.inflight "
            "(inflight) or its per-registrable-domain share (zone) was full.",
            ["reason"], registry=registry)
        self.upstream_sockets = Gauge(
            "safegate_upstream_sockets",
            "UDP sockets and TLS connections open to upstreams (all resolver processes).",
            registry=registry)
        # dns.workers: each worker's last reported count, added to the primary's own.
        self.worker_upstream_sockets: dict[int, int] = {}
        self.reloads = Counter(
            "safegate_config_reloads", "Configuration and list reloads, by result.",
            ["result"], registry=registry)
        self.last_reload_success = Gauge(
            "safegate_config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded.", registry=registry)
        self.last_reload_ok = Gauge(
            "safegate_config_last_reload_successful",
            "1 if the last reload attempt succeeded, 0 if it failed (the old config still runs).",
            registry=registry)
        self.ready = Gauge("safegate_ready", "1 once policies and lists are loaded.",
                           registry=registry)
        # Read at scrape time from the running view (gateway/runtime/app.py sets the function).
        self.blocked_bodies = Gauge(
            "safegate_blocked_bodies",
            "Prebuilt blocked-reply bodies kept (at most limits.memory.blocked_bodies).",
            registry=registry)
        # process_* (CPU, memory, open files) of this process, as Prometheus clients expect.
        ProcessCollector(registry=registry)
        info = Gauge("safegate_build_info", "SafeGate version.", ["version"], registry=registry)
        info.labels(__version__).set(1)
        for result in ("success", "failure"):
            self.reloads.labels(result)

    def init_upstreams(self, labels: list[str], open_sockets: Callable[[], int] | None = None
                       ) -> None:
        """Create every upstream's series at 0, so rate() sees the first error too.

        `open_sockets`: the primary's forwarder's count, read at scrape time."""
        from gateway.dns.upstream_base import (
            DROP_REASONS,
            ERROR_REASONS,
            MISMATCH_REASONS,
            PROTOCOLS,
        )

        for label in labels:
            for reason in ERROR_REASONS:
                self.upstream_errors.labels(label, reason)
            for reason in MISMATCH_REASONS:
                self.upstream_mismatched.labels(label, reason)
            scheme = label.partition("://")[0] if "://" in label else "udp"
            for protocol in PROTOCOLS.get(scheme, ("udp", "tcp")):
                self.upstream_queries.labels(label, protocol)
        for reason in DROP_REASONS:
            self.upstream_dropped.labels(reason)
        if open_sockets is not None:
            workers = self.worker_upstream_sockets
            self.upstream_sockets.set_function(lambda: open_sockets() + sum(workers.values()))

    def observe_collector(self, collector: Any) -> None:
        self.registry.register(collector)

    def upstream_observer(self) -> UpstreamObserver:
        return _UpstreamMetrics(self)


class _UpstreamMetrics(UpstreamObserver):
    """Every miss calls query() and latency(): the labelled children are looked up once per
    label set (`.labels()` costs ~2 us a call; the label sets are the configured upstreams)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self._queries: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}

    def query(self, upstream: str, protocol: str) -> None:
        child = self._queries.get((upstream, protocol))
        if child is None:
            child = self._queries[(upstream, protocol)] = \
                self.m.upstream_queries.labels(upstream, protocol)
        child.inc()

    def error(self, upstream: str, reason: str) -> None:
        self.m.upstream_errors.labels(upstream, reason).inc()

    def latency(self, upstream: str, seconds: float) -> None:
        child = self._latency.get(upstream)
        if child is None:
            child = self._latency[upstream] = self.m.upstream_latency.labels(upstream)
        child.observe(seconds)

    def mismatch(self, upstream: str, reason: str) -> None:
        self.m.upstream_mismatched.labels(upstream, reason).inc()

    def dropped(self, reason: str) -> None:
        self.m.upstream_dropped.labels(reason).inc()


def register_collectors(registry: CollectorRegistry, metrics: Metrics, resolver: Resolver,
                        rrl: Rrl, extra: dict[str, int], loaded: Callable[[], Any]) -> None:
    """The node's scrape-time collectors: answer cache and list sizes, RRL (each plus the other
    workers' counts in `extra`) and upstream health. `loaded` gives the running state."""
    cache, forwarder, zones = resolver.cache, resolver.forwarder, resolver.zones.zones
    registry.register(UpstreamHealthCollector(
        lambda: [u for f in (forwarder, *zones.values()) for u in f.upstreams]))
    registry.register(GatewayCollector(
        metrics.dns,
        lambda: {**{k: n + extra.get(k, 0) for k, n in cache.counters().items()},
                 **{f"entries_{k}": n for k, n in cache.segment_sizes().items()},
                 "entries": len(cache)},
        lambda: dict(loaded().index.entries_by_category) if loaded() else {}))
    metrics.blocked_bodies.set_function(
        lambda: len(loaded().view.answers.bodies) if loaded() else 0)
    registry.register(RrlCollector(
        lambda: {"slipped": rrl.slipped + extra.get("rrl_slipped", 0),
                 "dropped": rrl.dropped + extra.get("rrl_dropped", 0),
                 "buckets": len(rrl) + extra.get("rrl_buckets", 0)}))
