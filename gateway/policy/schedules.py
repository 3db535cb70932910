"""Schedule windows and school holidays: which extra categories a tier blocks at a given time.

Nothing here runs per query. The server asks `active_categories` when it builds a view and
`next_change` for when to build the next one; the decision then only sees a profile whose
blocked set already includes what the windows add (see docs/architecture.md).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config.spec import BOOL, STRINGS, TEXT, Key, Shape, array, enum, pattern
from gateway.config.yamlconf import error_at, expect_list, expect_mapping, expect_str

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"
MAX_SLEEP = 3600.0  # re-check at least hourly: a wall clock that jumped is caught up with
_HHMM = re.compile(r"([01]\d|2[0-4]):([0-5]\d)")
_TIME = pattern(r"^\s*([01]\d|2[0-4]):[0-5]\d\s*$")
_DATE = pattern(r"^\s*\d{4}-\d{2}-\d{2}\s*$")
WINDOW = Shape("a schedule", (
    Key("block", STRINGS, "categories blocked while the window is open", required=True),
    Key("days", array(enum(*DAYS)), "the days the window starts on", list(DAYS)),
    Key("from", _TIME, "opens at HH:MM (quote it: YAML reads a bare 07:00 as a number)",
        required=True),
    Key("to", _TIME, "closes at HH:MM, exclusive; 24:00 allowed; earlier than from: crosses "
        "midnight", required=True),
    Key("school_days_only", BOOL, "suspended on the policy files' holidays", False),
    Key("description", TEXT, "free text"),
), nullable=False)
HOLIDAY = Shape("a holiday", (
    Key("from", _DATE, "first day (YYYY-MM-DD)", required=True),
    Key("to", _DATE, "last day, inclusive (default: from)"),
    Key("name", TEXT, "free text"),
), nullable=False)


@dataclass(frozen=True)
class Window:
    """Block `block` on `days` from `start` to `end` (minutes after local midnight).

    `end <= start` crosses midnight: a window listed for mon covers Mon start .. Tue end.
    """

    block: tuple[str, ...]
    days: frozenset[int]          # 0 = Monday, the day the window starts on
    start: int
    end: int
    school_days_only: bool = False
    description: str = ""
    path: str = ""
    line: int = 0

    def label(self) -> str:
        days = ",".join(DAYS[d] for d in sorted(self.days))
        return (f"block {', '.join(self.block)} on {days} {_hhmm(self.start)}-{_hhmm(self.end)}"
                + (" (school days only)" if self.school_days_only else ""))


@dataclass(frozen=True)
class Holiday:
    start: dt.date
    end: dt.date                  # inclusive
    name: str = ""
    path: str = ""
    line: int = 0


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def is_active(w: Window, local: dt.datetime, holidays: Iterable[Holiday] = ()) -> bool:
    """Whether `w` is in force at wall time `local` (its date and time, in the config zone)."""
    minute = local.hour * 60 + local.minute
    today = local.date()
    started: dt.date | None = None
    if w.start < w.end:
        if local.weekday() in w.days and w.start <= minute < w.end:
            started = today
    else:  # crosses midnight (or covers the whole day when start == end == 0)
        if local.weekday() in w.days and minute >= w.start:
            started = today
        elif (local.weekday() - 1) % 7 in w.days and minute < w.end:
            started = today - dt.timedelta(days=1)
    if started is None:
        return False
    # A night window that starts on a school day belongs to that day: suspended with it.
    return not (w.school_days_only and holiday_on(started, holidays) is not None)


def holiday_on(day: dt.date, holidays: Iterable[Holiday]) -> Holiday | None:
    return next((h for h in holidays if h.start <= day <= h.end), None)


def local_time(now: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """Wall time in `tz` for an aware instant (DST-safe: always via UTC)."""
    if now.tzinfo is None:
        raise ValueError("schedule times must be timezone-aware")
    return now.astimezone(dt.UTC).astimezone(tz)


def active_categories(windows: Iterable[Window], holidays: Iterable[Holiday], now: dt.datetime,
                      tz: ZoneInfo) -> frozenset[str]:
    local = local_time(now, tz)
    holidays = tuple(holidays)
    return frozenset(c for w in windows if is_active(w, local, holidays) for c in w.block)


def next_change(windows: Iterable[Window], now: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The first instant after `now` at which a window may open or close (UTC, aware).

    Candidates are every window edge and every local midnight (holidays start and end there)
    in the coming eight days, each turned into an instant by zoneinfo: a wall time skipped by
    a DST jump maps to the instant after the jump, and one repeated maps to its first
    occurrence, so the recomputation at that instant sees the right state either way. The
    caller never sleeps more than MAX_SLEEP regardless.
    """
    utc_now = now.astimezone(dt.UTC)
    local = local_time(now, tz)
    edges = {0}
    for w in windows:
        edges.update((w.start, w.end % 1440))
    best: dt.datetime | None = None
    for offset in range(-1, 9):
        day = local.date() + dt.timedelta(days=offset)
        for minute in edges:
            wall = dt.datetime.combine(day, dt.time(minute // 60, minute % 60), tzinfo=tz)
            at = wall.astimezone(dt.UTC)
            if at > utc_now and (best is None or at < best):
                best = at
    assert best is not None
    return best


def parse_windows(value: Any, what: str, parent: Any, key: str, known: set[str]
                  ) -> tuple[Window, ...]:
    """A tier's `schedules:` list; every mistake is a file:line error."""
    items = expect_list(value, what, parent, key)
    out = []
    for i, raw in enumerate(items):
        body = expect_mapping(raw, "a schedule", items, i)
        WINDOW.check(body)
        WINDOW.require(body, items, i)
        block = expect_list(body["block"], "block", body, "block")
        cats = []
        for j, cat in enumerate(block):
            cat = expect_str(cat, "a category", block, j)
            if cat not in known:
                raise error_at(f"schedule blocks unknown category {cat!r} (categories in the "
                               f"blocklists: {', '.join(sorted(known)) or 'none'})", cat, block, j)
            cats.append(str(cat))
        if not cats:
            raise error_at("schedule blocks no category", None, body, "block")
        days_raw = expect_list(body.get("days", list(DAYS)), "days", body, "days")
        days = set()
        for j, d in enumerate(days_raw):
            d = expect_str(d, "a day", days_raw, j).lower()
            if d not in DAYS:
                raise error_at(f"day must be one of {', '.join(DAYS)}, got {d!r}", None,
                               days_raw, j)
            days.add(DAYS.index(d))
        start = _minutes(body, "from")
        end = _minutes(body, "to")
        if start == 1440:
            raise error_at("from must be 00:00 to 23:59", None, body, "from")
        if start == end % 1440 and end != 1440:
            raise error_at("from and to are equal: the window would be empty", None, body, "to")
        sdo = body.get("school_days_only", False)
        if not isinstance(sdo, bool):
            raise error_at(f"school_days_only must be true or false, got {sdo!r}", None, body,
                           "school_days_only")
        out.append(Window(tuple(cats), frozenset(days), start, end, sdo,
                          str(body.get("description", "")), body.path, body.line))
    return tuple(out)


def _minutes(body: Any, key: str) -> int:
    text = str(body[key]).strip()
    m = _HHMM.fullmatch(text)
    if not m or (m.group(1) == "24" and m.group(2) != "00"):
        raise error_at(f"{key} must be HH:MM (00:00 to 24:00), got {body[key]!r}", None, body,
                       key)
    return int(m.group(1)) * 60 + int(m.group(2))


def parse_holidays(value: Any, parent: Any, key: str) -> list[Holiday]:
    """The policy file's `holidays:` list of {from, to, name} (dates inclusive)."""
    items = expect_list(value, "holidays", parent, key)
    out = []
    for i, raw in enumerate(items):
        body = expect_mapping(raw, "a holiday", items, i)
        HOLIDAY.check(body)
        if "from" not in body:
            raise error_at("holiday is missing 'from'", body, items, i)
        start = _date(body, "from")
        end = _date(body, "to") if "to" in body else start
        if end < start:
            raise error_at("holiday ends before it starts", None, body, "to")
        out.append(Holiday(start, end, str(body.get("name", "")), body.path, body.line))
    return out


def _date(body: Any, key: str) -> dt.date:
    value = body[key]
    if isinstance(value, dt.date):  # YAML parses an unquoted date itself
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise error_at(f"{key} must be a date YYYY-MM-DD, got {value!r}", None, body,
                       key) from None
