"""Compliance reports: what was received, enforced in time, late or never, from ledger rows.

Pure: the databases are read elsewhere (gateway.cli.compliance) into EntryRow/StatTotal values; this
module turns them into a Report and renders it as CSV, JSON or printable bilingual HTML. The
definitions follow docs/feeds-contract.md: "within deadline" = verified_at <= deadline, "late"
= verified after it, "never" = not verified by the end of the period (and not removed/refused).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TZ = "Asia/Ho_Chi_Minh"
STATUSES = ("within_deadline", "late", "never", "refused", "removed")
PROBE_RESULTS = ("not_blocked", "error")
CSV_COLUMNS = ("id", "type", "value", "categories", "mandatory", "authority", "decision", "date",
               "issued_at", "deadline", "received_at", "applied_at", "verified_at", "latency_s",
               "status")
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


def format_period(period: Period) -> str:
    """Whole days as "first → last day" (how the regulator asked for it), else exact times."""
    zone = ZoneInfo(period.tz)
    start = datetime.fromtimestamp(period.start, zone)
    end = datetime.fromtimestamp(period.end, zone)
    if start.time() == end.time() == datetime.min.time():
        last = (end - timedelta(days=1)).date()
        return f"{start.date().isoformat()} → {last.isoformat()} ({period.tz})"
    return (f"{start.isoformat(timespec='seconds')} → {end.isoformat(timespec='seconds')} "
            f"({period.tz})")


def format_time(t: float | None, tz: str) -> str:
    """ISO 8601 with the zone's offset (what a reader in that zone expects); '' for None."""
    if t is None:
        return ""
    return datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat(timespec="seconds")


# ---------------------------------------------------------------- rows in, report out


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


def classify(row: EntryRow, end: float) -> str:
    """The entry's status as of `end` (see the module docstring)."""
    if row.outcome == "refused":
        return "refused"
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
                  n["removed"])


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


# ---------------------------------------------------------------- CSV and JSON


def _entry_fields(e: ReportEntry, tz: str) -> dict[str, Any]:
    r = e.row
    return {
        "id": r.id, "type": r.type, "value": r.value, "categories": ",".join(r.categories),
        "mandatory": r.mandatory, "authority": r.authority or "", "decision": r.decision or "",
        "date": r.decision_date or "", "issued_at": format_time(r.issued_at, tz),
        "deadline": format_time(r.deadline, tz), "received_at": format_time(r.received_at, tz),
        "applied_at": format_time(r.applied_at, tz),
        "verified_at": format_time(r.verified_at, tz),
        "latency_s": None if e.latency_s is None else round(e.latency_s, 3),
        "status": e.status,
    }


def render_csv(report: Report) -> str:
    """One row per entry (and per gateway for a publisher report, in a leading column)."""
    out = io.StringIO()
    columns = (("gateway", *CSV_COLUMNS) if report.kind == "publisher" else CSV_COLUMNS)
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for section in report.sections:
        for e in section.entries:
            row = _entry_fields(e, report.period.tz)
            row["mandatory"] = "1" if e.row.mandatory else "0"
            row["latency_s"] = "" if row["latency_s"] is None else f"{row['latency_s']:g}"
            if report.kind == "publisher":
                row["gateway"] = section.name
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def _cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas: a feed's text must never run in the regulator's Excel."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _latency_json(lat: Latency) -> dict[str, Any]:
    return {"count": lat.count, "median_s": lat.median_s, "p95_s": lat.p95_s}


def section_summary(s: Section) -> dict[str, Any]:
    return {
        "name": s.name,
        "all": vars(s.all).copy(),
        "mandatory": vars(s.mandatory).copy(),
        "latency": _latency_json(s.latency),
        "latency_by_category": {c: _latency_json(v) for c, v in s.latency_by_category.items()},
        "probe_failures": dict(s.probes),
        "stats": [vars(r).copy() for r in s.stats],
    }


def render_json(report: Report) -> str:
    """The summary (per section, plus totals) and every entry with its status."""
    tz = report.period.tz
    doc: dict[str, Any] = {
        "kind": report.kind, "source": report.source,
        "period": {"from": format_time(report.period.start, tz),
                   "to": format_time(report.period.end, tz), "tz": tz},
        "generated_at": format_time(report.generated_at, tz),
        "sections": [
            {**section_summary(s), "entries": [_entry_fields(e, tz) for e in s.entries]}
            for s in report.sections
        ],
        "notes": list(report.notes),
    }
    if report.total is not None:
        doc["total"] = section_summary(report.total)
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


# ---------------------------------------------------------------- HTML (printable, bilingual)

TITLE = ("Báo cáo tuân thủ chặn lọc", "Blocking compliance report")
LABELS: dict[str, tuple[str, str]] = {
    "received": ("Nhận", "Received"),
    "mandatory": ("Bắt buộc", "Mandatory"),
    "within_deadline": ("Đúng hạn", "Within deadline"),
    "late": ("Trễ hạn", "Late"),
    "never": ("Chưa thực hiện", "Never"),
    "refused": ("Bị từ chối (bảo vệ)", "Refused by guard"),
    "removed": ("Đã gỡ bỏ", "Removed"),
    "all": ("Tất cả", "All entries"),
    "period": ("Kỳ báo cáo", "Period"),
    "source": ("Nguồn dữ liệu", "Source"),
    "generated": ("Lập lúc", "Generated"),
    "summary": ("Tổng hợp", "Summary"),
    "latency": ("Thời gian thực thi (ban hành → xác minh)",
                "Enforcement latency (issued → verified)"),
    "category": ("Danh mục", "Category"),
    "count": ("Số lượng", "Count"),
    "median": ("Trung vị", "Median"),
    "p95": ("Phân vị 95", "95th percentile"),
    "overall": ("Chung", "Overall"),
    "probes": ("Kiểm tra thất bại", "Probe failures"),
    "not_blocked": ("Không bị chặn", "Not blocked"),
    "error": ("Lỗi", "Error"),
    "stats": ("Truy vấn theo danh mục và cấp học", "Queries by category and tier"),
    "tier": ("Cấp học", "Tier"),
    "queries": ("Truy vấn", "Queries"),
    "blocked": ("Bị chặn", "Blocked"),
    "overdue": ("Mục trễ hạn hoặc chưa thực hiện", "Late or never enforced entries"),
    "id": ("Mã", "ID"),
    "value": ("Giá trị", "Value"),
    "authority": ("Cơ quan", "Authority"),
    "decision": ("Quyết định số", "Decision no."),
    "date": ("Ngày", "Date"),
    "deadline": ("Hạn", "Deadline"),
    "verified": ("Xác minh", "Verified"),
    "status": ("Trạng thái", "Status"),
    "gateway": ("Cổng lọc", "Gateway"),
    "total": ("Tổng cộng mọi cổng lọc", "Total, all gateways"),
    "none": ("Không có", "None"),
    "notes": ("Ghi chú", "Notes"),
}

DEFINITIONS = (
    "Đúng hạn: đã xác minh bị chặn trước hạn. Trễ hạn: xác minh sau hạn. Chưa thực hiện: chưa "
    "xác minh đến hết kỳ báo cáo. / Within deadline: verified blocked by the deadline. Late: "
    "verified after it. Never: not verified by the end of the period.",
    "Thời gian thực thi tính từ lúc ban hành đến lúc xác minh; phân vị 95 theo hạng gần nhất. / "
    "Latency runs from issue to verification; the 95th percentile is nearest-rank.",
)

_CSS = """
@page { size: A4; margin: 18mm 15mm; }
body { font-family: "Noto Sans", "DejaVu Sans", Arial, sans-serif; font-size: 10pt;
       color: #111; max-width: 180mm; margin: 0 auto; }
h1 { font-size: 16pt; margin: 0 0 4mm; }
h2 { font-size: 12.5pt; margin: 7mm 0 2mm; border-bottom: 1px solid #888;
     break-after: avoid; }
h3 { font-size: 11pt; margin: 4mm 0 1.5mm; break-after: avoid; }
.en { color: #555; font-weight: normal; }
table { border-collapse: collapse; width: 100%; margin: 1mm 0 3mm; }
th, td { border: 1px solid #999; padding: 1.2mm 2mm; text-align: left; vertical-align: top; }
th { background: #eee; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr { break-inside: avoid; }
thead { display: table-header-group; }
.meta td { border: none; padding: 0.5mm 2mm 0.5mm 0; }
.late { color: #8a4b00; } .never { color: #a00; font-weight: bold; }
section.gw { break-before: page; }
section.gw:first-of-type { break-before: auto; }
@media screen { body { margin: 10mm auto; } }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _label(key: str, tag: str = "span") -> str:
    vi, en = LABELS[key]
    return f'{_e(vi)}<br><{tag} class="en">{_e(en)}</{tag}>'


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _counts_table(s: Section) -> str:
    keys = ("received", *STATUSES)
    head = "".join(f"<th>{_label(k)}</th>" for k in keys)
    rows = []
    for which, counts in (("all", s.all), ("mandatory", s.mandatory)):
        cells = "".join(f'<td class="n">{getattr(counts, k)}</td>' for k in keys)
        rows.append(f"<tr><th>{_label(which)}</th>{cells}</tr>")
    return f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _latency_table(s: Section) -> str:
    head = "".join(f"<th>{_label(k)}</th>" for k in ("category", "count", "median", "p95"))
    rows = [(_label("overall"), s.latency)]
    rows += [(_e(c), lat) for c, lat in s.latency_by_category.items()]
    body = "".join(
        f'<tr><td>{name}</td><td class="n">{lat.count}</td>'
        f'<td class="n">{_seconds(lat.median_s)}</td><td class="n">{_seconds(lat.p95_s)}</td></tr>'
        for name, lat in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _probe_table(s: Section) -> str:
    cells = "".join(f"<tr><th>{_label(k)}</th><td class=\"n\">{s.probes.get(k, 0)}</td></tr>"
                    for k in PROBE_RESULTS)
    return f"<table style=\"width:auto\"><tbody>{cells}</tbody></table>"


def _stats_table(s: Section) -> str:
    if not s.stats:
        return f"<p>{_label('none')}</p>"
    head = "".join(f"<th>{_label(k)}</th>" for k in ("category", "tier", "queries", "blocked"))
    body = "".join(
        f"<tr><td>{_e(r.category)}</td><td>{_e(r.tier)}</td><td class=\"n\">{r.queries}</td>"
        f"<td class=\"n\">{r.blocked}</td></tr>" for r in s.stats)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _overdue_table(s: Section, tz: str) -> str:
    bad = [e for e in s.entries if e.status in ("late", "never")]
    if not bad:
        return f"<p>{_label('none')}</p>"
    keys = ("id", "value", "authority", "decision", "date", "deadline", "verified", "status")
    head = "".join(f"<th>{_label(k)}</th>" for k in keys)
    body = []
    for e in bad:
        r = e.row
        body.append(
            f"<tr><td>{_e(r.id)}</td><td>{_e(r.value)}</td><td>{_e(r.authority or '')}</td>"
            f"<td>{_e(r.decision or '')}</td><td>{_e(r.decision_date or '')}</td>"
            f"<td>{_e(format_time(r.deadline, tz)[:16].replace('T', ' '))}</td>"
            f"<td>{_e(format_time(r.verified_at, tz)[:16].replace('T', ' '))}</td>"
            f'<td class="{e.status}">{_label(e.status)}</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _section_html(s: Section, heading: str, tz: str, *, overdue: bool = True) -> str:
    parts = [
        f'<section class="gw"><h2>{heading}</h2>',
        f"<h3>{_label('summary', 'span')}</h3>", _counts_table(s),
        f"<h3>{_label('latency')}</h3>", _latency_table(s),
        f"<h3>{_label('probes')}</h3>", _probe_table(s),
        f"<h3>{_label('stats')}</h3>", _stats_table(s),
    ]
    if overdue:
        parts += [f"<h3>{_label('overdue')}</h3>", _overdue_table(s, tz)]
    parts.append("</section>")
    return "\n".join(parts)


def render_html(report: Report) -> str:
    """A self-contained page: Vietnamese first, English below; every value escaped."""
    tz = report.period.tz
    period = format_period(report.period)
    meta = "".join(
        f"<tr><td><b>{_e(LABELS[k][0])}</b> / {_e(LABELS[k][1])}</td><td>{_e(v)}</td></tr>"
        for k, v in (("period", period), ("source", report.source),
                     ("generated", format_time(report.generated_at, tz))))
    body = []
    for s in report.sections:
        heading = (f"{_e(LABELS['gateway'][0])} / <span class=\"en\">"
                   f"{_e(LABELS['gateway'][1])}</span>: {_e(s.name)}")
        body.append(_section_html(s, heading, tz))
    if report.total is not None:
        body.append(_section_html(report.total, _label("total"), tz, overdue=False))
    notes = "".join(f"<li>{_e(n)}</li>" for n in (*DEFINITIONS, *report.notes))
    body.append(f"<h3>{_label('notes')}</h3><ul>{notes}</ul>")
    return (
        "<!DOCTYPE html>\n<html lang=\"vi\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(TITLE[0])} / {_e(TITLE[1])}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{_e(TITLE[0])}<br><span class=\"en\">{_e(TITLE[1])}</span></h1>\n"
        f"<table class=\"meta\"><tbody>{meta}</tbody></table>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )


RENDERERS = {"csv": render_csv, "json": render_json, "html": render_html}
