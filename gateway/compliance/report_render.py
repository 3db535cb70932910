"""Renders a compliance Report as CSV, JSON or printable bilingual (Vietnamese/English) HTML."""

from __future__ import annotations

import csv
import html
import io
import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.compliance.report import (
    PROBE_RESULTS,
    STATUSES,
    Latency,
    Period,
    Report,
    ReportEntry,
    Section,
)

CSV_COLUMNS = ("id", "type", "value", "categories", "mandatory", "authority", "decision", "date",
               "issued_at", "deadline", "received_at", "applied_at", "verified_at", "latency_s",
               "status")


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
    if report.provinces:
        doc["provinces"] = [section_summary(s) for s in report.provinces]
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
    "not_applicable": ("Không áp dụng", "Not applicable"),
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
    "province": ("Tỉnh/thành phố, mọi cổng lọc", "Province, all its gateways"),
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
    for s in report.provinces:
        heading = (f"{_e(LABELS['province'][0])} / <span class=\"en\">"
                   f"{_e(LABELS['province'][1])}</span>: {_e(s.name)}")
        body.append(_section_html(s, heading, tz, overdue=False))
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
