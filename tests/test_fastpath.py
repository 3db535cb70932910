"""dns/fastpath.py answers exactly as the full path does, and only where it may.

Every case builds the same query twice: once through `Resolver.handle` (where the fast path
runs first for UDP) and once through the full path alone (`Resolver._handle`, on a second
resolver so no memo is shared); the replies must be byte for byte equal. Each case also says
whether the fast path must have taken it, so a fast path that silently gave up everywhere
would fail here too.
"""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from gateway.dns import fastpath, wire
from gateway.dns.answers import BlockAnswers
from gateway.dns.chain import Resolver
from gateway.lists import SCOPE_BOTH, SCOPE_SELF, SCOPE_SUBS, Action, Rule
from gateway.lists.index import ListIndex
from gateway.lists.index_builder import IndexBuilder
from gateway.policy.decide import Profile
from tests.support.builders import make_profile, make_resolver
from tests.support.queries import ODD_SHAPES, queries

RULES: dict[bytes, tuple[Rule, ...]] = {
    b"adult.test": (Rule("adult", SCOPE_BOTH, Action.DEFAULT, False),),
    b"nx.test": (Rule("adult", SCOPE_BOTH, Action.NXDOMAIN, False),),
    b"nodata.test": (Rule("adult", SCOPE_BOTH, Action.NODATA, False),),
    b"pass.adult.test": (Rule("adult", SCOPE_BOTH, Action.PASSTHRU, False),),
    b"csam.test": (Rule("csam", SCOPE_BOTH, Action.DEFAULT, True, "VN-2026-0001"),),
    b"feed.test": (Rule("gambling", SCOPE_BOTH, Action.DEFAULT, False, "F-7"),),
    b"games.test": (Rule("games", SCOPE_BOTH, Action.DEFAULT, False),),
    b"exact.test": (Rule("adult", SCOPE_SELF, Action.DEFAULT, False),),
    b"below.test": (Rule("adult", SCOPE_SUBS, Action.DEFAULT, False),),
    b"two.test": (Rule("adult", SCOPE_BOTH, Action.DEFAULT, False),
                  Rule("games", SCOPE_BOTH, Action.DEFAULT, False)),
    b"social.test": (Rule("social", SCOPE_BOTH, Action.DEFAULT, False),),
    b"sub.adult.test": (Rule("games", SCOPE_BOTH, Action.NODATA, False),),
    b"porn.csam.test": (Rule("adult", SCOPE_BOTH, Action.DEFAULT, False),),
}


def index() -> ListIndex:
    b = IndexBuilder()
    for key, rules in RULES.items():
        for rule in rules:
            b.add(key, rule)
    return ListIndex.from_bytes(b.to_bytes())


PROFILES = {
    "nxdomain": {"answer": "nxdomain"},
    "nodata": {"answer": "nodata"},
    "blockpage": {"answer": "blockpage"},
    "null": {"answer": "null"},
    "filtered": {"answer": "nxdomain", "filtered": True},
    "scheduled": {"answer": "nxdomain", "scheduled": frozenset({"games"})},
    "bypass": {"answer": "nxdomain", "bypass": True},
    "deny": {"answer": "nxdomain", "deny": [b"deny.test", b"deny.adult.test"]},
    "allow": {"answer": "nxdomain", "allow": [b"ok.adult.test"]},
}


def pair(kind: str) -> tuple[Resolver, Resolver]:
    """Two resolvers over equal profiles: one answers via handle(), one via _handle() only."""
    out = []
    for _ in range(2):
        options = dict(PROFILES[kind])
        blocked = {"adult", "gambling", "games"} if kind == "scheduled" else {"adult", "gambling"}
        profile = make_profile(blocked, index=index(), **options)
        answers = BlockAnswers.for_addresses(30, ["127.0.0.80", "::80"])
        out.append(make_resolver(profile, answers=answers))
    return out[0], out[1]


def expect_fast(kind: str, label: str) -> bool:
    """Whether the fast path must answer this case (else it must leave it to the full path)."""
    name = label.split(" ")[0].lower()
    if name.endswith("pass.adult.test") or name in ("allowed.test", "x.exact.test",
                                                      "below.test", "social.test",
                                                      "deny.test"):
        return False  # no list block: passthru, no entry, wrong scope, category not blocked
    if name == "deny.adult.test":
        return kind != "deny"  # the network's deny list decides (the full path says "deny")
    if name == "x.ok.adult.test":
        return kind != "allow"  # the network's allow list lifts the category block
    if name.endswith("games.test"):
        return kind == "scheduled"
    return True  # incl. two rules on one name and blocks at two levels (a.sub.adult.test)


@pytest.mark.parametrize("kind", sorted(PROFILES))
def test_fast_replies_equal_the_full_paths(kind: str) -> None:
    fast, full = pair(kind)
    profile = fast.view.clients.lookup("127.0.0.1")
    assert isinstance(profile, Profile)
    taken = 0
    for label, packet in queries():
        got = fast.handle(packet, "127.0.0.1", "udp")
        want = full._handle(packet, "127.0.0.1", "udp", 0.0)
        assert isinstance(got, bytes) == isinstance(want, bytes), label
        if isinstance(want, bytes):
            assert got == want, label
        else:  # a name to forward: both paths leave it to the upstream
            for pending in (got, want):
                pending.close()  # type: ignore[union-attr]
        took = fastpath.blocked(packet, profile, fast.view.answers, fast.fast) is not None
        assert took == expect_fast(kind, label), label
        taken += took
    assert taken >= 40


def test_counts_match_the_full_path() -> None:
    fast, full = pair("nxdomain")
    for _label, packet in queries():
        for result in (fast.handle(packet, "127.0.0.1", "udp"),
                       full._handle(packet, "127.0.0.1", "udp", 0.0)):
            if not isinstance(result, bytes) and result is not None:
                result.close()
    assert fast.stats.queries == full.stats.queries


def test_a_blocked_reply_reads_back_as_the_user_sees_it() -> None:
    fast, _ = pair("blockpage")
    m = dns.message.make_query("www.adult.test", "A", use_edns=0)
    reply = dns.message.from_wire(fast.handle(m.to_wire(), "127.0.0.1", "udp"))  # type: ignore
    assert reply.id == m.id and reply.rcode() == dns.rcode.NOERROR
    assert [r.address for r in reply.answer[0]] == ["127.0.0.80"]
    ede = [o for o in reply.options if o.otype == dns.edns.EDE]
    assert ede[0].code == 15 and ede[0].text == "adult: adult.test"


@pytest.mark.parametrize("packet", ODD_SHAPES)
def test_other_shapes_are_left_to_the_full_parser(packet: bytes) -> None:
    assert fastpath.parse(packet) is None


def test_a_qtype_sweep_keeps_the_prebuilt_parts_bounded() -> None:
    fast, _ = pair("nxdomain")
    for qtype in range(1, 3001):
        packet = wire.build_query(qtype, wire.key_to_wire(b"adult.test")
                                  + qtype.to_bytes(2, "big") + b"\x00\x01", do=False, cd=False)
        reply = fast.handle(packet, "127.0.0.1", "udp")
        assert isinstance(reply, bytes) and reply[3] & 0xF == wire.NXDOMAIN
        assert len(fast.view.answers.parts) <= 1024


def test_a_dotted_label_gets_a_well_formed_soa_owner() -> None:
    """A label holding a dot is escaped in the key, so the key offset of the matching entry
    is not a wire offset: the SOA owner must still point at a name (here the whole qname)."""
    fast, _ = pair("nxdomain")
    packet = (b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
              b"\x05ad.lt\x05adult\x04test\x00\x00\x01\x00\x01")
    reply = dns.message.from_wire(fast.handle(packet, "127.0.0.1", "udp"))  # type: ignore
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.authority[0].name == reply.question[0].name
