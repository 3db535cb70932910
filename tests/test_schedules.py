"""Schedule windows: midnight crossing, DST zones, holidays, next edge, policy errors, views."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.config.gateway import load_config
from gateway.errors import ConfigError, ConfigErrors
from gateway.lists import SCOPE_BOTH, Action, Rule
from gateway.lists.index import ListIndex
from gateway.lists.index_builder import IndexBuilder
from gateway.policy.policyfile import load_policy
from gateway.policy.schedules import Holiday, Window, active_categories, is_active, next_change
from gateway.runtime.state import build_view, schedule_changed, schedule_delay
from tests.support.builders import policy_error

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
BERLIN = ZoneInfo("Europe/Berlin")
WEEKDAYS = frozenset(range(5))
CLASS = Window(("games", "social"), WEEKDAYS, 7 * 60, 17 * 60, school_days_only=True)
NIGHT = Window(("games",), frozenset({0}), 22 * 60, 6 * 60)  # listed for Monday only
TET = Holiday(dt.date(2026, 2, 14), dt.date(2026, 2, 22), "Tết")


def at(tz: ZoneInfo, *args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz)  # type: ignore[misc]


# 2026-03-02 is a Monday.
@pytest.mark.parametrize(("window", "local", "want"), [
    (CLASS, at(HCM, 2026, 3, 2, 6, 59), False),
    (CLASS, at(HCM, 2026, 3, 2, 7, 0), True),            # `from` is inclusive
    (CLASS, at(HCM, 2026, 3, 2, 16, 59), True),
    (CLASS, at(HCM, 2026, 3, 2, 17, 0), False),          # `to` is exclusive
    (CLASS, at(HCM, 2026, 3, 7, 9, 0), False),           # Saturday
    (CLASS, at(HCM, 2026, 2, 16, 9, 0), False),          # a Monday in Tết: suspended
    (NIGHT, at(HCM, 2026, 3, 2, 21, 59), False),
    (NIGHT, at(HCM, 2026, 3, 2, 22, 0), True),           # Monday night
    (NIGHT, at(HCM, 2026, 3, 3, 0, 0), True),            # ...past midnight: Tuesday morning
    (NIGHT, at(HCM, 2026, 3, 3, 5, 59), True),
    (NIGHT, at(HCM, 2026, 3, 3, 6, 0), False),
    (NIGHT, at(HCM, 2026, 3, 3, 22, 30), False),         # Tuesday night: not listed
    (NIGHT, at(HCM, 2026, 3, 2, 3, 0), False),           # Monday early = Sunday's night
])
def test_is_active(window: Window, local: dt.datetime, want: bool) -> None:
    assert is_active(window, local, [TET]) is want


def test_holidays_only_suspend_school_days_only_windows() -> None:
    night = Window(("games",), frozenset(range(7)), 22 * 60, 6 * 60)
    in_tet = at(HCM, 2026, 2, 16, 23, 0)
    assert is_active(night, in_tet, [TET])
    sdo = Window(("games",), frozenset(range(7)), 22 * 60, 6 * 60, school_days_only=True)
    assert not is_active(sdo, in_tet, [TET])
    # The night that starts on the last holiday belongs to the holiday, even after midnight.
    assert not is_active(sdo, at(HCM, 2026, 2, 23, 1, 0), [TET])
    assert is_active(sdo, at(HCM, 2026, 2, 23, 23, 0), [TET])


def test_active_categories_uses_utc_instant_and_zone() -> None:
    # 01:30 UTC on Monday = 08:30 in Hồ Chí Minh City: class hours.
    now = dt.datetime(2026, 3, 2, 1, 30, tzinfo=dt.UTC)
    assert active_categories([CLASS, NIGHT], [], now, HCM) == {"games", "social"}
    # The same instant in Berlin is 02:30 Monday: neither window.
    assert active_categories([CLASS, NIGHT], [], now, BERLIN) == frozenset()
    with pytest.raises(ValueError):
        active_categories([CLASS], [], dt.datetime(2026, 3, 2, 8), HCM)


@pytest.mark.parametrize(("now", "want"), [
    # Monday 06:00 HCM (UTC+7, no DST) -> 07:00 the same day
    (at(HCM, 2026, 3, 2, 6, 0), at(HCM, 2026, 3, 2, 7, 0)),
    (at(HCM, 2026, 3, 2, 7, 0), at(HCM, 2026, 3, 2, 17, 0)),    # strictly after now
    (at(HCM, 2026, 3, 2, 17, 0), at(HCM, 2026, 3, 2, 22, 0)),
    (at(HCM, 2026, 3, 2, 22, 0), at(HCM, 2026, 3, 3, 0, 0)),    # midnight (holidays turn)
    (at(HCM, 2026, 3, 3, 0, 0), at(HCM, 2026, 3, 3, 6, 0)),
])
def test_next_change(now: dt.datetime, want: dt.datetime) -> None:
    assert next_change([CLASS, NIGHT], now, HCM) == want


def test_dst_spring_forward_and_fall_back_in_berlin() -> None:
    # 2026-03-29: Berlin clocks jump 02:00 CET -> 03:00 CEST. A window 02:30-04:00 opens at the
    # jump (02:30 does not exist) and closes at 04:00 CEST = 02:00 UTC.
    w = Window(("games",), frozenset(range(7)), 2 * 60 + 30, 4 * 60)
    before = dt.datetime(2026, 3, 29, 0, 59, tzinfo=dt.UTC)      # 01:59 CET
    edge = next_change([w], before, BERLIN)
    assert edge.astimezone(dt.UTC) == dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC)
    assert active_categories([w], [], dt.datetime(2026, 3, 29, 1, 0, 30, tzinfo=dt.UTC),
                             BERLIN) == {"games"}          # 03:00:30 CEST
    assert active_categories([w], [], dt.datetime(2026, 3, 29, 2, 0, tzinfo=dt.UTC),
                             BERLIN) == frozenset()        # 04:00 CEST
    # 2026-10-25: 03:00 CEST -> 02:00 CET. A 07:00-17:00 window still opens at 07:00 local,
    # now UTC+1 (06:00 UTC), not at 05:00 UTC.
    sunday = Window(("games",), frozenset({6}), 7 * 60, 17 * 60)
    edge = next_change([sunday], dt.datetime(2026, 10, 25, 3, 0, tzinfo=dt.UTC), BERLIN)
    assert edge == dt.datetime(2026, 10, 25, 6, 0, tzinfo=dt.UTC)
    assert active_categories([sunday], [], dt.datetime(2026, 10, 25, 5, 59, tzinfo=dt.UTC),
                             BERLIN) == frozenset()
    assert active_categories([sunday], [], dt.datetime(2026, 10, 25, 6, 0, tzinfo=dt.UTC),
                             BERLIN) == {"games"}


# --- policy files ------------------------------------------------------------------------------

def _policy(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(("snippet", "message", "line"), [
    ('{block: [nope], from: "07:00", to: "08:00"}', "unknown category 'nope'", 4),
    ('{block: [games], from: "7am", to: "08:00"}', "from must be HH:MM", 4),
    ('{block: [games], from: "07:00", to: "07:00"}', "from and to are equal", 4),
    ('{block: [games], days: [monday], from: "07:00", to: "08:00"}', "day must be one of", 4),
    ('{block: [games], from: "07:00"}', "missing 'to'", 4),
    ('{block: [games], from: "07:00", to: "08:00", when: 1}', "when", 4),
])
def test_schedule_errors_are_file_line(tmp_path: Path, snippet: str, message: str,
                                       line: int) -> None:
    p, text = policy_error(tmp_path, f"tiers:\n  kids:\n    schedules:\n      - {snippet}\n",
                           ["games", "social"])
    assert message in text and f"{p}:{line}" in text, text


def test_holiday_errors(tmp_path: Path) -> None:
    p = _policy(tmp_path, "holidays:\n  - {from: 2026-02-20, to: 2026-02-14}\ntiers: {}\n")
    with pytest.raises((ConfigError, ConfigErrors), match="ends before it starts"):
        load_policy([p], [])


# --- views: the profile carries the categories, the decision does not read a clock -------------

GATEWAY = """\
dns: {listen: ["127.0.0.1:5353"], upstreams: ["127.0.0.1:53"]}
policies: [p.yaml]
timezone: "%s"
"""
POLICY = """\
holidays:
  - {from: 2026-02-14, to: 2026-02-22, name: Tết}
tiers:
  kids:
    block: [adult]
    schedules:
      - {block: [games], days: [mon, tue, wed, thu, fri], from: "07:00", to: "17:00",
         school_days_only: true}
      - {block: [games, adult], days: [mon, tue, wed, thu, fri, sat, sun], from: "22:00",
         to: "06:00"}
networks:
  - {name: n, cidrs: ["10.0.0.0/24"], tier: kids}
"""


def _index() -> ListIndex:
    b = IndexBuilder()
    b.add(b"game.test", Rule("games", SCOPE_BOTH, Action.DEFAULT, False))
    b.add(b"adult.test", Rule("adult", SCOPE_BOTH, Action.DEFAULT, False))
    return ListIndex.from_bytes(b.to_bytes())


@pytest.mark.parametrize(("zone", "when", "blocked", "reason"), [
    ("Asia/Ho_Chi_Minh", dt.datetime(2026, 3, 2, 8, 0), True, "schedule"),
    ("Asia/Ho_Chi_Minh", dt.datetime(2026, 3, 2, 18, 0), False, "none"),
    ("Asia/Ho_Chi_Minh", dt.datetime(2026, 3, 3, 1, 0), True, "schedule"),   # curfew, Tuesday
    ("Asia/Ho_Chi_Minh", dt.datetime(2026, 2, 16, 8, 0), False, "none"),     # Tết
    ("Asia/Ho_Chi_Minh", dt.datetime(2026, 2, 16, 23, 0), True, "schedule"),  # curfew in Tết
    ("Europe/Berlin", dt.datetime(2026, 3, 2, 8, 0), True, "schedule"),
    ("Europe/Berlin", dt.datetime(2026, 3, 2, 6, 30), False, "none"),
])
def test_view_blocks_what_open_windows_add(tmp_path: Path, zone: str, when: dt.datetime,
                                           blocked: bool, reason: str) -> None:
    (tmp_path / "gateway.yaml").write_text(GATEWAY % zone)
    (tmp_path / "p.yaml").write_text(POLICY)
    config = load_config(tmp_path / "gateway.yaml")
    policy = load_policy(config.policies, ["games", "adult"])
    _view, profiles = build_view(config, policy, _index(), 1,
                                 at=when.replace(tzinfo=ZoneInfo(zone)))
    prof = profiles["n"]
    v = prof.decide(b"www.game.test")
    assert (v.blocked, v.reason) == (blocked, reason)
    # The tier's own category stays "policy" even while a window lists it too.
    assert prof.decide(b"adult.test").reason == "policy"
    if blocked:
        assert v.ede_text() == "games: game.test (schedule)"


def test_timer_helpers_follow_an_injected_clock(tmp_path: Path) -> None:
    from gateway.runtime.state import Loaded

    (tmp_path / "gateway.yaml").write_text(GATEWAY % "Asia/Ho_Chi_Minh")
    (tmp_path / "p.yaml").write_text(POLICY)
    config = load_config(tmp_path / "gateway.yaml")
    policy = load_policy(config.policies, ["games", "adult"])
    monday_0659 = dt.datetime(2026, 3, 2, 6, 59, tzinfo=HCM)
    view, profiles = build_view(config, policy, _index(), 1, at=monday_0659)
    loaded = Loaded(config, policy, None, None, view, profiles)  # type: ignore[arg-type]
    assert schedule_delay(loaded, monday_0659) == 60.0
    assert not schedule_changed(loaded, monday_0659)
    assert schedule_changed(loaded, monday_0659 + dt.timedelta(minutes=1))
    # Curfew on Monday night -> Tuesday 06:00 the state at 05:59 matches 22:00's.
    night = dt.datetime(2026, 3, 2, 22, 0, tzinfo=HCM)
    view, profiles = build_view(config, policy, _index(), 2, at=night)
    loaded = Loaded(config, policy, None, None, view, profiles)  # type: ignore[arg-type]
    assert not schedule_changed(loaded, night + dt.timedelta(hours=7, minutes=59))
    assert schedule_changed(loaded, night + dt.timedelta(hours=8))


def test_bad_timezone_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(GATEWAY % "Asia/Hanoi_Typo")
    with pytest.raises(ConfigError, match="not a known IANA time zone"):
        load_config(tmp_path / "gateway.yaml")


@pytest.mark.parametrize(("at", "verdict", "active"), [
    ("2026-03-02T08:00", "blocked", 1),                 # Monday class hours (THCS)
    ("2026-03-02T18:00", "allowed", 0),
    ("2026-03-03T01:00+07:00", "blocked", 1),           # Monday night curfew, past midnight
    ("2026-07-01T08:00", "allowed", 0),                 # summer holiday: class hours off
])
def test_explain_at_reports_windows(capsys: pytest.CaptureFixture[str], at: str, verdict: str,
                                    active: int) -> None:
    import json

    from gateway.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["explain", "-c", str(root / "deploy/example/gateway.yaml"), "10.1.2.5",
                 "a-game-studio.com", "--at", at, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == verdict and out["tier"] == "thcs"
    assert sum(w.startswith("ACTIVE") for w in out["schedules"]) == active
    assert out["safesearch"] == "strict" and out["bypass_protection"].startswith("on")
    if verdict == "blocked":
        assert out["reason"] == "schedule" and out["ede_text"].endswith("(schedule)")
