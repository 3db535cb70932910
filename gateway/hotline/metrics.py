"""Report metrics, on the registry passed in. No label carries a client or a target."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.feedformat.hotline import KINDS

# csrf: no token, a forged or expired one, or one issued to another address; reused: a token
# already spent (single use); rate_limited: limits.reports.per_v4_24 / per_v6_56 reached.
REJECT_REASONS = ("csrf", "reused", "rate_limited", "invalid")


class ReportMetrics:
    """safegate_reports_* (README "Metrics"); `pending` is read from the outbox per scrape."""

    def __init__(self, registry: CollectorRegistry, pending: Callable[[], int],
                 tracked: Callable[[], int] = lambda: 0,
                 spent: Callable[[], int] = lambda: 0) -> None:
        self.received = Counter("safegate_reports_received_total",
                                "Reports accepted and stored, by kind", ["kind"],
                                registry=registry)
        self.rejected = Counter("safegate_reports_rejected_total",
                                "Report submissions refused, by reason", ["reason"],
                                registry=registry)
        self.forwarded = Counter("safegate_reports_forwarded_total",
                                 "Report deliveries a forward_to target acknowledged",
                                 registry=registry)
        self.forward_failures = Counter("safegate_reports_forward_failures_total",
                                        "Report delivery attempts that failed (retried)",
                                        registry=registry)
        self.pending = Gauge("safegate_reports_pending",
                             "Report deliveries still owed to forward_to targets",
                             registry=registry)
        self.pending.set_function(lambda: float(pending()))
        self.tracked = Gauge("safegate_reports_rate_limit_networks",
                             "IPv4 /24s and IPv6 /56s the report rate limit tracks "
                             "(at most limits.reports.prefixes)", registry=registry)
        self.tracked.set_function(lambda: float(tracked()))
        self.spent = Gauge("safegate_reports_spent_tokens",
                           "Used report form tokens remembered until they expire "
                           "(at most limits.reports.spent_tokens)", registry=registry)
        self.spent.set_function(lambda: float(spent()))
        for kind in KINDS:
            self.received.labels(kind)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
