"""Answer cache: upstream replies kept as prebuilt bytes whose TTLs count down on every hit.

Keys are name, qtype, qclass and DO/CD bits in one bytes object (`cache_key`). The cache
holds only what upstreams said, never a policy decision: the decision runs before the cache
on every query, so a cached answer cannot cross from one tier to another (design.md: "a fast
path that stays correct").
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Any

from gateway.config.dns import CacheConfig
from gateway.dns import wire
from gateway.dns.wire import RR_FIXED

_TTL = struct.Struct(">I")
# An entry is one bytes object: expiry, AD bit | rcode, ANCOUNT, NSCOUNT, ARCOUNT (without OPT),
# the body's length, the lifetime, how many TTLs; the body; (offset in body, TTL as stored) per
# record; then each CNAME target in the answer, length-prefixed.
_META = struct.Struct(">dHHHHHIH")
_EXPIRES = struct.Struct(">d")
_TTL_AT = struct.Struct(">HI")
_HAS_CNAMES = 0x100  # in the AD | rcode field: CNAME targets follow the TTLs
_KEY_TAIL = struct.Struct(">HHB")  # qtype, qclass, flag bits: after the name in a cache key

STALE_ANSWER_TTL = 30  # RFC 8767 4: TTL of stale data served

Key = bytes


def cache_key(name: bytes, qtype: int, qclass: int, bits: int) -> Key:
    """The lowercase name then a fixed 5-byte tail: one bytes object (hashed once, no tuple),
    and two different keys can never read the same."""
    return name + _KEY_TAIL.pack(qtype, qclass, bits)


def key_bits(key: Key) -> int:
    """The flag bits of a `cache_key` (DO << 1 | CD, plus the chain's no-ECH bit)."""
    return key[-1]


class Entry(bytes):
    """An upstream reply minus header, question and OPT, with where its TTLs sit.

    One bytes object (layout at _META) on purpose: the cache holds tens of thousands and the
    reply memo keeps more alive, and an object with slots, a float and tuples beside it cost
    twice as much. No rendered copy is kept: the UDP reply memo keeps the reply it rendered
    and counts its TTLs down in place once a second (`patch`).
    """

    __slots__ = ()

    @property
    def expires(self) -> float:
        expires: float = _EXPIRES.unpack_from(self)[0]
        return expires

    @property
    def rcode(self) -> int:
        return self[9] & 0xF

    @property
    def stored(self) -> float:
        meta = _META.unpack_from(self)
        stored: float = meta[0] - meta[6]
        return stored

    @property
    def cnames(self) -> tuple[bytes, ...]:
        """CNAME targets in the answer, checked against the profile's policy on every hit."""
        if not self[8] & _HAS_CNAMES >> 8:
            return ()
        meta = _META.unpack_from(self)
        pos = _META.size + meta[5] + _TTL_AT.size * meta[7]
        out = []
        while pos < len(self):
            size = self[pos]
            out.append(self[pos + 1:pos + 1 + size])
            pos += 1 + size
        return tuple(out)

    def records(self, now: float, stale: bool = False) -> bytes:
        """The record sections with TTLs counted down to `now` (or all at the stale TTL)."""
        return self._records(_META.unpack_from(self), now, stale)

    def _records(self, meta: tuple[Any, ...], now: float, stale: bool) -> bytes:
        size, count = meta[5], meta[7]
        if not count:
            return self[_META.size:_META.size + size]
        view = memoryview(self)
        buf = bytearray(view[_META.size:_META.size + size])
        elapsed = int(now - (meta[0] - meta[6]))
        pack_ttl = _TTL.pack_into
        start = _META.size + size
        for off, ttl in _TTL_AT.iter_unpack(view[start:start + _TTL_AT.size * count]):
            pack_ttl(buf, off, STALE_ANSWER_TTL if stale else max(ttl - elapsed, 0))
        return bytes(buf)

    def patch(self, buf: bytearray, base: int, now: float) -> None:
        """Count the TTLs down to `now`, in place, in a reply rendered from this entry whose
        records start at `base` (same length: only the TTL bytes change)."""
        expires, _head, _an, _ns, _ar, size, lifetime, count = _META.unpack_from(self)
        elapsed = int(now - (expires - lifetime))
        pack_ttl = _TTL.pack_into
        start = _META.size + size
        for off, ttl in _TTL_AT.iter_unpack(memoryview(self)[start:start + _TTL_AT.size * count]):
            pack_ttl(buf, base + off, max(ttl - elapsed, 0))

    def reply(self, q: wire.Query, now: float, limit: int, stale: bool = False) -> bytes:
        """The full reply for client query `q`: its ID and question bytes, our OPT if it sent one.

        `limit` is the largest size the transport takes; over it the reply goes out with TC.
        The records start at 12 + len(q.question) unless the reply is truncated (TC set).
        """
        meta = _META.unpack_from(self)
        body = self._records(meta, now, stale)
        _expires, head, an, ns, ar, _size, _lifetime, _count = meta
        rcode = head & 0xF
        ad = head & wire.AD if q.do or q.flags & wire.AD else 0
        flags = wire.reply_flags(q, rcode, ad)
        if q.edns:
            out = (wire.header(q.id, flags, 1, an, ns, ar + 1) + q.question + body
                   + wire.opt_record(q.do, rcode))
        else:
            out = wire.header(q.id, flags, 1, an, ns, ar) + q.question + body
        if len(out) > limit:
            # The upstream's AD stays on the truncated reply, as unbound sends it: the client
            # retrying over TCP gets the same answer, and TC alone says nothing about validation.
            return wire.truncated_reply(q, rcode, ad)
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
    lifetime = max(lifetime, 0)
    head = (flags & wire.AD) | rcode | (_HAS_CNAMES if cnames else 0)
    data = bytearray(_META.pack(now + lifetime, head, kept[0], kept[1], kept[2], len(body),
                                lifetime, len(ttls)))
    data += body
    for off, ttl in zip(ttl_offsets, ttls, strict=True):
        data += _TTL_AT.pack(off, ttl)
    for target in cnames:
        data += bytes((len(target),)) + target
    return Entry(data)


def relay_entry(raw: bytes, now: float) -> Entry | None:
    """An Entry for a reply that may not be cached (SERVFAIL, TTL 0, no SOA), so it is relayed
    with the same care; None when it does not parse."""
    try:
        return entry_from_reply(raw, CacheConfig(), now, relay=True)
    except (wire.WireError, IndexError, ValueError):
        return None


SEGMENTS = ("probation", "protected")


class AnswerCache:
    """Bounded segmented LRU (SLRU) of Entry objects keyed by `cache_key` (name, type, bits).

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

    key = staticmethod(cache_key)
    key_bits = staticmethod(key_bits)

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
        if entry is None or entry.expires + self.cfg.stale_ttl <= now:
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
