"""The running gateway as the admin page sees it (gateway/admin/host.py AdminHost): read-only
snapshots of its state, explain through the query path's own identify() and decide, and a
reload that says whether the new files went in force."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.admin.host import Explained, Status
from gateway.dns.stats import PROBE
from gateway.dns.tally import BlockedTally
from gateway.policy.identify import identify
from gateway.util.names import normalize_name

TOP_N = 20         # names shown per network
HARVEST_EVERY = 60.0

if TYPE_CHECKING:
    from prometheus_client import Counter

    from gateway.config.gateway import GatewayConfig
    from gateway.dns.chain import Resolver
    from gateway.policy.policyfile import Policy
    from gateway.querylog.store import Found
    from gateway.runtime.querylog import QueryLogService
    from gateway.runtime.reload import Reloading
    from gateway.runtime.state import Loaded


class GatewayAdminHost:
    def __init__(self, gateway: Reloading, ready: Callable[[], bool],
                 query_log: QueryLogService | None, tally: BlockedTally) -> None:
        self.gw = gateway
        self.ready = ready
        self.query_log = query_log
        self.tally = tally

    def _loaded(self) -> Loaded:
        assert self.gw.loaded is not None, "the admin page starts after the first load"
        return self.gw.loaded

    def config(self) -> GatewayConfig:
        return self._loaded().config

    def policy(self) -> Policy:
        return self._loaded().policy

    def categories(self) -> list[str]:
        return list(self._loaded().catalog.categories)

    def status(self) -> Status:
        loaded = self._loaded()
        m = self.gw.metrics
        tiers: dict[str, dict[str, int]] = {}
        blocked: dict[str, dict[str, int]] = {}
        for (action, category, tier, protocol), n in list(m.dns.queries.items()):
            if protocol == PROBE or not tier:
                continue
            counts = tiers.setdefault(tier, {})
            counts[action] = counts.get(action, 0) + n
            if action == "blocked":
                cats = blocked.setdefault(tier, {})
                cats[category or "-"] = cats.get(category or "-", 0) + n
        queries, errors = _by_upstream(m.upstream_queries), _by_upstream(m.upstream_errors)
        upstreams = [(label, queries.get(label, 0), errors.get(label, 0))
                     for label in dict.fromkeys([*queries, *errors])]
        return Status(ready=self.ready(), generation=loaded.view.generation,
                      entries=loaded.index.size,
                      entries_by_category=dict(loaded.index.entries_by_category),
                      last_reload_at=self.gw.last_reload_at,
                      last_reload_error=self.gw.last_reload_error,
                      upstreams=upstreams, tier_counts=tiers, blocked_by_category=blocked)

    def top_blocked(self) -> dict[str, list[tuple[str, int]]]:
        resolver = self.gw.resolver
        if resolver is not None:    # the hits since the last harvest too: fresh numbers
            for profile in resolver.view.profiles():
                self.tally.harvest(profile)
        return self.tally.top(TOP_N)

    def blocked_by_category(self) -> dict[str, dict[str, int]]:
        return self.tally.by_category()

    async def search_log(self, **query: Any) -> list[Found] | None:
        store = self.query_log.store if self.query_log is not None else None
        if store is None:
            return None
        return await asyncio.to_thread(functools.partial(store.search, **query))

    def explain(self, client: str, name: str) -> Explained | None:
        loaded = self._loaded()
        try:
            address = str(ipaddress.ip_address(client))
            key = normalize_name(name)
        except ValueError:
            return None
        profile = identify(loaded.view, address).profile
        if profile is None:
            return Explained(address, name, "", "", False, "none", "", "")
        verdict = profile.decide(key)
        return Explained(address, name, profile.network, profile.tier, verdict.blocked,
                         verdict.reason, verdict.category,
                         verdict.rule.decode("ascii", "replace"))

    async def reload(self, why: str) -> tuple[bool, str]:
        ok = await self.gw.reload(why)
        return ok, self.gw.last_reload_error


def _by_upstream(counter: Counter) -> dict[str, int]:
    out: dict[str, int] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                label = sample.labels.get("upstream", "")
                out[label] = out.get(label, 0) + int(sample.value)
    return out


async def harvest(tally: BlockedTally, resolver: Resolver, stop: asyncio.Event) -> None:
    """Read the blocked-memo hits into the tally every minute, one profile per loop turn
    (a profile's memo is at most limits.memory.reply_memo entries)."""
    seen = resolver.view
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HARVEST_EVERY)
        views = [resolver.view] if resolver.view is seen else [seen, resolver.view]
        seen = resolver.view     # a reload or schedule edge swapped it: read the old one too
        for view in views:
            for profile in view.profiles():
                tally.harvest(profile)
                await asyncio.sleep(0)


class TallyCollector(Collector):
    """safegate_admin_blocked_names (held; at most limits.admin.top_names per network and
    hour) and ..._replaced_total (names that took a full table's least counted place)."""

    def __init__(self, tally: BlockedTally) -> None:
        self.tally = tally

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("safegate_admin_blocked_names", "Blocked names counted for "
                                "the admin page's most-blocked table, all networks and hours.",
                                value=len(self.tally))
        yield CounterMetricFamily("safegate_admin_blocked_names_replaced", "Names that took "
                                  "the place of the least counted one in a full hour table "
                                  "(limits.admin.top_names).", value=self.tally.replaced)
