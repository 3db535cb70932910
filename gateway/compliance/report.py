"""Compliance reports: what was received, enforced in time, late or never, from ledger rows.

Pure: the databases are read elsewhere (gateway.cli.report) into EntryRow/StatTotal values;
this module turns them into a Report (report_render.py renders it as CSV, JSON or HTML). The
definitions follow docs/feeds-contract.md: "within deadline" = verified_at <= deadline, "late"
= verified after it, "never" = not verified by the end of the period (and not removed/refused/
not_applicable: the gateway has no part that enforces that type).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TZ = "Asia/Ho_Chi_Minh"
# not_applicable: the gateway has no part that enforces the entry's type (a URL or image hash
# without the proxy; ip/cidr): neither enforced nor a failure to enforce.
STATUSES = ("within_deadline", "late", "never", "refused", "removed", "not_applicable")
PROBE_RESULTS = ("not_blocked", "error")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


# ---------------------------------------------------------------- the period


@dataclass(frozen=True)
class Period:
    """The half-open interval [start, end) in unix seconds, and the zone dates are shown in."""

    start: float
    end: float
    tz: str = DEFAULT_TZ

    def contains(self, t: float | None) -> bool:
        return t is not None and self.start <= t < self.end


def parse_period(from_text: str, to_text: str, tz: str = DEFAULT_TZ) -> Period:
    """--from/--to: YYYY-MM-DD (whole days in `tz`, --to inclusive) or ISO 8601 instants.

    An ISO time without an offset is read in `tz`; an ISO --to is the exact (exclusive) end.
    ValueError with a message fit for the user on anything else.
    """
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}") from None
    start = _instant(from_text, zone, "--from", end_of_day=False)
    end = _instant(to_text, zone, "--to", end_of_day=True)
    if end <= start:
        raise ValueError("--to must be after --from")
    return Period(start, end, tz)


def _instant(text: str, zone: ZoneInfo, what: str, *, end_of_day: bool) -> float:
    text = text.strip()
    try:
        if _DATE.fullmatch(text):
            day = date.fromisoformat(text) + timedelta(days=1 if end_of_day else 0)
            return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()
        t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not YYYY-MM-DD or an ISO 8601 time") from None
    return (t if t.tzinfo else t.replace(tzinfo=zone)).timestamp()


def iso_to_unix(text: str | None) -> float | None:
    """ISO 8601 (as the publisher stores times) -> unix seconds; None stays None."""
    if not text:
        return None
    t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    return t.timestamp()




@dataclass(frozen=True)
class EntryRow:
    """One entry as one gateway saw it (a publisher row joined with that gateway's ack)."""

    id: str
    type: str
    value: str
    categories: tuple[str, ...]
    mandatory: bool
    authority: str | None
    decision: str | None
    decision_date: str | None
    issued_at: float
    deadline: float | None
    received_at: float | None
    applied_at: float | None
    verified_at: float | None
    removed_at: float | None
    outcome: str
    gateway: str = ""


@dataclass(frozen=True)
class StatTotal:
    category: str
    tier: str
    queries: int
    blocked: int


@dataclass(frozen=True)
class ReportEntry:
    row: EntryRow
    status: str
    latency_s: float | None


@dataclass(frozen=True)
class Counts:
    received: int = 0
    within_deadline: int = 0
    late: int = 0
    never: int = 0
    refused: int = 0
    removed: int = 0
    not_applicable: int = 0


@dataclass(frozen=True)
class Latency:
    """Enforcement latency (issued -> verified) over the entries verified in the period."""

    count: int
    median_s: float | None
    p95_s: float | None


@dataclass(frozen=True)
class Section:
    """One gateway's numbers (or the publisher's totals over all gateways)."""

    name: str
    entries: tuple[ReportEntry, ...]
    all: Counts
    mandatory: Counts
    latency: Latency
    latency_by_category: dict[str, Latency]
    probes: dict[str, int]
    stats: tuple[StatTotal, ...]


@dataclass(frozen=True)
class Report:
    kind: str                      # "gateway" | "publisher"
    source: str                    # the database it was read from
    period: Period
    generated_at: float
    sections: tuple[Section, ...]
    total: Section | None = None   # publisher only: all gateways together
    notes: tuple[str, ...] = field(default=())
    # A ministry's report: each province's school gateways pooled (docs/national-layout.md).
    provinces: tuple[Section, ...] = field(default=())


def classify(row: EntryRow, end: float) -> str:
    """The entry's status as of `end` (see the module docstring)."""
    if row.outcome in ("refused", "not_applicable"):
        return row.outcome
    if row.verified_at is not None and row.verified_at < end:
        if row.deadline is None or row.verified_at <= row.deadline:
            return "within_deadline"
        return "late"
    removed = (row.removed_at is not None and row.removed_at < end) or (
        row.removed_at is None and row.outcome == "removed")
    return "removed" if removed else "never"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (an observed value, as auditors can recheck by hand)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_of(values: Sequence[float]) -> Latency:
    if not values:
        return Latency(0, None, None)
    return Latency(len(values), float(statistics.median(values)), percentile(values, 0.95))


def count(entries: Iterable[ReportEntry]) -> Counts:
    n = {s: 0 for s in STATUSES}
    total = 0
    for e in entries:
        total += 1
        n[e.status] += 1
    return Counts(total, n["within_deadline"], n["late"], n["never"], n["refused"],
                  n["removed"], n["not_applicable"])


def build_section(name: str, rows: Iterable[EntryRow], period: Period,
                  probes: Mapping[str, int], stats: Iterable[StatTotal]) -> Section:
    """Classify `rows` (already limited to the period) and aggregate them."""
    entries = []
    for row in sorted(rows, key=lambda r: (r.issued_at, r.id, r.gateway)):
        status = classify(row, period.end)
        latency = None
        if status in ("within_deadline", "late") and row.verified_at is not None:
            latency = row.verified_at - row.issued_at
        entries.append(ReportEntry(row, status, latency))
    latencies: list[float] = []
    by_cat: dict[str, list[float]] = {}
    for e in entries:
        if e.latency_s is None:
            continue
        latencies.append(e.latency_s)
        for cat in e.row.categories:
            by_cat.setdefault(cat, []).append(e.latency_s)
    return Section(
        name=name,
        entries=tuple(entries),
        all=count(entries),
        mandatory=count(e for e in entries if e.row.mandatory),
        latency=latency_of(latencies),
        latency_by_category={c: latency_of(v) for c, v in sorted(by_cat.items())},
        probes={r: int(probes.get(r, 0)) for r in PROBE_RESULTS},
        stats=sum_stats(stats),
    )


def sum_stats(stats: Iterable[StatTotal]) -> tuple[StatTotal, ...]:
    """Hourly rows summed per (category, tier), sorted."""
    acc: dict[tuple[str, str], list[int]] = {}
    for s in stats:
        pair = acc.setdefault((s.category, s.tier), [0, 0])
        pair[0] += s.queries
        pair[1] += s.blocked
    return tuple(StatTotal(c, t, q, b) for (c, t), (q, b) in sorted(acc.items()))


def build_total(sections: Sequence[Section], period: Period) -> Section:
    """All gateways pooled: counts add up, latencies are over every gateway's entries."""
    rows = [e.row for s in sections for e in s.entries]
    probes = {r: sum(s.probes.get(r, 0) for s in sections) for r in PROBE_RESULTS}
    stats = [row for s in sections for row in s.stats]
    return build_section("total", rows, period, probes, stats)


def build_provinces(sections: Sequence[Section], members: Mapping[str, str],
                    names: Mapping[str, str], period: Period) -> tuple[Section, ...]:
    """One pooled section per province (`members`: gateway -> province id), named
    "<name> (<id>)", in the order of the province ids."""
    by_province: dict[str, list[Section]] = {}
    for s in sections:
        if s.name in members:
            by_province.setdefault(members[s.name], []).append(s)
    out = []
    for pid, group in sorted(by_province.items()):
        pooled = build_total(group, period)
        name = names.get(pid, pid)
        label = f"{name} ({pid})" if name != pid else pid
        out.append(Section(label, pooled.entries, pooled.all, pooled.mandatory, pooled.latency,
                           pooled.latency_by_category, pooled.probes, pooled.stats))
    return tuple(out)
