"""`safegate reports list|export -c gateway.yaml`: the reports people sent from block pages.

Reads the gateway's reports.sqlite3 read-only (the running gateway keeps writing it).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from gateway.errors import SafeGateError
from gateway.hotline.store import FILENAME, ReportStore, StoredReport

FIELDS = ("id", "kind", "target", "category", "entry_id", "comment", "contact", "created_at",
          "gateway")


def _open(config_path: Path) -> ReportStore | None:
    from gateway.config.gateway import load_config

    path = load_config(config_path).state_dir / FILENAME
    if not path.exists():
        return None
    return ReportStore(path, readonly=True)


def _status(r: StoredReport) -> str:
    if r.pending:
        return f"pending ({len(r.pending)})"
    return "forwarded" if r.delivered else "stored"


def render_list(reports: list[StoredReport]) -> str:
    """One line per report, newest first: when, id, kind, status, target, category, entry."""
    if not reports:
        return "no reports\n"
    lines = [f"{'created_at':20}  {'id':36}  {'kind':8}  {'status':12}  target  category  entry"]
    for r in reports:
        rep = r.report
        target = "".join(ch for ch in rep.target if ch.isprintable())
        lines.append(f"{rep.created_at:20}  {rep.id:36}  {rep.kind:8}  {_status(r):12}  "
                     f"{target}  {rep.category or '-'}  {rep.entry_id or '-'}")
    return "\n".join(lines) + "\n"


def render_export(reports: list[StoredReport], fmt: str) -> str:
    """Every field of every report, plus where it was delivered and where it is pending."""
    rows = [{**r.report.to_json(), "delivered_to": list(r.delivered),
             "pending_to": list(r.pending)} for r in reports]
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*FIELDS, "delivered_to", "pending_to"])
    for row in rows:
        writer.writerow([*(row[f] for f in FIELDS), " ".join(row["delivered_to"]),
                         " ".join(row["pending_to"])])
    return out.getvalue()


def cmd_reports(args: argparse.Namespace) -> int:
    store = _open(args.config)
    try:
        reports = store.reports(args.limit) if store is not None else []
    except Exception as exc:  # sqlite3.Error and friends: say which file
        raise SafeGateError(f"cannot read the reports database: {exc}") from None
    finally:
        if store is not None:
            store.close()
    text = render_list(reports) if args.action == "list" else render_export(reports, args.format)
    if getattr(args, "out", None):
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `reports list` and `reports export` to the `safegate` command."""
    p = subparsers.add_parser("reports", help="reports sent from block pages (mistakes, "
                                              "harmful content)")
    verbs = p.add_subparsers(dest="action", required=True)
    ls = verbs.add_parser("list", help="newest first, with delivery status")
    ls.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    ls.add_argument("--limit", type=int, default=None, help="at most N reports")
    ls.set_defaults(func=cmd_reports)
    ex = verbs.add_parser("export", help="every report as CSV or JSON")
    ex.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    ex.add_argument("--format", choices=["csv", "json"], default="csv")
    ex.add_argument("--out", type=Path, default=None, help="write to FILE instead of stdout")
    ex.set_defaults(func=cmd_reports, limit=None)
