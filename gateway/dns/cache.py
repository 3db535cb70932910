"""Answer cache: upstream replies kept as prebuilt bytes whose TTLs count down on every hit.

Keys are (name, qtype, qclass, DO/CD bits). The cache holds only what upstreams said, never a
policy decision: the decision runs before the cache on every query, so a cached answer cannot
cross from one tier to another (design.md: "a fast path that stays correct").
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable

from gateway.config.dns import CacheConfig
from gateway.dns import wire
from gateway.dns.wire import RR_FIXED

_TTL = struct.Struct(">I")

STALE_ANSWER_TTL = 30  # RFC 8767 4: TTL of stale data served


class Entry:
    """An upstream reply minus header, question and OPT, with where its TTLs sit."""

    __slots__ = ("_rendered", "_rendered_at", "body", "cnames", "counts", "expires", "flags",
                 "rcode", "stale_until", "stored", "ttl_offsets", "ttls")

    def __init__(self, flags: int, rcode: int, counts: tuple[int, int, int], body: bytes,
                 ttl_offsets: tuple[int, ...], ttls: tuple[int, ...], cnames: tuple[bytes, ...],
                 stored: float, lifetime: int, stale_ttl: int) -> None:
        self.flags = flags            # the AD bit from upstream; QR/RA/RD/CD are added per reply
        self.rcode = rcode
        self.counts = counts          # ANCOUNT, NSCOUNT, ARCOUNT without OPT
        self.body = body
        self.ttl_offsets = ttl_offsets
        self.ttls = ttls
        self.cnames = cnames          # CNAME targets in the answer, checked against policy per hit
        self.stored = stored
        self.expires = stored + lifetime
        self.stale_until = self.expires + stale_ttl
        self._rendered_at = -1
        self._rendered = body

    def records(self, now: float, stale: bool = False) -> bytes:
        """The record sections with TTLs counted down to `now` (recomputed once a second)."""
        if stale:
            return self._patched(lambda _ttl: STALE_ANSWER_TTL)
        elapsed = int(now - self.stored)
        if elapsed != self._rendered_at:
            self._rendered = self._patched(lambda ttl: max(ttl - elapsed, 0))
            self._rendered_at = elapsed
        return self._rendered

    def _patched(self, ttl_of: Callable[[int], int]) -> bytes:
        if not self.ttl_offsets:
            return self.body
        buf = bytearray(self.body)
        for off, ttl in zip(self.ttl_offsets, self.ttls, strict=True):
            _TTL.pack_into(buf, off, ttl_of(ttl))
        return bytes(buf)

    def reply(self, q: wire.Query, now: float, limit: int, stale: bool = False) -> bytes:
        """The full reply for client query `q`: its ID and question bytes, our OPT if it sent one.

        `limit` is the largest size the transport takes; over it the reply goes out with TC.
        """
        body = self.records(now, stale)
        an, ns, ar = self.counts
        ad = self.flags if q.do or q.flags & wire.AD else self.flags & ~wire.AD
        flags = wire.reply_flags(q, self.rcode, ad)
        if q.edns:
            out = (wire.header(q.id, flags, 1, an, ns, ar + 1) + q.question + body
                   + wire.opt_record(q.do, self.rcode))
        else:
            out = wire.header(q.id, flags, 1, an, ns, ar) + q.question + body
        if len(out) > limit:
            # The upstream's AD stays on the truncated reply, as unbound sends it: the client
            # retrying over TCP gets the same answer, and TC alone says nothing about validation.
            return wire.truncated_reply(q, self.rcode, ad)
        return out


def entry_from_reply(reply: bytes, cfg: CacheConfig, now: float, relay: bool = False
                     ) -> Entry | None:
    """Turn an upstream reply into a cache entry; None when it must not be cached.

    With `relay`, the entry is built even when it must not be cached (SERVFAIL, TTL 0, a
    negative answer without SOA) and TTLs are left as sent, so it can be relayed once.
    """
    _id, flags, qd, an, ns, ar = struct.unpack_from(">HHHHHH", reply)
    rcode = flags & 0xF
    if qd != 1 or flags & wire.TC:
        return None
    pos = wire.skip_name(reply, 12) + 4
    start = pos
    body_end = -1
    ttl_offsets: list[int] = []
    ttls: list[int] = []
    cnames: list[bytes] = []
    answer_ttls: list[int] = []
    soa_negative: int | None = None
    kept = [0, 0, 0]
    for section, count in enumerate((an, ns, ar)):
        for _ in range(count):
            rr_start = pos
            name_end = wire.skip_name(reply, pos)
            if name_end + 10 > len(reply):
                raise wire.WireError("record runs past the end of the message")
            rtype, _rclass, ttl, rdlen = RR_FIXED.unpack_from(reply, name_end)
            rdata = name_end + 10
            pos = rdata + rdlen
            if pos > len(reply):
                raise wire.WireError("rdata runs past the end of the message")
            if rtype == wire.TYPE_OPT:
                if pos != len(reply) or section != 2:
                    return None  # OPT not last: removing it would break compression offsets
                body_end = rr_start
                continue
            if not relay:
                ttl = min(max(ttl, cfg.min_ttl), cfg.max_ttl)
            if section == 0:
                answer_ttls.append(ttl)
                if rtype == wire.TYPE_CNAME:
                    cnames.append(wire.read_name(reply, rdata)[0])
            elif section == 1 and rtype == wire.TYPE_SOA:
                minimum = _TTL.unpack_from(reply, pos - 4)[0]
                soa_negative = min(ttl, minimum, cfg.negative_max_ttl)
                ttl = soa_negative
            offset_in_body = name_end + 4 - start
            ttl_offsets.append(offset_in_body)
            ttls.append(ttl)
            kept[section] += 1
    # Records stay in place (minus a trailing OPT), so compression pointers stay valid.
    body = bytearray(reply[start:body_end if body_end >= 0 else pos])
    for off, ttl in zip(ttl_offsets, ttls, strict=True):
        _TTL.pack_into(body, off, ttl)
    if rcode == wire.NOERROR and answer_ttls:
        lifetime = min(answer_ttls)
    elif rcode in (wire.NOERROR, wire.NXDOMAIN) and soa_negative is not None:
        lifetime = soa_negative  # RFC 2308 negative caching
    else:
        lifetime = 0  # SERVFAIL, REFUSED, or a negative answer without SOA: don't cache
    if lifetime <= 0 and not relay:
        return None
    return Entry(flags & wire.AD, rcode, (kept[0], kept[1], kept[2]), bytes(body),
                 tuple(ttl_offsets), tuple(ttls), tuple(cnames), now, lifetime, cfg.stale_ttl)


def relay_entry(raw: bytes, now: float) -> Entry | None:
    """An Entry for a reply that may not be cached (SERVFAIL, TTL 0, no SOA), so it is relayed
    with the same care; None when it does not parse."""
    try:
        return entry_from_reply(raw, CacheConfig(), now, relay=True)
    except (wire.WireError, IndexError, ValueError):
        return None


SEGMENTS = ("probation", "protected")

Key = tuple[bytes, int, int, int]


class AnswerCache:
    """Bounded segmented LRU (SLRU) of Entry objects keyed by (name, qtype, qclass, DO/CD).

    A first-seen answer goes into `probation`; a fresh hit moves it to `protected`, which holds
    at most `size` minus `probation_percent` of it (its least recently used entry steps back into
    probation when a promotion would overflow it). Room is made by evicting probation's least
    recently used entry first, so a flood of names asked once each (random subdomains, DGA
    lookups, every one NXDOMAIN) churns only probation and cannot wash out the names clients
    keep asking for; protected shrinks only while probation is empty.
    """

    def __init__(self, cfg: CacheConfig, probation_percent: int = 20) -> None:
        self.cfg = cfg
        size = max(1, cfg.size)
        self.size = size
        pct = min(max(probation_percent, 1), 100)
        # at least one slot each way: a size-1 cache still admits new answers
        self.protected_max = max(0, min(size - 1, size - size * pct // 100))
        self._probation: OrderedDict[Key, Entry] = OrderedDict()
        self._protected: OrderedDict[Key, Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.stale_served = 0
        self.promotions = 0
        self.evicted = {segment: 0 for segment in SEGMENTS}

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    @property
    def evictions(self) -> int:
        return self.evicted["probation"] + self.evicted["protected"]

    def segment_sizes(self) -> dict[str, int]:
        return {"probation": len(self._probation), "protected": len(self._protected)}

    def counters(self) -> dict[str, int]:
        """The monotonic counters, by metric name (workers send their deltas of these)."""
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "stale_served": self.stale_served, "promotions": self.promotions,
                "evictions_probation": self.evicted["probation"],
                "evictions_protected": self.evicted["protected"]}

    def get(self, key: Key, now: float) -> Entry | None:
        """A fresh entry, or None (the entry may still be there for `get_stale`)."""
        protected = self._protected
        entry = protected.get(key)
        if entry is not None:
            if entry.expires <= now:
                self.misses += 1
                return None
            protected.move_to_end(key)
            self.hits += 1
            return entry
        entry = self._probation.get(key)
        if entry is None or entry.expires <= now:
            self.misses += 1
            return None
        del self._probation[key]   # asked again: worth keeping through a flood
        self._protect(key, entry)
        self.promotions += 1
        self.hits += 1
        return entry

    def _protect(self, key: Key, entry: Entry) -> None:
        protected = self._protected
        protected[key] = entry
        if len(protected) > self.protected_max:
            old_key, old = protected.popitem(last=False)
            self._probation[old_key] = old   # demoted, most recent in probation

    def get_stale(self, key: Key, now: float) -> Entry | None:
        """An expired entry still inside the serve-stale window (RFC 8767)."""
        entry = self._protected.get(key) or self._probation.get(key)
        if entry is None or entry.stale_until <= now:
            return None
        self.stale_served += 1
        return entry

    def put(self, key: Key, entry: Entry) -> None:
        """Store an upstream answer: a refetched protected name stays protected."""
        protected = self._protected
        if key in protected:
            protected[key] = entry
            protected.move_to_end(key)
            return
        probation = self._probation
        probation[key] = entry
        probation.move_to_end(key)
        evicted = self.evicted
        while len(probation) + len(protected) > self.size:
            if probation:
                probation.popitem(last=False)
                evicted["probation"] += 1
            else:
                protected.popitem(last=False)
                evicted["protected"] += 1
