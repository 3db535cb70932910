"""The SafeSearch leg of the query path (dns/chain.py): a rewritten name answers with a CNAME
to the engine's safe host plus that host's records, from the cache or upstream like any name.

A mixin of chain.Resolver, kept apart so chain.py reads the common path top to bottom; it uses
the resolver's cache, clock, forwarders and counters."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.dns import rewrite, wire
from gateway.dns.cache import AnswerCache, Entry, Key, entry_from_reply, relay_entry
from gateway.dns.stats import DnsStats
from gateway.dns.upstream import Forwarder
from gateway.dns.upstream_base import UpstreamError, log_failure
from gateway.dns.view import View
from gateway.dns.zones import ZoneForwarders
from gateway.policy.decide import Profile, Verdict

TCP_LIMIT = 65_535
Pending = Coroutine[Any, Any, bytes | None]


class SafeSearchPath:
    cache: AnswerCache
    clock: Callable[[], float]
    forwarder: Forwarder
    stats: DnsStats
    zones: ZoneForwarders

    def _rewrite(self, q: wire.Query, verdict: Verdict, profile: Profile, view: View,
                 protocol: str, limit: int, start: float) -> bytes | Pending:
        """SafeSearch: CNAME to the target plus the target's records (cached like any other)."""
        target = verdict.rewrite
        if q.qtype == wire.TYPE_CNAME:
            self.stats.count("rewritten", "safesearch", profile.tier, protocol,
                             time.perf_counter() - start)
            return rewrite.cname_only(q, target, view.answers.ttl)
        cd = bool(q.flags & wire.CD)
        tq = wire.parse_query(wire.build_query(0, wire.key_to_wire(target) + q.question[-4:],
                                               do=q.do, cd=cd))
        assert tq is not None
        key = self.cache.key(tq.key, tq.qtype, tq.qclass, (q.do << 1) | cd)
        now = self.clock()
        entry = self.cache.get(key, now)
        if entry is not None:
            self.stats.count("rewritten", "safesearch", profile.tier, protocol,
                             time.perf_counter() - start)
            return rewrite.splice(q, target, entry.reply(tq, now, TCP_LIMIT), limit,
                                  view.answers.ttl)
        return self._rewrite_miss(q, tq, key, target, profile, view, protocol, limit, start)

    async def _rewrite_miss(self, q: wire.Query, tq: wire.Query, key: Key,
                            target: bytes, profile: Profile, view: View, protocol: str,
                            limit: int, start: float) -> bytes | None:
        count = self.stats.count
        try:
            raw = await self.zones.pick(tq.key, self.forwarder).resolve(
                tq.question, do=q.do, cd=bool(q.flags & wire.CD))
        except UpstreamError as exc:
            now = self.clock()
            stale = self.cache.get_stale(key, now)
            if stale is None:
                log_failure(exc, "a SafeSearch target")
                count("servfail", "", profile.tier, protocol, time.perf_counter() - start)
                return wire.error_reply(q, wire.SERVFAIL, exc.ede)
            entry: Entry | None = stale
            target_reply = stale.reply(tq, now, TCP_LIMIT, stale=True)
        else:
            now = self.clock()
            try:
                entry = entry_from_reply(raw, self.cache.cfg, now)
            except (wire.WireError, IndexError, ValueError):
                entry = None
            if entry is not None:
                self.cache.put(key, entry)
            else:
                entry = relay_entry(raw, now)
            if entry is None:
                count("servfail", "", profile.tier, protocol, time.perf_counter() - start)
                return wire.error_reply(q, wire.SERVFAIL)
            target_reply = entry.reply(tq, now, TCP_LIMIT)
        count("rewritten", "safesearch", profile.tier, protocol, time.perf_counter() - start)
        return rewrite.splice(q, target, target_reply, limit, view.answers.ttl)
