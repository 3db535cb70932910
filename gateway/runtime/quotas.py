"""The running gateway's game-time counters: the table, its metrics and its saves to state_dir.

Counting itself is policy/quota_table.py's (the query path calls it); this module only keeps
the table alive across reloads (a reload may change the timezone or limits.quota), exports
metrics without client labels, and writes the table back periodically and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config.gateway import GatewayConfig
from gateway.policy.policyfile import Policy
from gateway.policy.quota_table import QuotaTable, save_dump

log = logging.getLogger(__name__)


class QuotaMetrics:
    """safegate_quota_* (QuotaObserver): tiers only, never an address."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.clients = Gauge("safegate_quota_clients",
                             "Client addresses with a game-time counter today "
                             "(at most limits.quota.clients).", registry=registry)
        self._exhausted = Counter("safegate_quota_exhausted_total",
                                  "Clients whose daily game time ran out (once per client, "
                                  "quota and day).", ["tier"], registry=registry)
        self._untracked = Counter("safegate_quota_untracked_total",
                                  "Lookups of quota-limited names blocked because the counter "
                                  "table was full (limits.quota.clients).", ["tier"],
                                  registry=registry)

    def known(self, tiers: list[str]) -> None:
        for tier in tiers:   # start at 0 for every tier that has a quota
            self._exhausted.labels(tier)
            self._untracked.labels(tier)

    def exhausted(self, tier: str) -> None:
        self._exhausted.labels(tier).inc()

    def untracked(self, tier: str) -> None:
        self._untracked.labels(tier).inc()


class QuotaKeeper:
    """Owns the QuotaTable of the primary process (quotas need dns.workers: 1)."""

    def __init__(self, config: GatewayConfig, registry: CollectorRegistry) -> None:
        self.metrics = QuotaMetrics(registry)
        self.state_dir = config.state_dir
        self.interval = config.limits.quota.save_interval
        self.table = QuotaTable(ZoneInfo(config.timezone), config.limits.quota.clients,
                                self.metrics)
        self.table.load(self.state_dir)
        table = self.table
        self.metrics.clients.set_function(lambda: len(table))

    def configure(self, config: GatewayConfig, policy: Policy) -> None:
        """A reload: the zone, the bound and the tiers' labels follow the new files. (A smaller
        bound keeps today's counters; only new addresses are refused.)"""
        self.table.tz = ZoneInfo(config.timezone)
        self.table.limit = config.limits.quota.clients
        self.interval = config.limits.quota.save_interval
        self.state_dir = config.state_dir
        tiers = {t.name for t in policy.tiers.values() if t.quotas}
        tiers |= {n.tier for n in policy.networks if n.quotas}
        self.metrics.known(sorted(tiers))

    async def save(self) -> None:
        """Write the table if it changed: serialized here (bounded by limits.quota.clients),
        written and fsynced in a thread so a slow SD card never stalls DNS."""
        table = self.table
        table.expire()
        if not table.dirty:
            return
        data = table.dump()
        table.dirty = False
        try:
            await asyncio.to_thread(save_dump, self.state_dir, data)
        except OSError as exc:
            table.dirty = True
            log.warning("quotas: cannot save counters to %s: %s", self.state_dir, exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Save every limits.quota.save_interval seconds until `stop`, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(self.interval, 1.0))
            await self.save()
