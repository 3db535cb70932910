"""The admin page's most-blocked names (dns/tally.py): counted from the reply memo's hits, from
evicted memo entries and from the full path when there is no memo; bounded per network and
hour; 24 hours kept."""

from __future__ import annotations

import dns.message

from gateway.dns.tally import NO_TALLY, BlockedTally
from tests.support.builders import list_index, make_profile, make_resolver

T0 = 1_780_000_000.0


class Clock:
    """The one fake: time."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _query(name: str) -> bytes:
    return dns.message.make_query(name, "A", use_edns=False).to_wire()


def test_every_blocked_udp_query_is_counted_through_the_memo() -> None:
    index = list_index({b"adult.example": "adult", b"gamble.example": "gambling"})
    profile = make_profile(["adult", "gambling"], index=index, network="room-2")
    resolver = make_resolver(profile)
    tally = resolver.tally = BlockedTally(10)
    for _ in range(5):
        resolver.handle(_query("adult.example"), "127.0.0.1", "udp")   # 1 miss, 4 memo hits
    resolver.handle(_query("www.gamble.example"), "127.0.0.1", "udp")
    resolver.handle(_query("adult.example"), "127.0.0.1", "tcp")       # no memo: counted now
    tally.harvest(profile)
    assert tally.top(5) == {"room-2": [("adult.example", 6), ("www.gamble.example", 1)]}
    assert tally.by_category() == {"room-2": {"adult": 6, "gambling": 1}}
    tally.harvest(profile)                                               # read once only
    assert tally.top(5)["room-2"][0] == ("adult.example", 6)


def test_an_evicted_memo_entry_keeps_its_hits() -> None:
    index = list_index({b"a.example": "adult", b"b.example": "adult"})
    profile = make_profile(["adult"], index=index, network="n", reply_memo=1)
    resolver = make_resolver(profile)
    tally = resolver.tally = BlockedTally(10)
    for name in ("a.example", "a.example", "a.example", "b.example", "b.example"):
        resolver.handle(_query(name), "127.0.0.1", "udp")
    tally.harvest(profile)
    assert tally.top(5) == {"n": [("a.example", 3), ("b.example", 2)]}


def test_tables_are_bounded_per_hour_and_kept_24_hours() -> None:
    clock = Clock()
    tally = BlockedTally(3, clock)
    tally.add("n", "frequent.example", 50)
    for i in range(100):                         # a flood of one-off names
        tally.add("n", f"x{i}.example")
    assert len(tally) == 3 and tally.replaced == 98
    assert tally.top(1)["n"][0][0] == "frequent.example"     # never pushed out
    clock.now += 3600
    tally.add("n", "later.example", 7)
    assert len(tally) == 4                       # a new hour, a new table
    clock.now += 23 * 3600
    assert tally.top(5)["n"] == [("later.example", 7)]       # the first hour is over 24 h old
    clock.now += 3600
    tally.add("n", "now.example")
    assert len(tally) == 1                       # old hours dropped


def test_the_resolver_s_default_tally_counts_nothing() -> None:
    index = list_index({b"adult.example": "adult"})
    resolver = make_resolver(make_profile(["adult"], index=index))
    assert resolver.tally is NO_TALLY
    resolver.handle(_query("adult.example"), "127.0.0.1", "tcp")
    assert len(NO_TALLY) == 0 and NO_TALLY.top(5) == {}
