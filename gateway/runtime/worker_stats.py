"""A DNS worker's counters, sent to the primary each second as deltas and added there
(gateway/runtime/workers.py): /metrics shows the node, not one process."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from gateway.dns.chain import Resolver
from gateway.dns.rrl import Rrl
from gateway.dns.stats import DnsStats, StreamStats
from gateway.dns.upstream_base import UpstreamObserver
from gateway.runtime.metrics import Metrics


@dataclass
class Deltas:
    """What a worker counted since its last report."""

    queries: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=list)
    duration_sum: float = 0.0
    cache: dict[str, int] = field(default_factory=dict)
    upstream_queries: dict[tuple[str, str], int] = field(default_factory=dict)
    upstream_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    upstream_latency: list[tuple[str, float]] = field(default_factory=list)
    upstream_mismatched: dict[tuple[str, str], int] = field(default_factory=dict)
    upstream_dropped: dict[str, int] = field(default_factory=dict)
    worker: int = 0
    upstream_sockets: int = 0                # open now (a gauge, not a delta)
    rrl: dict[str, int] = field(default_factory=dict)   # slipped, dropped, buckets (as deltas)
    streams: dict[str, dict[Any, int]] = field(default_factory=dict)  # StreamStats changes


class WorkerObserver(UpstreamObserver):
    """A worker's upstream counters, drained into Deltas each second."""

    def __init__(self) -> None:
        self.queries: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.errors: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.latencies: list[tuple[str, float]] = []
        self.mismatched: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.dropped_: defaultdict[str, int] = defaultdict(int)

    def query(self, upstream: str, protocol: str) -> None:
        self.queries[(upstream, protocol)] += 1

    def error(self, upstream: str, reason: str) -> None:
        self.errors[(upstream, reason)] += 1

    def latency(self, upstream: str, seconds: float) -> None:
        if len(self.latencies) < 10_000:   # bounded between reports
            self.latencies.append((upstream, seconds))

    def mismatch(self, upstream: str, reason: str) -> None:
        self.mismatched[(upstream, reason)] += 1

    def dropped(self, reason: str) -> None:
        self.dropped_[reason] += 1


def add_deltas(stats: DnsStats, cache_extra: dict[str, int], upstream: Metrics, d: Deltas) -> None:
    """Fold a worker's counts into the primary's (`upstream`: a gateway.runtime.metrics.Metrics)."""
    q = stats.queries
    for key, n in d.queries.items():
        q[key] = q.get(key, 0) + n
    for i, n in enumerate(d.buckets):
        stats.buckets[i] += n
    stats.duration_sum += d.duration_sum
    for name, count in d.cache.items():
        cache_extra[name] = cache_extra.get(name, 0) + count
    for (label, protocol), n in d.upstream_queries.items():
        upstream.upstream_queries.labels(label, protocol).inc(n)
    for (label, reason), n in d.upstream_errors.items():
        upstream.upstream_errors.labels(label, reason).inc(n)
    for label, seconds in d.upstream_latency:
        upstream.upstream_latency.labels(label).observe(seconds)
    for (label, reason), n in d.upstream_mismatched.items():
        upstream.upstream_mismatched.labels(label, reason).inc(n)
    for reason, n in d.upstream_dropped.items():
        upstream.upstream_dropped.labels(reason).inc(n)
    if d.worker:
        upstream.worker_upstream_sockets[d.worker] = d.upstream_sockets
    for name, n in d.rrl.items():   # the buckets gauge too: the sum of its deltas is its value
        cache_extra[f"rrl_{name}"] = cache_extra.get(f"rrl_{name}", 0) + n
    upstream.streams.add(d.streams)




class DeltaCounter:
    """What a worker counted since the last `take` (its counters only grow)."""

    def __init__(self, worker: int, resolver: Resolver, rrl: Rrl, observer: WorkerObserver,
                 streams: StreamStats) -> None:
        self.worker = worker
        self.resolver = resolver
        self.rrl = rrl
        self.observer = observer
        self.streams = streams
        self.last_q: dict[tuple[str, str, str, str], int] = {}
        self.last_b: list[int] = []
        self.last_sum = 0.0
        self.last_cache: dict[str, int] = {}
        self.last_sockets = -1
        self.last_rrl: dict[str, int] = {}
        self.last_streams = streams.snapshot()

    def take(self) -> Deltas | None:
        """The deltas since the last call, or None when nothing changed."""
        rrl_now = {"slipped": self.rrl.slipped, "dropped": self.rrl.dropped,
                   "buckets": len(self.rrl)}
        last_rrl = self.last_rrl
        rrl = {k: v - last_rrl.get(k, 0) for k, v in rrl_now.items() if v != last_rrl.get(k, 0)}
        self.last_rrl = rrl_now
        stats: DnsStats = self.resolver.stats
        cache = self.resolver.cache
        last_q, last_b = self.last_q, self.last_b
        queries = {k: v - last_q.get(k, 0) for k, v in stats.queries.items()
                   if v != last_q.get(k, 0)}
        buckets = [v - (last_b[i] if i < len(last_b) else 0) for i, v in enumerate(stats.buckets)]
        now_cache = cache.counters()
        obs = self.observer
        d = Deltas(queries, buckets, stats.duration_sum - self.last_sum,
                   {k: v - self.last_cache.get(k, 0) for k, v in now_cache.items()},
                   dict(obs.queries), dict(obs.errors), obs.latencies, dict(obs.mismatched),
                   dict(obs.dropped_), self.worker, self.resolver.forwarder.open_sockets(), rrl)
        obs.queries.clear()
        obs.errors.clear()
        obs.latencies = []
        obs.mismatched.clear()
        obs.dropped_.clear()
        now_streams = self.streams.snapshot()
        last_streams = self.last_streams
        d.streams = {name: {k: v - last_streams[name][k] for k, v in part.items()
                            if v != last_streams[name][k]}
                     for name, part in now_streams.items()}
        self.last_streams = now_streams
        self.last_q, self.last_b, self.last_sum, self.last_cache = (
            dict(stats.queries), list(stats.buckets), stats.duration_sum, now_cache)
        sockets_changed = d.upstream_sockets != self.last_sockets
        self.last_sockets = d.upstream_sockets
        if queries or d.upstream_queries or d.upstream_errors or any(d.cache.values()) \
                or d.upstream_mismatched or d.upstream_dropped or sockets_changed or rrl \
                or any(d.streams.values()):
            return d
        return None
