"""The query path's counters: plain Python ints the resolver and the TCP/DoT listeners bump.

A prometheus-client `.labels(...).inc()` costs about a microsecond, which the per-query path
cannot pay several times over; gateway/runtime/metrics.py exports these objects at scrape
time. They live here so gateway/dns imports nothing from the runtime: the runtime creates them
and passes them in.
"""

from __future__ import annotations

import bisect
from typing import Any

LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Bounded label values (design.md: "bounded metric labels").
ACTIONS = ("allowed", "blocked", "cached", "stale", "refused", "servfail", "formerr", "notimp",
           "badvers", "any", "rewritten", "intercepted", "local")
# The protocol label of queries that are not clients' traffic: the gateway's self-probe and a
# trusted front end's own health check (PROXY v2 LOCAL). Dashboards and feed statistics skip it.
PROBE = "probe"


# DNS over TCP/TLS connection limits (gateway/dns/streams.py): why a connection was refused,
# and why the gateway closed one it had accepted.
STREAM_PROTOCOLS = ("tcp", "dot")
STREAM_REFUSALS = ("global", "outside", "per_client")
STREAM_CLOSES = ("idle", "frame_timeout", "backpressure", "evicted", "handshake", "proxy_header")

_BOUNDS = LATENCY_BUCKETS
_bucket = bisect.bisect_left


class DnsStats:
    """Hot-path counters: one dict increment and one bucket increment per query."""

    __slots__ = ("buckets", "duration_count", "duration_sum", "queries")

    def __init__(self) -> None:
        self.queries: dict[tuple[str, str, str, str], int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.duration_sum = 0.0

    def count(self, action: str, category: str, tier: str, protocol: str, seconds: float) -> None:
        self.count_key((action, category, tier, protocol), seconds)

    def count_key(self, key: tuple[str, str, str, str], seconds: float) -> None:
        q = self.queries
        q[key] = q.get(key, 0) + 1
        self.buckets[_bucket(_BOUNDS, seconds)] += 1
        self.duration_sum += seconds


class StreamStats:
    """Connection counters of the TCP and DoT listeners, and the batched UDP listener's send
    drops (plain ints: workers send deltas)."""

    __slots__ = ("closed", "connections", "refused", "udp")

    def __init__(self) -> None:
        self.connections = dict.fromkeys(STREAM_PROTOCOLS, 0)
        self.refused = {(p, r): 0 for p in STREAM_PROTOCOLS for r in STREAM_REFUSALS}
        self.closed = {(p, r): 0 for p in STREAM_PROTOCOLS for r in STREAM_CLOSES}
        # replies dropped because limits.udp.send_queue_bytes was full (dns/udp_batch.py)
        self.udp = {"send_dropped": 0}

    def snapshot(self) -> dict[str, dict[Any, int]]:
        return {"connections": dict(self.connections), "refused": dict(self.refused),
                "closed": dict(self.closed), "udp": dict(self.udp)}

    def add(self, delta: dict[str, dict[Any, int]]) -> None:
        """Fold in another process's changes (`snapshot` differences, runtime/workers.py)."""
        for name in ("connections", "refused", "closed", "udp"):
            mine = getattr(self, name)
            for key, n in delta.get(name, {}).items():
                if key in mine:
                    mine[key] += n
