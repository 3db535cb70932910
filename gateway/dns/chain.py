"""One query's path, top to bottom. Every transport (UDP, TCP, DoT, DoH) calls `handle`.

    wire      parse the header and question straight from the bytes
    identify  client address -> subscriber or network -> profile  (REFUSED when in none)
              (a DoH path token names its profile directly; from dns.trusted_frontends only,
              a PROXY v2 header or the query's EDNS Client Subnet names the client: the rules
              are policy/identify.py's, shared with explain, the block page and self-probes)
    class     only IN is served: CHAOS (version.bind), ANY and the rest get REFUSED here,
              never forwarded
    decide    mandatory > deny/allow > tier categories      (memoized per profile)
    answer    blocked: synthesized locally, with EDE
              ANY: RFC 8482 minimal answer
              intercept set: the proxy's address (DNS-steered interception, issue 5)
              local: dns.local_records, prebuilt (dns/local.py); never upstream
              cached: prebuilt bytes, ID and TTLs patched, CNAME targets re-checked
              else: forward upstream, or dns.forward_zones' servers (in-flight dedup, cache
              fill, serve-stale)
    account   counters by action, category, tier, protocol  (never by client)

Blocked, cached and refused queries are answered synchronously: no task, no await. Only a cache
miss returns a coroutine for the transport to schedule.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.dns import fastpath, proxyproto, wire
from gateway.dns.answers import any_reply, class_refused_reply, refused_reply
from gateway.dns.cache import AnswerCache, Entry, Key, entry_from_reply, relay_entry
from gateway.dns.local import LocalAnswers
from gateway.dns.memo import Memo, Rendered
from gateway.dns.safesearch_path import SafeSearchPath
from gateway.dns.stats import PROBE, DnsStats
from gateway.dns.svcb import TYPE_HTTPS, TYPE_SVCB, strip_ech
from gateway.dns.tally import NO_TALLY
from gateway.dns.upstream import Forwarder
from gateway.dns.upstream_base import UpstreamError, log_failure
from gateway.dns.view import View
from gateway.dns.zones import ZoneForwarders
from gateway.policy.decide import Profile, Verdict
from gateway.policy.identify import ECS, identify
from gateway.policy.quota_table import QuotaTable, charged

perf_counter = time.perf_counter

log = logging.getLogger(__name__)

Pending = Coroutine[Any, Any, bytes | None]
TCP_LIMIT = 65_535
_ERROR_ACTIONS = {wire.NOTIMP: "notimp", wire.BADVERS: "badvers"}
_BLOCKED = "blocked"
_CACHED = "cached"
_STEERED_TYPES = (wire.TYPE_A, wire.TYPE_AAAA, TYPE_HTTPS, TYPE_SVCB)
_NO_ECH = 4  # cache-key flag: an HTTPS/SVCB answer stored with `ech` stripped (bypass tiers)


class Resolver(SafeSearchPath):
    """The query path. Holds the current View; `swap` replaces it atomically."""

    def __init__(self, view: View, cache: AnswerCache, forwarder: Forwarder, stats: DnsStats,
                 clock: Callable[[], float] = time.monotonic, *,
                 local: LocalAnswers | None = None, zones: ZoneForwarders | None = None,
                 pure: bool | None = None, quotas: QuotaTable | None = None) -> None:
        self.view = view
        # The fast path's byte work: C when built, unless `pure` / SAFEGATE_PURE=1.
        self.fast = fastpath.choose(pure)
        self.cache = cache
        self.forwarder = forwarder
        self.local = local
        self.zones = zones or ZoneForwarders({})
        self.stats = stats
        self.clock = clock
        self.quotas = quotas    # game-time counters (policy/quota_table.py); None: no quotas
        self._stats_keys: dict[tuple[str, ...], tuple[str, ...]] = {}  # see _remember
        self.tally = NO_TALLY   # the admin page's blocked-name counts (dns/tally.py)

    def close(self) -> None:
        self.forwarder.close()
        self.zones.close()

    def swap(self, view: View) -> None:
        """Queries already past `identify` finish with the old view; new ones see the new one."""
        self.view = view

    def expects_proxy(self, peer: str) -> bool:
        """Whether a connection from `peer` may open with a PROXY v2 header."""
        view = self.view
        return bool(view.proxy_protocol and view.frontends is not None
                    and view.frontends.lookup(peer))

    def handle(self, data: bytes, client: str, protocol: str, *, profile: Profile | None = None,
               proxied: bool = False) -> bytes | Pending | None:
        """Reply bytes, None to drop, or a coroutine that produces the reply (cache miss).

        `profile`, when given (a DoH path token), stands in for the client address lookup.
        `proxied`: `client` came from a trusted front end's PROXY v2 header (TCP reads it once
        per connection), so the query's own ECS is not an identity any more.
        """
        start = perf_counter()
        frontends = self.view.frontends
        if frontends is not None and profile is None and not proxied \
                and frontends.lookup(client):
            return self._from_frontend(data, client, protocol, start)
        if protocol == "udp" and profile is None:
            # Memo: the same query bytes (all but the ID) from the same profile get the same
            # reply, so a repeated blocked or cached query skips even the wire parse. (Kept
            # flat on purpose: this is most queries' whole path.) The lookup is exactly
            # policy/identify.py's plain case: no token, and no header to believe (front ends
            # went to _from_frontend; a PROXY v2 source arrives here as `client`).
            profile = self.view.clients.lookup(client)
            if profile is not None:
                memo = profile.replies.get(data[2:])
                if memo is not None:
                    if memo.entry is None:  # a fixed reply: blocked, intercepted, local
                        memo.hits += 1      # the blocked-name tally reads it (dns/tally.py)
                        self.stats.count_key(memo.stats_key, perf_counter() - start)
                        return data[:2] + memo.reply  # type: ignore[no-any-return]
                    # TTLs tick once a second; an expired entry: the slow path renews the memo
                    now = self.clock()
                    if now < memo.until or memo.refresh(now):
                        self.cache.hits += 1
                        self.stats.count_key(memo.stats_key, perf_counter() - start)
                        return data[:2] + memo.reply  # type: ignore[no-any-return]
                # A name a list rule blocks, straight from the bytes (dns/fastpath.py): the
                # long tail of a big list, which the memo cannot absorb.
                fast = fastpath.blocked(data, profile, self.view.answers, self.fast)
                if fast is not None:
                    reply, stats_key = fast
                    self.stats.count_key(stats_key, perf_counter() - start)
                    self._remember(profile, data, (_BLOCKED, reply[2:], stats_key))
                    return reply
        return self._handle(data, client, protocol, start, profile, proxied=proxied)

    def _from_frontend(self, data: bytes, frontend: str, protocol: str, start: float
                       ) -> bytes | Pending | None:
        """A query from dns.trusted_frontends: the real client is in a PROXY v2 header (UDP;
        TCP's is read by the transport) or in the query's EDNS Client Subnet."""
        view = self.view
        if view.proxy_protocol and protocol == "udp" and data[:12] == proxyproto.SIGNATURE:
            try:
                source, size = proxyproto.parse(data)
            except proxyproto.ProxyHeaderError as exc:
                log.debug("dropping a datagram with a bad PROXY v2 header: %s", exc)
                self.stats.count("formerr", "", "", protocol, perf_counter() - start)
                return None
            if source is None:
                # A LOCAL header: the front end's own query, its health check. Labelled
                # "probe" like the self-probe, so it is not counted as subscribers' traffic
                # (dashboards and the feed statistics leave protocol="probe" out).
                return self._handle(data[size:], frontend, PROBE, start, proxied=True,
                                    datagram=True)
            # The header names the client (identify's PROXY v2 rule); re-entering `handle` with
            # it as the client keeps the memo path for the proxied queries.
            return self.handle(data[size:], source, protocol, proxied=True)
        return self._handle(data, frontend, protocol, start, frontend=True)

    def _remember(self, profile: Profile, data: bytes, memo: tuple[Any, ...]) -> None:
        replies = profile.replies
        if len(replies) >= profile.reply_memo:
            if not replies:
                return  # limits.memory.reply_memo: 0 turns the memo off
            self.tally.evicted(profile, *replies.popitem(last=False))  # oldest; a clear thrashes
        kind, payload, key = memo  # one shared stats key per action/category/tier (config)
        key = self._stats_keys.setdefault(key, key)
        if kind is _BLOCKED:
            replies[data[2:]] = Memo(payload, key)
        else:
            payload.stats_key = key
            replies[data[2:]] = payload

    def _handle(self, data: bytes, client: str, protocol: str, start: float,
                chosen: Profile | None = None, *, proxied: bool = False,
                frontend: bool = False, datagram: bool = False) -> bytes | Pending | None:
        """`datagram`: the reply goes back over UDP although `protocol` (the metrics label) is
        not "udp" (a front end's health check)."""
        count = self.stats.count
        try:
            q = wire.parse_query(data)
        except Exception:  # a malformed packet must never take the server down
            log.debug("unparseable packet from a client", exc_info=True)
            q = None
            reply = wire.formerr_from_header(data)
            if reply is not None:
                count("formerr", "", "", protocol, time.perf_counter() - start)
            return reply
        if q is None:
            return None
        if q.error:
            count(_ERROR_ACTIONS.get(q.error, "formerr"), "", "", protocol,
                  time.perf_counter() - start)
            return wire.error_reply(q, q.error)

        view = self.view
        forward_ecs = b""
        profile = chosen
        if profile is None:
            # Only a trusted front end's ECS names a client, and not once a PROXY v2 header did:
            # for anyone else the option is not read and identify() takes its plain path.
            ecs = (wire.ecs_address(q.ecs) or "") if q.ecs and frontend and not proxied else None
            found = identify(view, client, None, ecs)
            profile, client = found.profile, found.address  # (who a quota counts)
            if found.source == ECS and view.forward_ecs and q.ecs:
                forward_ecs = wire.ecs_truncate(q.ecs)
        if profile is None:
            count("refused", "", "", protocol, time.perf_counter() - start)
            return refused_reply(q)

        if q.qclass != wire.CLASS_IN:
            count("refused", "", profile.tier, protocol, time.perf_counter() - start)
            return class_refused_reply(q)

        verdict = profile.decide(q.key)
        # A quota-limited name is counted per client: its reply is never memoized per profile.
        if counted := bool(profile.quotas) and verdict.reason == "quota":
            verdict = charged(self.quotas, profile, verdict, client)
        if profile.log is not None:   # this network's query log (gateway/querylog/)
            profile.log(q.key, q.qtype, verdict, client)
        if verdict.blocked:
            count("blocked", verdict.category, profile.tier, protocol, time.perf_counter() - start)
            reply = view.answers.blocked_reply(q, verdict)
            self.tally.blocked(profile, q.key, protocol, verdict.category)
            if protocol == "udp" and not counted:
                self._remember(profile, data, (_BLOCKED, reply[2:],
                                               ("blocked", verdict.category, profile.tier, "udp")))
            return reply

        if q.qtype == wire.TYPE_ANY:
            count("any", "", profile.tier, protocol, time.perf_counter() - start)
            return any_reply(q)

        if verdict.steer and q.qtype in _STEERED_TYPES:
            # DNS-steered interception: the proxy's address, and no HTTPS/SVCB record (whose
            # ECH or alternative endpoints would take the client around the proxy).
            count("intercepted", "", profile.tier, protocol, time.perf_counter() - start)
            reply = view.answers.blocked_reply(q, verdict)
            if protocol == "udp":
                self._remember(profile, data, (_BLOCKED, reply[2:],
                                               ("intercepted", "", profile.tier, "udp")))
            return reply

        limit = q.max_udp_response() if protocol == "udp" or datagram else TCP_LIMIT
        if verdict.rewrite:
            return self._rewrite(q, verdict, profile, view, protocol, limit, start)
        if self.local is not None and (local := self.local.reply(q, limit)) is not None:
            count("local", "", profile.tier, protocol, time.perf_counter() - start)
            if protocol == "udp" and not counted:  # memoized like a blocked reply
                self._remember(profile, data, (_BLOCKED, local[2:],
                                               ("local", "", profile.tier, "udp")))
            return local
        if forward_ecs:
            # Answers tailored to a subnet are not shared: no cache, no memo (opt-in setting).
            return self._forward(q, None, profile, view, protocol, limit, start, forward_ecs)
        bits = (q.do << 1) | bool(q.flags & wire.CD)
        if profile.bypass and q.qtype in (TYPE_HTTPS, TYPE_SVCB):
            bits |= _NO_ECH  # stripped and unstripped answers are cached apart (tiers differ)
        key = self.cache.key(q.key, q.qtype, q.qclass, bits)
        now = self.clock()
        entry = self.cache.get(key, now)
        if entry is not None:
            reply, blocked = self._from_entry(q, entry, profile, view, now, limit, stale=False)
            count("blocked" if blocked else "cached", blocked.category if blocked else "",
                  profile.tier, protocol, time.perf_counter() - start)
            if protocol == "udp" and not entry.cnames and not counted:
                # The memo holds the entry itself: it stays a correct answer until it expires
                # even if the cache evicts it (CNAME answers are re-checked on the slow path).
                base = -1 if reply[2] & (wire.TC >> 8) else 10 + len(q.question)
                self._remember(profile, data, (_CACHED, Rendered(entry, reply[2:], base, now),
                                               ("cached", "", profile.tier, "udp")))
            return reply
        return self._forward(q, key, profile, view, protocol, limit, start)

    def _from_entry(self, q: wire.Query, entry: Entry, profile: Profile, view: View, now: float,
                    limit: int, stale: bool) -> tuple[bytes, Verdict | None]:
        """A cached reply, unless a CNAME in it leads to a name this profile blocks."""
        for target in entry.cnames:
            verdict = profile.decide(target)
            if verdict.blocked:
                # Answer for the queried name, citing the target's entry (the SOA owner is then
                # the queried name itself: offset 0).
                via = dataclasses.replace(verdict, offset=0)
                return view.answers.blocked_reply(q, via, keep=False), via
        return entry.reply(q, now, limit, stale), None

    def _forward(self, q: wire.Query, cache_key: Key | None, profile: Profile, view: View,
                 protocol: str, limit: int, start: float, ecs: bytes = b"") -> bytes | Pending:
        """Ask upstream, cache (unless `cache_key` is None) and answer. A question the in-flight
        caps refuse is answered at once (stale, or SERVFAIL + EDE 14): a flood's refused
        queries cost no task, no coroutine and no exception."""
        question = q.question[:-4].lower() + q.question[-4:]
        forwarder = self.zones.pick(q.key, self.forwarder)
        busy = forwarder.refusal(question, q.do, bool(q.flags & wire.CD), ecs)
        if busy is not None:
            return self._failed(busy, q, cache_key, profile, view, protocol, limit, start)
        return self._ask(forwarder, question, q, cache_key, profile, view, protocol, limit,
                         start, ecs)

    def _failed(self, exc: UpstreamError, q: wire.Query, cache_key: Key | None, profile: Profile,
                view: View, protocol: str, limit: int, start: float) -> bytes:
        """No upstream answer: a stale one if the cache still has it (RFC 8767), else SERVFAIL."""
        now = self.clock()
        stale = self.cache.get_stale(cache_key, now) if cache_key is not None else None
        if stale is not None:
            reply, blocked = self._from_entry(q, stale, profile, view, now, limit, True)
            self.stats.count("blocked" if blocked else "stale", blocked.category if blocked
                             else "", profile.tier, protocol, time.perf_counter() - start)
            return reply
        log_failure(exc, "a query")
        self.stats.count("servfail", "", profile.tier, protocol, time.perf_counter() - start)
        return wire.error_reply(q, wire.SERVFAIL, exc.ede)

    async def _ask(self, forwarder: Forwarder, question: bytes, q: wire.Query,
                   cache_key: Key | None, profile: Profile, view: View, protocol: str,
                   limit: int, start: float, ecs: bytes) -> bytes | None:
        count = self.stats.count
        try:
            raw = await forwarder.resolve(question, do=q.do, cd=bool(q.flags & wire.CD), ecs=ecs)
        except UpstreamError as exc:
            return self._failed(exc, q, cache_key, profile, view, protocol, limit, start)
        now = self.clock()
        try:
            if cache_key is not None:
                strip = bool(self.cache.key_bits(cache_key) & _NO_ECH)
            else:
                strip = profile.bypass and q.qtype in (TYPE_HTTPS, TYPE_SVCB)
            if strip:
                raw = strip_ech(raw)  # before caching: a malformed record fails closed here
            entry = entry_from_reply(raw, self.cache.cfg, now) if cache_key is not None \
                else None
        except (wire.WireError, IndexError, ValueError, struct.error):
            log.warning("upstream sent a malformed reply; answering SERVFAIL")
            count("servfail", "", profile.tier, protocol, time.perf_counter() - start)
            return wire.error_reply(q, wire.SERVFAIL)
        if entry is None:
            # Not cacheable (SERVFAIL, no SOA, TTL 0): relay once, built the same way.
            entry = relay_entry(raw, now)
            if entry is None:
                count("servfail", "", profile.tier, protocol, time.perf_counter() - start)
                return wire.error_reply(q, wire.SERVFAIL)
        elif cache_key is not None:
            self.cache.put(cache_key, entry)
        reply, blocked = self._from_entry(q, entry, profile, view, now, limit, False)
        count("blocked" if blocked else "allowed", blocked.category if blocked else "",
              profile.tier, protocol, time.perf_counter() - start)
        return reply

