"""The query path's memo: repeated query bytes are answered right (ID, TTL, expiry, tiers)."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset

from gateway.dns import answers as answers_mod
from gateway.dns.answers import BlockAnswers
from gateway.dns.cache import cache_key, entry_from_reply
from gateway.dns.chain import Resolver
from tests.support.builders import list_index, make_profile, make_resolver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(clock: Clock) -> Resolver:
    index = list_index({b"blocked.test": "adult"})
    return make_resolver(
        [("127.0.0.1/32", make_profile({"adult"}, id=0, network="net0", tier="tier0",
                                       index=index)),
         ("127.0.0.4/32", make_profile(id=1, network="net1", tier="tier1", index=index))],
        answers=BlockAnswers.for_addresses(30, ["127.0.0.1"]), clock=clock)


def fill(r: Resolver, name: str, ttl: int, now: float) -> None:
    q = dns.message.make_query(name, "A")
    reply = dns.message.make_response(q)
    reply.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", "A", "192.0.2.1"))
    entry = entry_from_reply(reply.to_wire(), r.cache.cfg, now)
    assert entry is not None
    r.cache.put(cache_key(name.lower().rstrip(".").encode(), 1, 1, 0), entry)


def ask(r: Resolver, packet: bytes, client: str = "127.0.0.1") -> dns.message.Message:
    out = r.handle(packet, client, "udp")
    assert isinstance(out, bytes), "expected a synchronous answer"
    return dns.message.from_wire(out)


def test_memoized_cached_answer_patches_id_and_counts_ttl_down() -> None:
    clock = Clock()
    r = resolver(clock)
    fill(r, "www.example.test", 300, clock.now)
    q = dns.message.make_query("WWW.Example.test", "A")
    first = ask(r, q.to_wire())
    assert first.answer[0].ttl == 300
    for step, qid in ((10.5, 7), (30.0, 8)):
        clock.now += step
        q.id = qid
        again = ask(r, q.to_wire())
        assert again.id == qid
        assert again.question[0].name.to_text() == "WWW.Example.test."
        assert again.answer[0].ttl == 300 - int(clock.now - 1000.0)
    assert r.stats.queries[("cached", "", "tier0", "udp")] == 3


def test_memo_expires_with_the_entry() -> None:
    clock = Clock()
    r = resolver(clock)
    fill(r, "short.example.test", 5, clock.now)
    packet = dns.message.make_query("short.example.test", "A").to_wire()
    ask(r, packet)
    clock.now += 6
    pending = r.handle(packet, "127.0.0.1", "udp")
    assert not isinstance(pending, bytes)  # expired: goes upstream, not served from the memo
    pending.close()  # type: ignore[union-attr]


def test_memo_is_per_profile() -> None:
    clock = Clock()
    r = resolver(clock)
    fill(r, "x.blocked.test", 300, clock.now)
    packet = dns.message.make_query("x.blocked.test", "A").to_wire()
    assert ask(r, packet, "127.0.0.4").answer  # tier1 blocks nothing: the cached answer
    assert ask(r, packet, "127.0.0.1").rcode() == 3  # tier0 blocks adult: NXDOMAIN
    assert ask(r, packet, "127.0.0.1").rcode() == 3  # and again from its memo
    assert ask(r, packet, "127.0.0.4").answer


def test_memos_and_blocked_bodies_stay_within_their_limits() -> None:
    """Issue #10 item 2: a qtype x EDNS x DO sweep over blocked names stays bounded, and every
    answer is still the right one (bodies rebuilt after eviction are the same bytes)."""
    profile = make_profile({"adult"}, index=list_index({b"blocked.test": "adult"}),
                           verdict_memo=4, reply_memo=8)
    answers = BlockAnswers.for_addresses(30, [], blocked_bodies=5)
    r = make_resolver(profile, answers=answers)
    first: dict[tuple[str, int, int], bytes] = {}
    for rounds in range(2):
        for qtype in range(1, 200):
            for name in ("a.blocked.test", "b.blocked.test", "c.blocked.test"):
                q = dns.message.make_query(name, qtype, use_edns=0 if qtype % 2 else None,
                                           want_dnssec=qtype % 3 == 0)
                q.id = 7
                out = r.handle(q.to_wire(), "127.0.0.1", "udp")
                assert isinstance(out, bytes)
                if rounds == 0:
                    first[(name, qtype, q.flags)] = out
                    msg = dns.message.from_wire(out)
                    assert msg.rcode() == dns.rcode.NXDOMAIN and msg.authority
                else:
                    assert out == first[(name, qtype, q.flags)]
                assert len(answers.bodies) <= 5 and len(profile.replies) <= 8
                assert len(profile._memo) <= 4
    # Uncached blocked names take dns/fastpath.py, which keeps only name-independent parts
    # (per answer x qtype x EDNS x DO), within their own bound.
    assert 0 < len(answers.parts) <= answers_mod._PARTS_LIMIT


def test_verdict_memo_keeps_its_bound_and_the_newest_half() -> None:
    """limits.memory.verdict_memo: never more than the limit, however many names; the newest
    half always answers from the memo (an old entry asked again is kept, not re-decided)."""
    index = list_index({b"blocked.test": "adult"})
    profile = make_profile({"adult"}, index=index, verdict_memo=10)
    for i in range(1000):
        verdict = profile.decide(f"n{i}.blocked.test".encode())
        assert verdict.blocked and verdict.category == "adult"
        assert len(profile._memo) + len(profile._older) <= 10
    newest = [f"n{i}.blocked.test".encode() for i in range(997, 1000)]
    kept = {key: profile.decide(key) for key in newest}
    for i in range(1000, 1002):   # two new names: the last five asked stay memoized...
        profile.decide(f"n{i}.blocked.test".encode())
    assert all(profile.decide(key) is kept[key] for key in newest)  # ...the same objects
    one = make_profile({"adult"}, index=index, verdict_memo=1)
    for i in range(5):
        one.decide(f"n{i}.blocked.test".encode())
        assert len(one._memo) + len(one._older) <= 1
    off = make_profile({"adult"}, index=index, verdict_memo=0)
    assert off.decide(b"x.blocked.test").blocked and not off._memo and not off._older


def test_memoized_replies_share_one_stats_key_per_action_category_tier() -> None:
    """A 16k reply memo held 16k equal 4-tuples (1.1 MB): now one per (action, category,
    tier, protocol)."""
    profile = make_profile({"adult"}, index=list_index({b"blocked.test": "adult"}))
    r = make_resolver(profile)
    for i in range(50):
        q = dns.message.make_query(f"n{i}.blocked.test", "A")
        assert isinstance(r.handle(q.to_wire(), "127.0.0.1", "udp"), bytes)
    keys = {id(memo.stats_key) for memo in profile.replies.values()}
    assert len(profile.replies) == 50 and len(keys) == 1


def test_memoized_cached_answer_equals_the_slow_paths_reply() -> None:
    """The memo keeps the rendered reply and no parsed query; TTL ticks patch it in place. The
    bytes are what the slow path renders, for a plain, an EDNS and a DO query, each second."""
    clock = Clock()
    r = resolver(clock)
    fill(r, "www.example.test", 300, clock.now)
    do_key = cache_key(b"www.example.test", 1, 1, 2)
    r.cache.put(do_key, r.cache.get(cache_key(b"www.example.test", 1, 1, 0), clock.now))  # type: ignore[arg-type]
    for kw in ({}, {"use_edns": 0}, {"use_edns": 0, "want_dnssec": True}):
        packet = dns.message.make_query("WWW.Example.test", "A", **kw).to_wire()  # type: ignore[arg-type]
        ask(r, packet)
        for step in (0.4, 0.7, 1.0, 12.3):
            clock.now += step
            memo = r.handle(packet, "127.0.0.1", "udp")
            r.view.clients.lookup("127.0.0.1").replies.clear()   # type: ignore[union-attr]
            assert memo == r.handle(packet, "127.0.0.1", "udp")
    assert r.stats.queries[("cached", "", "tier0", "udp")] == 3 + 3 * 4 * 2
