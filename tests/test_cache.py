"""Cached answers: TTLs count down, the client's ID/question/EDNS are honoured, limits hold."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from gateway.config.dns import CacheConfig
from gateway.dns import wire
from gateway.dns.cache import AnswerCache, Entry, entry_from_reply


def upstream_reply(name: str = "www.example.test", *, answers: list[str] | None = None,
                   soa_ttl: int | None = None, rcode: int = 0, ad: bool = False,
                   edns: bool = True) -> bytes:
    query = dns.message.make_query(name, "A", use_edns=0 if edns else None)
    reply = dns.message.make_response(query)
    for text in answers or []:
        reply.answer.append(dns.rrset.from_text(*text.split(" ", 4)))  # type: ignore[arg-type]
    if soa_ttl is not None:
        reply.authority.append(dns.rrset.from_text(
            "example.test.", soa_ttl, "IN", "SOA", "ns.example.test. h.example.test. 1 2 3 4 60"))
    reply.set_rcode(rcode)
    if ad:
        reply.flags |= dns.flags.AD
    return reply.to_wire()


def client_query(name: str = "WWW.Example.TEST", **kw: object) -> wire.Query:
    q = wire.parse_query(dns.message.make_query(name, "A", **kw).to_wire())  # type: ignore[arg-type]
    assert q is not None
    return q


def test_hit_patches_id_question_case_and_counts_ttl_down() -> None:
    raw = upstream_reply(answers=["www.example.test. 300 IN CNAME a.example.test.",
                                  "a.example.test. 100 IN A 192.0.2.2"])
    entry = entry_from_reply(raw, CacheConfig(), now=1000.0)
    assert entry is not None and entry.expires == 1100.0
    q = client_query(use_edns=0)
    reply = dns.message.from_wire(entry.reply(q, now=1042.7, limit=1232))
    assert reply.id == q.id
    assert reply.question[0].name.to_text() == "WWW.Example.TEST."
    assert sorted(rr.ttl for rr in reply.answer) == [58, 258]  # both counted down 42 s
    assert reply.edns == 0 and reply.payload == 1232
    assert reply.flags & dns.flags.RA and reply.flags & dns.flags.RD


def test_opt_from_upstream_is_not_echoed_to_a_client_without_edns() -> None:
    raw = upstream_reply(answers=["www.example.test. 300 IN A 192.0.2.1"])
    entry = entry_from_reply(raw, CacheConfig(), now=0.0)
    assert entry is not None
    reply = dns.message.from_wire(entry.reply(client_query(), now=0.0, limit=512))
    assert reply.edns == -1
    assert len(reply.additional) == 0


def test_ttl_clamps_apply() -> None:
    raw = upstream_reply(answers=["www.example.test. 5 IN A 192.0.2.1"])
    entry = entry_from_reply(raw, CacheConfig(min_ttl=60, max_ttl=120), now=0.0)
    assert entry is not None and entry.expires == 60
    raw = upstream_reply(answers=["www.example.test. 99999 IN A 192.0.2.1"])
    entry = entry_from_reply(raw, CacheConfig(min_ttl=60, max_ttl=120), now=0.0)
    assert entry is not None and entry.expires == 120


@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.NOERROR])
def test_negative_answers_cache_for_soa_minimum(rcode: int) -> None:
    raw = upstream_reply(soa_ttl=600, rcode=rcode)  # SOA MINIMUM is 60
    entry = entry_from_reply(raw, CacheConfig(), now=0.0)
    assert entry is not None and entry.expires == 60
    reply = dns.message.from_wire(entry.reply(client_query(), now=10.0, limit=512))
    assert reply.rcode() == rcode
    assert reply.authority[0].ttl == 50


def test_not_cached_servfail_or_negative_without_soa() -> None:
    assert entry_from_reply(upstream_reply(rcode=dns.rcode.SERVFAIL), CacheConfig(), 0.0) is None
    assert entry_from_reply(upstream_reply(rcode=dns.rcode.NXDOMAIN), CacheConfig(), 0.0) is None
    relayed = entry_from_reply(upstream_reply(rcode=dns.rcode.SERVFAIL), CacheConfig(), 0.0,
                               relay=True)
    assert relayed is not None and relayed.rcode == dns.rcode.SERVFAIL


def test_cname_targets_are_collected_for_policy_checks() -> None:
    raw = upstream_reply(answers=["www.example.test. 300 IN CNAME Edge.CDN.test.",
                                  "edge.cdn.test. 300 IN A 192.0.2.7"])
    entry = entry_from_reply(raw, CacheConfig(), now=0.0)
    assert entry is not None and entry.cnames == (b"edge.cdn.test",)


def test_oversized_answer_is_truncated_for_udp() -> None:
    answers = [f"www.example.test. 300 IN A 192.0.2.{i}" for i in range(1, 60)]
    entry = entry_from_reply(upstream_reply(answers=answers), CacheConfig(), now=0.0)
    assert entry is not None
    reply = dns.message.from_wire(entry.reply(client_query(), now=0.0, limit=512))
    assert reply.flags & dns.flags.TC
    assert len(reply.answer) == 0
    full = dns.message.from_wire(entry.reply(client_query(), now=0.0, limit=65535))
    assert len(full.answer[0]) == 59


def test_ad_bit_only_for_clients_that_asked_for_dnssec() -> None:
    raw = upstream_reply(answers=["www.example.test. 300 IN A 192.0.2.1"], ad=True)
    entry = entry_from_reply(raw, CacheConfig(), now=0.0)
    assert entry is not None
    plain = dns.message.from_wire(entry.reply(client_query(), now=0.0, limit=512))
    assert not plain.flags & dns.flags.AD
    do = dns.message.from_wire(entry.reply(client_query(use_edns=0, want_dnssec=True), 0.0, 1232))
    assert do.flags & dns.flags.AD


def test_truncated_reply_keeps_the_upstreams_ad_bit() -> None:
    """Issue #10 item 16: unbound answers a DO query that does not fit TC=1 with AD=1."""
    raw = upstream_reply(answers=[f"www.example.test. 300 IN A 192.0.2.{i}" for i in range(40)],
                         ad=True)
    entry = entry_from_reply(raw, CacheConfig(), now=0.0)
    assert entry is not None
    do = dns.message.from_wire(entry.reply(client_query(use_edns=0, want_dnssec=True,
                                                        payload=512), 0.0, 512))
    assert do.flags & dns.flags.TC and do.flags & dns.flags.AD and not do.answer
    plain = dns.message.from_wire(entry.reply(client_query(), 0.0, 512))
    assert plain.flags & dns.flags.TC and not plain.flags & dns.flags.AD


def test_stale_answers_have_ttl_30() -> None:
    raw = upstream_reply(answers=["www.example.test. 300 IN A 192.0.2.1"])
    entry = entry_from_reply(raw, CacheConfig(), now=0.0)
    assert entry is not None
    reply = dns.message.from_wire(entry.reply(client_query(), now=900.0, limit=512, stale=True))
    assert reply.answer[0].ttl == 30


def test_lru_evicts_oldest_and_counts() -> None:
    cache = AnswerCache(CacheConfig(size=2))
    raw = upstream_reply(answers=["www.example.test. 300 IN A 192.0.2.1"])
    for i in range(3):
        entry = entry_from_reply(raw, cache.cfg, now=0.0)
        assert entry is not None
        cache.put((b"n%d" % i, 1, 1, 0), entry)
    assert len(cache) == 2 and cache.evictions == 1
    assert cache.get((b"n0", 1, 1, 0), 1.0) is None
    assert cache.get((b"n2", 1, 1, 0), 1.0) is not None
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.get((b"n2", 1, 1, 0), 301.0) is None  # expired
    assert cache.get_stale((b"n2", 1, 1, 0), 301.0) is not None


def _entry(cache: AnswerCache, now: float = 0.0) -> Entry:
    entry = entry_from_reply(upstream_reply(answers=["www.example.test. 300 IN A 192.0.2.1"]),
                             cache.cfg, now=now)
    assert entry is not None
    return entry


def test_a_flood_of_unique_names_cannot_evict_names_asked_again() -> None:
    """Issue #12: with a plain LRU, 100 answers asked once each evicted every popular one."""
    cache = AnswerCache(CacheConfig(size=50), probation_percent=20)
    popular = [(b"p%d" % i, 1, 1, 0) for i in range(40)]   # protected holds 80 % = 40
    for key in popular:
        cache.put(key, _entry(cache))
        assert cache.get(key, 1.0) is not None   # asked again: promoted
    assert cache.promotions == 40
    for i in range(1000):   # 20x the cache, each name once (a random-subdomain flood)
        cache.put((b"r%d.flood.test" % i, 1, 1, 0), _entry(cache))
    assert len(cache) == 50
    assert cache.segment_sizes() == {"probation": 10, "protected": 40}
    assert all(cache.get(key, 2.0) is not None for key in popular)
    assert cache.evicted == {"probation": 990, "protected": 0}
    assert cache.evictions == 990


def test_protected_overflow_steps_back_into_probation() -> None:
    cache = AnswerCache(CacheConfig(size=10), probation_percent=20)   # protected: 8
    keys = [(b"n%d" % i, 1, 1, 0) for i in range(10)]
    for key in keys:
        cache.put(key, _entry(cache))
        cache.get(key, 1.0)
    # the two least recently promoted stepped back; nothing was evicted
    assert cache.segment_sizes() == {"probation": 2, "protected": 8}
    assert cache.evictions == 0 and len(cache) == 10
    # a refetch of a protected name (its entry expired) keeps it protected
    cache.put(keys[9], _entry(cache, now=500.0))
    assert cache.segment_sizes() == {"probation": 2, "protected": 8}
    # an expired entry is a miss but stays for serve-stale
    assert cache.get(keys[5], 400.0) is None and cache.get_stale(keys[5], 400.0) is not None


def _traced_bytes_per_item(build: object, count: int) -> float:
    import gc
    import tracemalloc
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()  # type: ignore[operator]
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept is not None
    return used / count


def test_a_cached_answer_costs_about_a_third_of_a_kb() -> None:
    """Issue #12 item 2: an answer cache of 20k entries must fit the 80 MB budget with a 1M list.
    An entry (key, SLRU slot and the entry itself, a one-record answer) was ~0.63 KB as an
    object of 12 slots, three floats, three tuples and a tuple key; it is one bytes key, one
    object, one bytes blob and a float now (docs/memory.md)."""
    raws = [upstream_reply(f"www.n{i}.cached-site.test",
                           answers=[f"www.n{i}.cached-site.test. 300 IN A 192.0.2.1"])
            for i in range(4000)]
    keys = [f"www.n{i}.cached-site.test".encode() for i in range(4000)]
    cache = AnswerCache(CacheConfig(size=4000))

    def fill() -> AnswerCache:
        for name, raw in zip(keys, raws, strict=True):
            entry = entry_from_reply(raw, cache.cfg, now=0.0)
            assert entry is not None
            cache.put(cache.key(name, 1, 1, 0), entry)
        return cache

    per_entry = _traced_bytes_per_item(fill, len(raws))
    assert len(cache) == 4000
    assert per_entry < 400, f"{per_entry:.0f} bytes per cached answer"


def test_ttls_patched_in_place_match_a_fresh_render() -> None:
    """The reply memo counts TTLs down in the bytes it rendered earlier (`Entry.patch`): the
    result is byte for byte what rendering afresh gives, SOA and OPT included."""
    raw = upstream_reply(answers=["www.example.test. 300 IN CNAME a.example.test.",
                                  "a.example.test. 100 IN A 192.0.2.2"], soa_ttl=600, ad=True)
    entry = entry_from_reply(raw, CacheConfig(), now=1000.0)
    assert entry is not None and entry.stored == 1000.0
    q = client_query(use_edns=0, want_dnssec=True)
    buf = bytearray(entry.reply(q, 1000.0, 1232))
    for now in (1000.9, 1001.0, 1042.7, 1099.99):
        entry.patch(buf, 12 + len(q.question), now)
        assert bytes(buf) == entry.reply(q, now, 1232)
