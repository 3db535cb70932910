"""Accepting a report from the block page's form: CSRF, rate limit, validate, store.

Pure of HTTP: runtime/web.py turns an Outcome into a page. The order matters: the token checks come
before the rate limit, so forged or replayed posts cannot use up a real person's allowance,
and the rate limit before parsing, so a flood costs us no database writes. A token is spent
once the rate limit let it through (a limited post can be sent again later from the same page).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.feedformat.hotline import HotlineReport, ReportError, from_form
from gateway.hotline.guard import CsrfTokens, RateLimiter, SpentTokens
from gateway.hotline.metrics import ReportMetrics
from gateway.hotline.store import ReportStore


@dataclass(frozen=True)
class Outcome:
    status: str                 # stored | csrf | reused | rate_limited | invalid
    report: HotlineReport | None = None
    error: str = ""


class ReportDesk:
    """Everything POST /report needs, passed in (the gateway builds one in runtime/app.py)."""

    def __init__(self, store: ReportStore, tokens: CsrfTokens, limiter: RateLimiter,
                 spent: SpentTokens, metrics: ReportMetrics, gateway_id: Callable[[], str],
                 targets: Callable[[], Sequence[str]]) -> None:
        self.store = store
        self.tokens = tokens
        self.limiter = limiter
        self.spent = spent
        self.metrics = metrics
        self.gateway_id = gateway_id
        self.targets = targets

    def submit(self, form: Mapping[str, Any], address: str, now: float) -> Outcome:
        """Store the report if the form is genuine, within the limit and valid."""
        token = str(form.get("csrf", ""))
        expiry = self.tokens.expiry(token, address, now)
        if expiry is None:
            self.metrics.rejected.labels("csrf").inc()
            return Outcome("csrf")
        if token in self.spent:
            self.metrics.rejected.labels("reused").inc()
            return Outcome("reused")
        if not self.limiter.allow(address, now):
            self.metrics.rejected.labels("rate_limited").inc()
            return Outcome("rate_limited")
        self.spent.spend(token, expiry, now)
        try:
            report = from_form(form, gateway=self.gateway_id(),
                               now=datetime.fromtimestamp(now, UTC))
        except ReportError as exc:
            self.metrics.rejected.labels("invalid").inc()
            return Outcome("invalid", error=str(exc))
        self.store.add(report, list(self.targets()))
        self.metrics.received.labels(report.kind).inc()
        return Outcome("stored", report)
