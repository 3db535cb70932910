"""The pure decision: mandatory > deny/allow > tier categories, most specific entry first."""

from __future__ import annotations

import pytest

from gateway.lists import SCOPE_BOTH, SCOPE_SELF, SCOPE_SUBS, Action, Rule
from gateway.lists.index import ListIndex
from gateway.lists.index_builder import IndexBuilder
from gateway.policy.decide import EDE_BLOCKED, EDE_CENSORED, Profile, decide
from tests.support.builders import make_profile

RULES = [
    (b"csam-test.invalid", Rule("csam", SCOPE_BOTH, Action.DEFAULT, True)),
    (b"adult.test", Rule("adult", SCOPE_BOTH, Action.DEFAULT, False)),
    (b"ok.adult.test", Rule("adult", SCOPE_BOTH, Action.PASSTHRU, False)),
    (b"gamble.test", Rule("gambling", SCOPE_SELF, Action.NXDOMAIN, False)),
    (b"gamble.test", Rule("gambling", SCOPE_SUBS, Action.NODATA, False)),
    (b"both.test", Rule("adult", SCOPE_BOTH, Action.DEFAULT, False)),
    (b"both.test", Rule("social", SCOPE_BOTH, Action.DEFAULT, False)),
    (b"legal.test", Rule("court-order", SCOPE_BOTH, Action.DEFAULT, True)),
    (b"legal.test", Rule("court-order", SCOPE_BOTH, Action.PASSTHRU, False)),
    (b"test", Rule("tld", SCOPE_SUBS, Action.DEFAULT, False)),
]


def index() -> ListIndex:
    b = IndexBuilder()
    for key, rule in RULES:
        b.add(key, rule)
    return ListIndex.from_bytes(b.to_bytes())


def profile(blocked: set[str], allow: set[bytes] = frozenset(), deny: set[bytes] = frozenset(),
            default_block: bool = False, answer: str = "blockpage") -> Profile:
    return make_profile(blocked, answer=answer, allow=allow, deny=deny,
                        default_block=default_block, index=index())


@pytest.mark.parametrize(
    ("blocked", "name", "want"),
    [
        # (blocked?, reason, category, rule, answer, ede)
        (set(), b"csam-test.invalid", (True, "mandatory", "csam", b"csam-test.invalid",
                                       "blockpage", EDE_CENSORED)),
        (set(), b"a.b.csam-test.invalid", (True, "mandatory", "csam", b"csam-test.invalid",
                                           "blockpage", EDE_CENSORED)),
        ({"adult"}, b"www.adult.test", (True, "policy", "adult", b"adult.test", "blockpage",
                                        EDE_BLOCKED)),
        (set(), b"www.adult.test", (False, "none", "", b"", "", 0)),
        ({"adult"}, b"x.ok.adult.test", (False, "none", "", b"", "", 0)),  # passthru exception
        ({"adult"}, b"notadult.test", (False, "none", "", b"", "", 0)),  # label boundary
        ({"gambling"}, b"gamble.test", (True, "policy", "gambling", b"gamble.test", "nxdomain",
                                        EDE_BLOCKED)),
        ({"gambling"}, b"www.gamble.test", (True, "policy", "gambling", b"gamble.test", "nodata",
                                            EDE_BLOCKED)),
        ({"social"}, b"both.test", (True, "policy", "social", b"both.test", "blockpage",
                                    EDE_BLOCKED)),
        # a non-mandatory exception cannot lift a mandatory entry of the same category
        (set(), b"legal.test", (True, "mandatory", "court-order", b"legal.test", "blockpage",
                                EDE_CENSORED)),
        # SUBS-only entry for the TLD: "test" itself is not blocked, names under it are
        ({"tld"}, b"test", (False, "none", "", b"", "", 0)),
        ({"tld"}, b"foo.test", (True, "policy", "tld", b"test", "blockpage", EDE_BLOCKED)),
    ],
)
def test_decision_table(blocked: set[str], name: bytes,
                        want: tuple[bool, str, str, bytes, str, int]) -> None:
    v = decide(profile(blocked), name)
    assert (v.blocked, v.reason, v.category, v.rule, v.answer, v.ede) == want


def test_allow_cannot_lift_mandatory() -> None:
    p = profile(set(), allow={b"csam-test.invalid", b"invalid"})
    v = decide(p, b"csam-test.invalid")
    assert v.blocked and v.reason == "mandatory"


def test_allow_lifts_a_category_and_deny_adds_one() -> None:
    p = profile({"adult"}, allow={b"www.adult.test"}, deny={b"game.example"})
    assert not decide(p, b"www.adult.test").blocked
    assert decide(p, b"x.www.adult.test").reason == "allow"
    assert decide(p, b"other.adult.test").blocked
    v = decide(p, b"play.game.example")
    assert v.blocked and v.reason == "deny" and v.rule == b"game.example" and v.offset == 5


def test_more_specific_of_allow_and_deny_wins_deny_on_ties() -> None:
    p = profile(set(), allow={b"a.example"}, deny={b"example"})
    assert not decide(p, b"x.a.example").blocked
    assert decide(p, b"b.example").blocked
    p2 = profile(set(), allow={b"same.example"}, deny={b"same.example"})
    assert decide(p2, b"same.example").blocked


def test_allowlist_only_tier() -> None:
    p = profile(set(), allow={b"edu.example"}, default_block=True)
    assert not decide(p, b"www.edu.example").blocked
    v = decide(p, b"anything.example")
    assert v.blocked and v.reason == "allowlist-only"


def test_offset_points_at_the_matched_suffix() -> None:
    v = decide(profile({"adult"}), b"a.b.adult.test")
    assert v.offset == 4 and b"a.b.adult.test"[v.offset:] == v.rule


def test_profile_memoizes() -> None:
    p = profile({"adult"})
    assert p.decide(b"www.adult.test") is p.decide(b"www.adult.test")
