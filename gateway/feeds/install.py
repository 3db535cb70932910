"""Putting a signed feed's entry set in force: its overlay swapped in, then its ledger rows.

The overlay is built from the whole entry set (pure: it may run in a worker thread); the swap
and the ledger writes stay on the event loop, the ledger in short transactions for big updates.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.feedformat.document import FeedEntry
from gateway.feeds.context import FeedContext, OnApplied
from gateway.feeds.hold import covered_name
from gateway.feeds.ledger import DNS_TYPES, RECORD_CHUNK
from gateway.feeds.proxyprobe import proxy_outcome
from gateway.lists import SCOPE_BOTH, SCOPE_SELF, Action, Rule
from gateway.lists.overlay import Overlay

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What an entry set becomes: its overlay and its ledger rows (plan())."""

    overlay: Overlay
    refused: dict[str, str]            # entry id -> the never_block name it covers
    newly_refused: dict[str, str]      # changed entries among them -> their value
    kinds: dict[str, int]
    by_category: dict[str, int]
    upserts: list[tuple[FeedEntry, str]]


def plan(entries: Mapping[str, FeedEntry], changed: Iterable[str],
         never_block: Iterable[str], proxy: bool = False) -> Plan:
    """The overlay and the ledger rows for an entry set (pure: safe in a worker thread)."""
    never_block = tuple(never_block)
    refused: dict[str, str] = {}
    rules: dict[bytes, list[Rule]] = defaultdict(list)
    kinds: dict[str, int] = defaultdict(int)
    by_category: dict[str, int] = defaultdict(int)
    for e in entries.values():
        if e.type in DNS_TYPES and (name := covered_name(e.value, never_block)):
            refused[e.id] = name
            continue
        for c in e.categories:
            by_category[c] += 1
        if e.type not in DNS_TYPES:
            kinds["not-dns"] += 1
            continue
        if e.action != "block":
            kinds["warn"] += 1
            continue
        kinds["block"] += 1
        kinds["mandatory"] += e.mandatory
        scope = SCOPE_BOTH if e.type == "domain" else SCOPE_SELF
        rules[e.value.encode()].extend(
            Rule(c, scope, Action.DEFAULT, e.mandatory, e.id) for c in e.categories)
    changed = set(changed)
    upserts = [(e, "refused" if e.id in refused else
                "applied" if e.type in DNS_TYPES and e.action == "block" else
                proxy_outcome(e.type, e.action, proxy) or "received")
               for e in (entries[i] for i in sorted(changed))]
    return Plan(Overlay({k: tuple(v) for k, v in rules.items()}), refused,
                {rid: entries[rid].value for rid in refused if rid in changed},
                dict(kinds), dict(by_category), upserts)


class Installer:
    """Swaps one signed feed's overlay in and records the change (with its acks)."""

    def __init__(self, ctx: FeedContext, on_applied: OnApplied | None) -> None:
        self.ctx = ctx
        self.on_applied = on_applied

    def install(self, serial: int, entries: Mapping[str, FeedEntry], changed: Iterable[str],
                removed: Iterable[str], received_at: float, ack: bool) -> None:
        """Build the overlay from the whole entry set, swap it in, then record it."""
        ctx = self.ctx
        p = plan(entries, changed, ctx.guard.never_block, ctx.proxy)
        applied_at = self._swap(p)
        ids = ctx.ledger.record(ctx.name, serial, p.upserts, sorted(removed), received_at,
                                applied_at, ctx.ack, force_ack=ack)
        self._log_applied(serial, p, ids)
        if self.on_applied is not None and ids:
            found = ctx.ledger.rows(ctx.name, ids)
            self.on_applied(ctx.name, [found[i] for i in ids if i in found and found[i].probed])

    async def install_async(self, serial: int, entries: Mapping[str, FeedEntry],
                            changed: Iterable[str], removed: Iterable[str],
                            received_at: float) -> None:
        """install() for the polling path: same steps, never a long stop of the event loop."""
        ctx = self.ctx
        p = await asyncio.to_thread(plan, entries, changed, ctx.guard.never_block, ctx.proxy)
        applied_at = self._swap(p)
        ids = await ctx.ledger.record_async(ctx.name, serial, p.upserts, sorted(removed),
                                            received_at, applied_at, ctx.ack, force_ack=True)
        self._log_applied(serial, p, ids)
        if self.on_applied is not None:
            for i in range(0, len(ids), RECORD_CHUNK):   # in chunks too: 100k probes to queue
                part = ids[i:i + RECORD_CHUNK]
                found = ctx.ledger.rows(ctx.name, part)
                self.on_applied(ctx.name, [found[k] for k in part
                                           if k in found and found[k].probed])
                if i + RECORD_CHUNK < len(ids):
                    await asyncio.sleep(0)

    def _swap(self, p: Plan) -> float:
        """Put the plan's overlay in force; returns applied_at."""
        ctx = self.ctx
        ctx.target.set_overlay(ctx.name, p.overlay)
        applied_at = ctx.clock()
        for rid, value in sorted(p.newly_refused.items()):
            ctx.metrics.refused.labels(ctx.name).inc()
            log.warning("feed %s: entry %s (%s) refused: it covers never_block name %s",
                        ctx.name, rid, value, p.refused[rid])
        return applied_at

    def _log_applied(self, serial: int, p: Plan, ids: list[str]) -> None:
        ctx, kinds = self.ctx, p.kinds
        ctx.metrics.serial.labels(ctx.name).set(serial)
        ctx.metrics.set_entries(ctx.name, p.by_category)
        log.info("feed %s: serial %d in force: %d DNS block entries (%d mandatory), %d warn "
                 "(recorded, not blocked), %d url/ip/cidr/hash (kept for the HTTP proxy), %d "
                 "refused; %d changed", ctx.name, serial, kinds.get("block", 0),
                 kinds.get("mandatory", 0), kinds.get("warn", 0), kinds.get("not-dns", 0),
                 len(p.refused), len(ids))
