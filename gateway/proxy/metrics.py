"""The proxy process's metrics (its own /metrics listener); bounded labels, never a client."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.proxy.rules import ACTIONS

MODES = ("intercepted", "passthrough")
HASH_TYPES = ("sha256", "pdq")


class ProxyMetrics:
    """Created against the registry passed in (no import-time globals)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "safegate_proxy_requests", "HTTP requests seen by the proxy in intercepted "
            "connections, by what they got.", ["action"], registry=registry)
        self.connections = Counter(
            "safegate_proxy_connections", "TLS connections: decrypted (intercept set) or passed "
            "through untouched.", ["mode"], registry=registry)
        self.hash_seconds = Histogram(
            "safegate_proxy_hash_check_seconds", "Time to hash-check one image (off the event "
            "loop).", registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.hash_matches = Counter(
            "safegate_proxy_hash_matches", "Images replaced because they matched a hash entry.",
            ["type"], registry=registry)
        self.rules_generation = Gauge(
            "safegate_proxy_rules_generation", "Generation of the rule set in force (reloads).",
            registry=registry)
        self.url_entries = Gauge(
            "safegate_proxy_url_entries", "URL-level entries in force.", registry=registry)
        self.intercept_hosts = Gauge(
            "safegate_proxy_intercept_hosts", "Names in the intercept set.", registry=registry)
        self.reload_failures = Counter(
            "safegate_proxy_reload_failures", "Rule reloads that failed (the old rules stay).",
            registry=registry)
        for action in ACTIONS:
            self.requests.labels(action)
        for mode in MODES:
            self.connections.labels(mode)
        for t in HASH_TYPES:
            self.hash_matches.labels(t)
