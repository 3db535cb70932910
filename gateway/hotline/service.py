"""The gateway's report service: store, desk and forwarder, built from its configuration.

runtime/app.py starts one and hands `desk` to the web listener; the forwarder task lives as long as
the service (kept referenced, cancelled in stop()).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import CollectorRegistry

from gateway.config.gateway import GatewayConfig
from gateway.hotline.desk import ReportDesk
from gateway.hotline.forward import ReportForwarder
from gateway.hotline.guard import CsrfTokens, RateLimiter, SpentTokens, load_secret
from gateway.hotline.metrics import ReportMetrics
from gateway.hotline.store import FILENAME, ReportStore

log = logging.getLogger(__name__)


def token_for(config: GatewayConfig, url: str) -> str | None:
    """The gateway token, but only for the origin of one of its safegate feeds: that publisher
    already holds it. A third-party webhook never sees it."""
    if not config.gateway_token:
        return None
    origin = _origin(url)
    if any(f.type == "safegate" and _origin(f.url) == origin for f in config.feeds):
        return config.gateway_token
    return None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


class ReportService:
    """Reports for one running gateway; `config()` is read per use, so reloads apply."""

    def __init__(self, config: Callable[[], GatewayConfig], registry: CollectorRegistry
                 ) -> None:
        first = config()
        self.config = config
        self.store = ReportStore(first.state_dir / FILENAME)
        limits = first.limits.reports
        limiter = RateLimiter(limits)
        spent = SpentTokens(limits.spent_tokens)
        self.metrics = ReportMetrics(registry, self.store.pending, lambda: len(limiter),
                                     lambda: len(spent))
        self.desk = ReportDesk(self.store,
                               CsrfTokens(load_secret(first.state_dir), limits.token_lifetime),
                               limiter, spent, self.metrics, lambda: self.config().gateway_id,
                               lambda: self.config().reports.forward_to)
        self.session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        forwarder = ReportForwarder(self.store, self.session, self.metrics,
                                    lambda url: token_for(self.config(), url))
        self.task = asyncio.get_running_loop().create_task(forwarder.run(),
                                                           name="report-forwarder")
        pending = self.store.pending()
        if pending:
            log.info("reports: %d deliveries pending from before the restart", pending)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.session is not None:
            await self.session.close()
        self.store.close()
