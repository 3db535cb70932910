"""The query path's memo: repeated query bytes are answered right (ID, TTL, expiry, tiers)."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset

from gateway.dns import answers as answers_mod
from gateway.dns.answers import BlockAnswers
from gateway.dns.cache import entry_from_reply
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
    r.cache.put((name.lower().rstrip(".").encode(), 1, 1, 0), entry)


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
