"""`safegate report`: exact numbers from known ledger / publisher rows, and the three renderings.

The gateway's ledger is written through gateway.feeds.ledger.Ledger, its only owner. The
publisher schema is copied from docs/feeds-contract.md on purpose: the report must read what
the contract says, whoever writes that database.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from gateway.cli.report import build_report
from gateway.compliance.report import EntryRow, Latency, classify, parse_period, percentile
from gateway.compliance.report_render import CSV_COLUMNS, render_csv, render_html, render_json
from gateway.feedformat.document import FeedEntry, LegalBasis
from gateway.feeds.ledger import Ledger

REPO = Path(__file__).resolve().parents[1]
HCM = ZoneInfo("Asia/Ho_Chi_Minh")
T0 = datetime(2026, 3, 1, tzinfo=HCM).timestamp()
BEFORE = datetime(2025, 12, 31, 23, 0, tzinfo=HCM).timestamp()   # before the period
LATE_JUNE = datetime(2026, 6, 30, 22, 0, tzinfo=HCM).timestamp()  # last day of the period
JULY = datetime(2026, 7, 1, 1, 0, tzinfo=HCM).timestamp()         # just after it
HOSTILE = "<script>alert('x')</script> & Co"
PERIOD = ("2026-01-01", "2026-06-30")

PUBLISHER_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (id TEXT PRIMARY KEY, type TEXT NOT NULL, value TEXT NOT NULL,
  categories TEXT NOT NULL, action TEXT NOT NULL, mandatory INTEGER NOT NULL,
  authority TEXT, decision TEXT, decision_date TEXT,
  issued_at TEXT NOT NULL, deadline TEXT,
  added_serial INTEGER NOT NULL, removed_serial INTEGER, removed_at TEXT);
CREATE TABLE gateways (id TEXT PRIMARY KEY, applied_serial INTEGER NOT NULL DEFAULT 0,
                       last_ack REAL);
CREATE TABLE acks (gateway TEXT NOT NULL, entry_id TEXT NOT NULL, received_at REAL,
                   applied_at REAL, verified_at REAL, outcome TEXT NOT NULL,
                   PRIMARY KEY (gateway, entry_id));
CREATE TABLE gateway_stats (gateway TEXT NOT NULL, hour INTEGER NOT NULL, category TEXT NOT NULL,
                            tier TEXT NOT NULL, queries INTEGER NOT NULL, blocked INTEGER NOT NULL,
                            PRIMARY KEY (gateway, hour, category, tier));
CREATE TABLE gateway_probes (gateway TEXT NOT NULL, result TEXT NOT NULL,
                             count INTEGER NOT NULL, PRIMARY KEY (gateway, result));
"""

# id, type, value, categories, mandatory, authority, issued, deadline-after-issue, received,
# verified-after-issue, removed_at, outcome  -> expected status
LEDGER_ROWS = [
    ("A-within", "domain", "a.test", "csam", 1, "BTTTT", T0, 3600, T0 + 10, 60, None,
     "verified"),
    ("B-within", "domain-exact", "b.test", "adult,gambling", 1, "BTTTT", T0 + 100, 86400,
     T0 + 110, 600, None, "verified"),
    ("C-late", "domain", "c.test", "adult", 1, "BCA", T0 + 200, 3600, T0 + 210, 7200, None,
     "verified"),
    ("D-never", "domain", "d.test", "csam", 1, HOSTILE, T0 + 300, 3600, T0 + 310, None, None,
     "applied"),
    ("E-refused", "domain", "e.test", "social", 0, "Sở GD", T0 + 400, None, T0 + 410, None,
     None, "refused"),
    ("F-removed", "domain", "f.test", "social", 0, "Sở GD", T0 + 450, None, T0 + 460, None,
     T0 + 500, "removed"),
    ("G-nodeadline", "domain", "g.test", "gambling", 0, None, T0 + 600, None, T0 + 610, 30,
     None, "verified"),
    ("H-after", "domain", "h.test", "adult", 1, "BTTTT", LATE_JUNE, 3600, LATE_JUNE + 10,
     JULY - LATE_JUNE, None, "verified"),   # verified after --to: never, as of the report
    ("I-before", "domain", "i.test", "adult", 1, "BTTTT", BEFORE, 3600, BEFORE + 10, 60, None,
     "verified"),                          # received before the period: not in it
]
EXPECTED_STATUS = {"A-within": "within_deadline", "B-within": "within_deadline",
                   "C-late": "late", "D-never": "never", "E-refused": "refused",
                   "F-removed": "removed", "G-nodeadline": "within_deadline", "H-after": "never"}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_gateway(tmp_path: Path) -> Path:
    (tmp_path / "var").mkdir()
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({
        "dns": {"listen": ["127.0.0.1:53999"], "upstreams": ["127.0.0.1:53998"]},
        "state_dir": "var/",
        "gateway": {"id": "th-kim-dong"},
    }))
    # The ledger is written the way the gateway writes it: through the Ledger API.
    ledger = Ledger(tmp_path / "var" / "ledger.sqlite3")
    for (rid, etype, value, cats, mand, auth, issued, dl, received, ver, removed,
         outcome) in LEDGER_ROWS:
        entry = FeedEntry(rid, etype, value, tuple(cats.split(",")), "block", bool(mand),
                      LegalBasis(auth, f"QĐ-{rid}", "2026-02-27") if auth else None,
                      iso(issued), None if dl is None else iso(issued + dl))
        first = "refused" if outcome == "refused" else "applied"
        ledger.record("central", 7, [(entry, first)], [], received, received + 1, None)
        if ver is not None:
            ledger.record_probe("central", rid, "blocked", issued + ver, gave_up=False,
                                ack=None, serial=7)
        if removed is not None:
            ledger.record("central", 8, [], [rid], removed, removed, None)
        assert ledger.get("central", rid).outcome == outcome   # type: ignore[union-attr]
    for ts, result in [(T0 + 4, "not_blocked"), (T0 + 5, "not_blocked"), (T0 + 6, "error"),
                       (BEFORE, "not_blocked"), (JULY, "error")]:
        ledger.record_probe("central", "A-within", result, ts, gave_up=False, ack=None,
                            serial=7)
    for hour, cat, tier, queries, blocked in [
            (T0, "adult", "thcs", 100, 7), (T0 + 3600, "adult", "thcs", 50, 3),
            (T0, "gambling", "thpt", 10, 1), (int(BEFORE), "adult", "thcs", 999, 999)]:
        ledger.add_stats(int(hour), {(cat, tier): (queries, blocked)})
    ledger.close()
    return cfg


def make_publisher(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "publisher.yaml"
    cfg.write_text(yaml.safe_dump({"database": "data/publisher.sqlite3",
                                   "signing_key": "keys/feed.key"}))
    (tmp_path / "data").mkdir()
    db = sqlite3.connect(tmp_path / "data" / "publisher.sqlite3")
    db.executescript(PUBLISHER_SCHEMA)
    entries = [
        ("P1", "block", 1, T0, 3600, None),
        ("P2", "block", 1, T0 + 1000, 3600, None),
        ("P3", "warn", 0, T0 + 2000, None, None),       # warn: never enforced, not counted
        ("P4", "block", 0, T0 + 10, None, T0 + 50),     # removed by the publisher
        ("P5", "block", 1, BEFORE, 3600, None),         # issued before the period
    ]
    for rid, action, mand, issued, dl, removed in entries:
        db.execute("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (rid, "domain", f"{rid.lower()}.test", json.dumps(["csam"]), action, mand,
                    HOSTILE if rid == "P2" else "BTTTT", f"QĐ-{rid}", "2026-02-27", iso(issued),
                    None if dl is None else iso(issued + dl), 1, 2 if removed else None,
                    None if removed is None else iso(removed)))
    db.executemany("INSERT INTO gateways VALUES (?, 2, ?)", [("gw-a", T0), ("gw-b", T0)])
    acks = [("gw-a", "P1", T0 + 5, T0 + 6, T0 + 100, "verified"),
            ("gw-b", "P1", T0 + 5, T0 + 6, T0 + 7200, "verified"),
            ("gw-a", "P2", T0 + 1005, T0 + 1006, T0 + 1300, "verified"),
            ("gw-a", "P4", T0 + 15, T0 + 16, None, "removed")]
    db.executemany("INSERT INTO acks VALUES (?,?,?,?,?,?)", acks)
    db.executemany("INSERT INTO gateway_probes VALUES (?,?,?)",
                   [("gw-a", "blocked", 10), ("gw-a", "not_blocked", 1), ("gw-b", "error", 2)])
    db.executemany("INSERT INTO gateway_stats VALUES (?,?,?,?,?,?)",
                   [("gw-a", T0, "adult", "thcs", 5, 1), ("gw-b", T0, "adult", "thcs", 7, 2),
                    ("gw-b", int(BEFORE), "adult", "thcs", 100, 100)])
    db.commit()
    db.close()
    return cfg


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


# ---------------------------------------------------------------- pure parts


def test_period_dates_are_whole_days_in_hanoi_time_and_to_is_inclusive() -> None:
    p = parse_period("2026-01-01", "2026-06-30")
    assert p.start == datetime(2026, 1, 1, tzinfo=HCM).timestamp()
    assert p.end == datetime(2026, 7, 1, tzinfo=HCM).timestamp()
    assert p.contains(LATE_JUNE) and not p.contains(JULY) and not p.contains(BEFORE)
    utc = parse_period("2026-01-01", "2026-01-01", "UTC")
    assert utc.end - utc.start == 86400
    assert utc.start == datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def test_period_accepts_iso_times() -> None:
    p = parse_period("2026-01-01T08:00:00+07:00", "2026-01-01T02:00:00Z")
    assert p.start == datetime(2026, 1, 1, 1, tzinfo=UTC).timestamp()
    assert p.end == datetime(2026, 1, 1, 2, tzinfo=UTC).timestamp()
    naive = parse_period("2026-01-01T08:00", "2026-01-02")   # no offset: read in --tz
    assert naive.start == datetime(2026, 1, 1, 8, tzinfo=HCM).timestamp()


@pytest.mark.parametrize(("start", "end", "tz", "message"), [
    ("2026-13-01", "2026-12-31", "Asia/Ho_Chi_Minh", "--from"),
    ("yesterday", "2026-12-31", "Asia/Ho_Chi_Minh", "--from"),
    ("2026-02-01", "2026-01-01", "Asia/Ho_Chi_Minh", "after"),
    ("2026-01-01", "2026-01-02", "Mars/Olympus", "time zone"),
])
def test_period_rejects_bad_input(start: str, end: str, tz: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_period(start, end, tz)


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 0.95, None), ([5.0], 0.95, 5.0), ([1.0, 2.0, 3.0, 4.0], 0.95, 4.0),
    ([float(i) for i in range(1, 21)], 0.95, 19.0), ([float(i) for i in range(1, 101)], 0.5, 50.0),
])
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float | None
                                    ) -> None:
    assert percentile(values, q) == expected


def row(**kw: object) -> EntryRow:
    base: dict[str, object] = dict(
        id="x", type="domain", value="x.test", categories=("adult",), mandatory=True,
        authority="A", decision="D", decision_date="2026-01-01", issued_at=0.0, deadline=100.0,
        received_at=1.0, applied_at=2.0, verified_at=None, removed_at=None, outcome="applied")
    base.update(kw)
    return EntryRow(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "status"), [
    ({"verified_at": 100.0}, "within_deadline"),            # exactly at the deadline
    ({"verified_at": 100.5}, "late"),
    ({"verified_at": 5.0, "deadline": None}, "within_deadline"),
    ({"verified_at": None}, "never"),
    ({"verified_at": 1000.0}, "never"),                    # verified after the period's end
    ({"outcome": "refused"}, "refused"),
    ({"type": "sha256", "outcome": "not_applicable", "applied_at": None}, "not_applicable"),
    ({"type": "url", "outcome": "verified", "verified_at": 3.0}, "within_deadline"),
    ({"outcome": "removed", "removed_at": 50.0}, "removed"),
    ({"outcome": "removed"}, "removed"),
    ({"removed_at": 2000.0}, "never"),                     # removed only after the period
    ({"verified_at": 50.0, "removed_at": 60.0, "outcome": "removed"}, "within_deadline"),
])
def test_classify(kw: dict[str, object], status: str) -> None:
    assert classify(row(**kw), end=999.0) == status


# ---------------------------------------------------------------- gateway report


def test_gateway_report_numbers(tmp_path: Path) -> None:
    report = build_report(make_gateway(tmp_path), parse_period(*PERIOD), T0)
    assert report.kind == "gateway" and report.total is None
    (s,) = report.sections
    assert {e.row.id: e.status for e in s.entries} == EXPECTED_STATUS
    assert vars(s.all) == {"received": 8, "within_deadline": 3, "late": 1, "never": 2,
                           "refused": 1, "removed": 1, "not_applicable": 0}
    assert vars(s.mandatory) == {"received": 5, "within_deadline": 2, "late": 1, "never": 2,
                                 "refused": 0, "removed": 0, "not_applicable": 0}
    # verified: 60, 600, 7200 (late), 30 -> median (60 + 600) / 2, p95 = the 4th of 4
    assert s.latency == Latency(4, 330.0, 7200.0)
    assert s.latency_by_category == {
        "adult": Latency(2, 3900.0, 7200.0),
        "csam": Latency(1, 60.0, 60.0),
        "gambling": Latency(2, 315.0, 600.0),
    }
    assert s.probes == {"not_blocked": 2, "error": 1}
    assert [(r.category, r.tier, r.queries, r.blocked) for r in s.stats] == [
        ("adult", "thcs", 150, 10), ("gambling", "thpt", 10, 1)]


def test_gateway_report_csv_rows(tmp_path: Path) -> None:
    report = build_report(make_gateway(tmp_path), parse_period(*PERIOD), T0)
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    by_id = {r["id"]: r for r in rows}
    assert {i: r["status"] for i, r in by_id.items()} == EXPECTED_STATUS
    c = by_id["C-late"]
    assert c["latency_s"] == "7200" and c["mandatory"] == "1" and c["categories"] == "adult"
    assert c["issued_at"] == "2026-03-01T00:03:20+07:00"
    assert c["deadline"] == "2026-03-01T01:03:20+07:00"
    assert c["verified_at"] == "2026-03-01T02:03:20+07:00"
    assert c["decision"] == "QĐ-C-late" and c["date"] == "2026-02-27"
    assert by_id["D-never"]["verified_at"] == "" and by_id["D-never"]["latency_s"] == ""
    assert by_id["D-never"]["authority"] == HOSTILE
    assert by_id["B-within"]["categories"] == "adult,gambling"


def test_gateway_report_json(tmp_path: Path) -> None:
    report = build_report(make_gateway(tmp_path), parse_period(*PERIOD), T0)
    doc = json.loads(render_json(report))
    assert doc["kind"] == "gateway"
    assert doc["period"] == {"from": "2026-01-01T00:00:00+07:00",
                             "to": "2026-07-01T00:00:00+07:00", "tz": "Asia/Ho_Chi_Minh"}
    (s,) = doc["sections"]
    assert s["all"]["late"] == 1 and s["mandatory"]["never"] == 2
    assert s["latency"] == {"count": 4, "median_s": 330.0, "p95_s": 7200.0}
    assert s["latency_by_category"]["adult"]["median_s"] == 3900.0
    assert s["probe_failures"] == {"not_blocked": 2, "error": 1}
    assert s["stats"][0] == {"category": "adult", "tier": "thcs", "queries": 150, "blocked": 10}
    assert len(s["entries"]) == 8


def test_gateway_report_html_is_bilingual_escaped_and_lists_overdue(tmp_path: Path) -> None:
    report = build_report(make_gateway(tmp_path), parse_period(*PERIOD), T0)
    page = render_html(report)
    for text in ("Báo cáo tuân thủ chặn lọc", "Blocking compliance report", "Nhận", "Received",
                 "Đúng hạn", "Within deadline", "Trễ hạn", "Late", "Chưa thực hiện", "Never",
                 "@page", "A4"):
        assert text in page, text
    assert "2026-01-01 → 2026-06-30 (Asia/Ho_Chi_Minh)" in page   # --to day included
    assert "Gateway</span>: th-kim-dong" in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; Co" in page
    overdue = page.split("Late or never enforced entries", 1)[1]
    for rid in ("C-late", "D-never", "H-after", "QĐ-C-late", "2026-02-27"):
        assert rid in overdue, rid
    assert "A-within" not in overdue and "E-refused" not in overdue


# ---------------------------------------------------------------- publisher report


def test_publisher_report_numbers_per_gateway_and_total(tmp_path: Path) -> None:
    report = build_report(make_publisher(tmp_path), parse_period(*PERIOD), T0)
    assert report.kind == "publisher"
    a, b = report.sections
    assert (a.name, b.name) == ("gw-a", "gw-b")
    assert {e.row.id: e.status for e in a.entries} == {
        "P1": "within_deadline", "P2": "within_deadline", "P4": "removed"}
    assert {e.row.id: e.status for e in b.entries} == {
        "P1": "late", "P2": "never", "P4": "removed"}
    assert vars(a.all) == {"received": 3, "within_deadline": 2, "late": 0, "never": 0,
                           "refused": 0, "removed": 1, "not_applicable": 0}
    assert vars(b.mandatory) == {"received": 2, "within_deadline": 0, "late": 1, "never": 1,
                                 "refused": 0, "removed": 0, "not_applicable": 0}
    assert a.latency == Latency(2, 200.0, 300.0)
    assert b.latency == Latency(1, 7200.0, 7200.0)
    assert a.probes == {"not_blocked": 1, "error": 0}
    assert b.probes == {"not_blocked": 0, "error": 2}
    total = report.total
    assert total is not None
    assert vars(total.all) == {"received": 6, "within_deadline": 2, "late": 1, "never": 1,
                               "refused": 0, "removed": 2, "not_applicable": 0}
    assert total.latency == Latency(3, 300.0, 7200.0)
    assert total.probes == {"not_blocked": 1, "error": 2}
    assert [(r.category, r.tier, r.queries, r.blocked) for r in total.stats] == [
        ("adult", "thcs", 12, 3)]


def test_publisher_report_renderings(tmp_path: Path) -> None:
    report = build_report(make_publisher(tmp_path), parse_period(*PERIOD), T0)
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert rows[0]["gateway"] == "gw-a" and len(rows) == 6
    assert {(r["gateway"], r["id"]): r["status"] for r in rows}[("gw-b", "P2")] == "never"
    doc = json.loads(render_json(report))
    assert [s["name"] for s in doc["sections"]] == ["gw-a", "gw-b"]
    assert doc["total"]["all"]["received"] == 6
    page = render_html(report)
    assert "gw-a" in page and "gw-b" in page and "Total, all gateways" in page
    assert "<script>" not in page


# ---------------------------------------------------------------- the command


def test_cli_writes_each_format(tmp_path: Path) -> None:
    cfg = make_gateway(tmp_path)
    for fmt in ("csv", "json", "html"):
        out = tmp_path / f"report.{fmt}"
        r = run_cli("report", "-c", str(cfg), "--from", PERIOD[0], "--to", PERIOD[1],
                    "--format", fmt, "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert out.stat().st_size > 0
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["sections"][0]["all"]["received"] == 8
    assert "Chưa thực hiện" in (tmp_path / "report.html").read_text(encoding="utf-8")
    r = run_cli("report", "-c", str(make_publisher(tmp_path / "pub")), "--from", PERIOD[0],
                "--to", PERIOD[1], "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total"]["all"]["never"] == 1


def test_cli_errors(tmp_path: Path) -> None:
    cfg = make_gateway(tmp_path)
    r = run_cli("report", "-c", str(cfg), "--from", "2026-02-30", "--to", "2026-03-01")
    assert r.returncode == 1 and "--from" in r.stderr
    other = tmp_path / "other.yaml"
    other.write_text("foo: 1\n")
    r = run_cli("report", "-c", str(other), "--from", PERIOD[0], "--to", PERIOD[1])
    assert r.returncode == 1 and "neither a gateway.yaml" in r.stderr
    (tmp_path / "var" / "ledger.sqlite3").unlink()
    r = run_cli("report", "-c", str(cfg), "--from", PERIOD[0], "--to", PERIOD[1])
    assert r.returncode == 1 and "database not found" in r.stderr


def test_csv_cells_cannot_become_spreadsheet_formulas() -> None:
    from gateway.compliance.report_render import _cell

    assert _cell("=HYPERLINK(\"http://x.invalid\")") == "'=HYPERLINK(\"http://x.invalid\")"
    assert _cell("@SUM(A1)") == "'@SUM(A1)"
    assert _cell("Bộ TT&TT") == "Bộ TT&TT"
    assert _cell(12) == 12
