"""Game-time quotas (issue #14.2): policy syntax, minute counting with a fake clock, the reset at
local midnight, saved counters, the bounded table, and the decision / query path around them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.dns import fastpath, wire
from gateway.errors import ConfigError, ConfigErrors
from gateway.policy.decide import EDE_BLOCKED
from gateway.policy.policyfile import load_policy
from gateway.policy.quota_table import FULL, OK, STATE_FILE, USED_UP, QuotaTable, charged
from gateway.policy.quotas import Quota, by_category
from tests.support.builders import list_index, make_profile, make_resolver, policy_error

HCM = ZoneInfo("Asia/Ho_Chi_Minh")   # UTC+7: local midnight is 17:00 UTC
GAMES = Quota("tier/kids/0", ("games",), 2)


class Clock:
    """Wall time the test moves by hand (epoch seconds)."""

    def __init__(self, local: dt.datetime) -> None:
        self.now = local.timestamp()

    def __call__(self) -> float:
        return self.now


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def exhausted(self, tier: str) -> None:
        self.events.append(("exhausted", tier))

    def untracked(self, tier: str) -> None:
        self.events.append(("untracked", tier))


def table(clock: Clock, limit: int = 100, seen: Seen | None = None) -> QuotaTable:
    return QuotaTable(HCM, limit, seen, clock=clock)


# --- policy files ------------------------------------------------------------------------------

def _policy(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_quotas_on_a_tier_and_a_network(tmp_path: Path) -> None:
    p = _policy(tmp_path, """\
tiers:
  kids:
    block: [adult]
    quotas:
      - {categories: [games, social], minutes: 60, per: day}
networks:
  - name: lab
    cidrs: [192.0.2.0/24]
    tier: kids
    quotas:
      - {categories: [games], minutes: 30}
""")
    policy = load_policy([p], ["adult", "games", "social"])
    tier_q = policy.tiers["kids"].quotas
    assert tier_q == (Quota("tier/kids/0", ("games", "social"), 60, "day", "", str(p), 5),)
    net_q = policy.networks[0].quotas
    assert net_q[0].key == "network/lab/0" and net_q[0].minutes == 30
    # the network's quota replaces the tier's for the category it names, not for the others
    merged = by_category(tier_q, net_q)
    assert merged["games"].minutes == 30 and merged["social"].minutes == 60


@pytest.mark.parametrize(("snippet", "message"), [
    ("{categories: [nope], minutes: 5}", "unknown category 'nope'"),
    ("{categories: [games], minutes: 0}", "minutes must be a whole number from 1 to 1440"),
    ("{categories: [games], minutes: 1441}", "minutes must be a whole number"),
    ("{categories: [games], minutes: '60'}", "minutes must be a whole number"),
    ("{categories: [games], minutes: 60, per: week}", "per must be one of day"),
    ("{categories: [], minutes: 60}", "quota limits no category"),
    ("{minutes: 60}", "quota is missing 'categories'"),
    ("{categories: [games], minutes: 5, every: day}", "every"),
])
def test_quota_errors_are_file_line(tmp_path: Path, snippet: str, message: str) -> None:
    p, text = policy_error(tmp_path, f"tiers:\n  kids:\n    quotas:\n      - {snippet}\n",
                           ["games", "social"])
    assert message in text and f"{p}:4" in text, text


def test_one_category_in_two_quotas_is_an_error(tmp_path: Path) -> None:
    p = _policy(tmp_path, "tiers:\n  kids:\n    quotas:\n      - {categories: [games], "
                          "minutes: 5}\n      - {categories: [social, games], minutes: 9}\n")
    with pytest.raises((ConfigError, ConfigErrors), match="already limited by quota 1") as exc:
        load_policy([p], ["games", "social"])
    assert f"{p}:5" in str(exc.value)


# --- counting ----------------------------------------------------------------------------------

def test_a_minute_counts_once_however_many_lookups() -> None:
    start = dt.datetime(2026, 3, 2, 9, 0, 0, tzinfo=HCM).timestamp()
    clock = Clock(dt.datetime(2026, 3, 2, 9, 0, 0, tzinfo=HCM))
    seen = Seen()
    t = table(clock, seen=seen)
    for _ in range(50):                          # 09:00: one minute, however many names
        assert t.charge("192.0.2.1", GAMES, "kids") == OK
        clock.now += 1
    assert t.peek("192.0.2.1", GAMES) == (OK, 1)
    clock.now = start + 65                       # 09:01 (the last minute left)
    assert t.charge("192.0.2.1", GAMES, "kids") == OK
    clock.now = start + 119                      # still 09:01: already paid for
    assert t.charge("192.0.2.1", GAMES, "kids") == OK
    assert seen.events == []
    clock.now = start + 120                      # 09:02, a third distinct minute: used up
    assert t.charge("192.0.2.1", GAMES, "kids") == USED_UP
    assert t.charge("192.0.2.1", GAMES, "kids") == USED_UP
    assert seen.events == [("exhausted", "kids")]   # once per client and day, not per lookup
    assert t.peek("192.0.2.1", GAMES) == (USED_UP, 2)
    # another address has its own minutes
    assert t.charge("192.0.2.2", GAMES, "kids") == OK


def test_idle_minutes_do_not_count() -> None:
    clock = Clock(dt.datetime(2026, 3, 2, 9, 0, tzinfo=HCM))
    t = table(clock)
    assert t.charge("192.0.2.1", GAMES, "kids") == OK
    clock.now += 3 * 3600                        # three hours without a game lookup
    assert t.charge("192.0.2.1", GAMES, "kids") == OK
    assert t.peek("192.0.2.1", GAMES) == (OK, 2)


def test_counters_reset_at_local_midnight() -> None:
    clock = Clock(dt.datetime(2026, 3, 2, 23, 57, tzinfo=HCM))
    t = table(clock)
    for _ in range(2):                           # 23:57 and 23:58: the day's two minutes
        assert t.charge("192.0.2.1", GAMES, "kids") == OK
        clock.now += 30
        assert t.charge("192.0.2.1", GAMES, "kids") == OK
        clock.now += 30
    clock.now += 59                              # 23:59:59: a third minute today, used up
    assert t.charge("192.0.2.1", GAMES, "kids") == USED_UP
    clock.now += 31                              # 00:00:30 on the 3rd, local
    assert dt.datetime.fromtimestamp(clock.now, HCM).date() == dt.date(2026, 3, 3)
    assert t.charge("192.0.2.1", GAMES, "kids") == OK
    assert t.peek("192.0.2.1", GAMES) == (OK, 1)   # a new day: only this minute
    assert len(t) == 1


def test_midnight_is_the_gateways_zone_not_utc() -> None:
    clock = Clock(dt.datetime(2026, 3, 2, 16, 59, tzinfo=dt.UTC))   # 23:59 in Hồ Chí Minh
    t = table(clock)
    for _ in range(2):
        t.charge("192.0.2.1", GAMES, "kids")
        clock.now += 60                          # 17:00 UTC = local midnight
    assert t.peek("192.0.2.1", GAMES) == (OK, 1)


def test_the_table_is_bounded_and_fails_closed() -> None:
    clock = Clock(dt.datetime(2026, 3, 2, 9, 0, tzinfo=HCM))
    seen = Seen()
    t = table(clock, limit=3, seen=seen)
    for i in range(3):
        assert t.charge(f"192.0.2.{i}", GAMES, "kids") == OK
    for i in range(3, 50):                       # a host rotating addresses
        assert t.charge(f"192.0.2.{i}", GAMES, "kids") == FULL
    assert len(t) == 3
    assert seen.events == [("untracked", "kids")] * 47
    assert t.charge("192.0.2.0", GAMES, "kids") == OK   # the known ones keep counting
    clock.now += 86400                           # the next day the table is empty again
    assert t.charge("192.0.2.40", GAMES, "kids") == OK


# --- saved counters ----------------------------------------------------------------------------

def test_counters_survive_a_restart_the_same_day_only(tmp_path: Path) -> None:
    clock = Clock(dt.datetime(2026, 3, 2, 9, 0, tzinfo=HCM))
    t = table(clock)
    for _ in range(3):
        t.charge("192.0.2.1", GAMES, "kids")
        clock.now += 60
    t.save(tmp_path)
    assert (tmp_path / STATE_FILE).stat().st_mode & 0o777 == 0o600
    again = table(clock)
    again.load(tmp_path)
    assert again.peek("192.0.2.1", GAMES) == (USED_UP, 2)
    clock.now = dt.datetime(2026, 3, 3, 0, 0, 1, tzinfo=HCM).timestamp()
    tomorrow = table(clock)
    tomorrow.load(tmp_path)
    assert len(tomorrow) == 0


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"version": 1, "day": 5}',
                                     b'{"version":1,"day":"2026-03-02","clients":{"a":{"k":[1]}}}'])
def test_a_broken_state_file_means_a_fresh_day(tmp_path: Path, content: bytes) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    t = table(Clock(dt.datetime(2026, 3, 2, 9, 0, tzinfo=HCM)))
    t.load(tmp_path)
    assert len(t) == 0


def test_loading_keeps_the_bound(tmp_path: Path) -> None:
    clock = Clock(dt.datetime(2026, 3, 2, 9, 0, tzinfo=HCM))
    big = table(clock, limit=100)
    for i in range(100):
        big.charge(f"192.0.2.{i}", GAMES, "kids")
    big.save(tmp_path)
    small = table(clock, limit=10)
    small.load(tmp_path)
    assert len(small) == 10


# --- the decision and the query path -----------------------------------------------------------

INDEX = {b"game.test": "games", b"adult.test": "adult", b"ok.game.test": "games"}


def quota_profile(**options: object) -> object:
    return make_profile(["adult"], index=list_index(INDEX), tier="kids",
                        quotas={"games": GAMES}, **options)


def test_decide_marks_quota_names_and_blocks_come_first() -> None:
    p = quota_profile(deny=[b"deny.game.test"], allow=[b"free.game.test"])
    v = p.decide(b"www.game.test")   # type: ignore[attr-defined]
    assert (v.blocked, v.reason, v.category, v.rule) == (False, "quota", "games", b"game.test")
    assert p.decide(b"adult.test").reason == "policy"          # type: ignore[attr-defined]
    assert p.decide(b"deny.game.test").reason == "deny"        # type: ignore[attr-defined]
    assert p.decide(b"free.game.test").reason == "allow"       # allow lifts the quota too
    assert p.decide(b"other.test").reason == "none"            # type: ignore[attr-defined]
    plain = make_profile(["adult"], index=list_index(INDEX))
    assert plain.decide(b"game.test").reason == "none"         # no quota: nothing changes


def test_the_fast_path_leaves_quota_names_to_the_full_path() -> None:
    p = quota_profile()
    answers = make_resolver(p).view.answers  # type: ignore[arg-type]
    for name, fast in ((b"game.test", False), (b"adult.test", True)):
        q = wire.build_query(7, wire.key_to_wire(name) + b"\x00\x01\x00\x01", do=False,
                             cd=False)
        assert (fastpath.blocked(q, p, answers) is not None) is fast  # type: ignore[arg-type]


def test_the_query_path_counts_and_then_blocks_with_ede_15() -> None:
    import dns.edns
    import dns.message

    p = quota_profile()
    clock = Clock(dt.datetime(2026, 3, 2, 9, 0, tzinfo=HCM))
    r = make_resolver(p)   # type: ignore[arg-type]
    r.quotas = table(clock)
    q = dns.message.make_query("play.game.test", "A", use_edns=0)
    for _minute in range(2):
        clock.now += 60
        out = r.handle(q.to_wire(), "127.0.0.1", "udp")
        assert not isinstance(out, bytes)         # forwarded (a coroutine): allowed
        out.close()                               # type: ignore[union-attr]
    clock.now += 60
    out = r.handle(q.to_wire(), "127.0.0.1", "udp")
    assert isinstance(out, bytes)
    reply = dns.message.from_wire(out)
    ede = [o for o in reply.options if isinstance(o, dns.edns.EDEOption)]
    assert reply.rcode() == 3 and [o.code for o in ede] == [EDE_BLOCKED]
    assert ede[0].text == "games: game.test (daily time used up)"
    assert not p.replies                          # type: ignore[attr-defined]
    # the block page's question: used up for this address, not for another
    allowed = p.decide(b"play.game.test")        # type: ignore[attr-defined]
    assert charged(r.quotas, p, allowed, "127.0.0.1", peek=True).reason == "quota"  # type: ignore[arg-type]
    assert charged(r.quotas, p, allowed, "127.0.0.1", peek=True).blocked  # type: ignore[arg-type]
    assert not charged(r.quotas, p, allowed, "127.0.0.9", peek=True).blocked  # type: ignore[arg-type]


def test_quotas_with_several_dns_workers_are_refused(tmp_path: Path) -> None:
    from tests.support.cli import check, config

    policy = ("tiers:\n  kids:\n    quotas:\n      - {categories: [adult], minutes: 5}\n"
              "networks:\n  - {name: lab, cidrs: [127.0.0.0/8], tier: kids}\n")
    cfg = config(tmp_path, policy=policy, extra={"dns": {"workers": 2}})
    code, _, err = check(cfg)
    assert code != 0 and "quotas are counted in one process: they need dns.workers: 1" in err
    assert f"{tmp_path / 'policies' / 'p.yaml'}:2" in err, err
