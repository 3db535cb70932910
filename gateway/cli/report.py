"""`safegate report -c gateway.yaml|publisher.yaml --from --to`: the compliance report.

For the regulator: entries received, enforced within deadline, late, never. (`safegate reports`,
the reports users send from the block page, is cli/hotline.py.) This module is the I/O shell of
gateway.compliance.report: it finds the database a config points at and reads its rows; the
numbers are computed there.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from gateway.cli.report_national import read_national, with_national
from gateway.cli.report_rows import ACK_COLUMNS, ENTRY_COLUMNS, acks_by_key, issued_in, rows_of
from gateway.compliance import export as export_mod
from gateway.compliance.report import (
    DEFAULT_TZ,
    EntryRow,
    Period,
    Report,
    Section,
    StatTotal,
    build_provinces,
    build_section,
    build_total,
    parse_period,
)
from gateway.compliance.report_render import RENDERERS
from gateway.errors import ConfigError, SafeGateError
from gateway.feeds.ledger import Ledger
from gateway.publisher.db import Database, db_errors, is_url, open_database, redact
from gateway.util.atomic import atomic_write

GATEWAY_KEYS = frozenset({"dns", "state_dir"})
PUBLISHER_KEYS = frozenset({"database", "signing_key"})
PUBLISHER_PROBE_NOTE = ("Probe failures in a publisher report are the cumulative counts the "
                        "gateways last reported, not limited to the period.")


# ---------------------------------------------------------------- which config, which database


def config_kind(path: Path) -> tuple[str, dict[str, Any]]:
    """("gateway" | "publisher", the raw mapping), told apart by their keys."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", str(path)) from None
    if not isinstance(doc, dict):
        raise ConfigError("expected a mapping", str(path))
    if GATEWAY_KEYS & doc.keys():
        return "gateway", doc
    if PUBLISHER_KEYS & doc.keys():
        return "publisher", doc
    raise ConfigError("neither a gateway.yaml (dns, state_dir) nor a publisher.yaml "
                      "(database, signing_key)", str(path))


def publisher_database(path: Path, doc: dict[str, Any]) -> Path | str:
    """The SQLite file, or the PostgreSQL URL (`database: URL` or `database: {url: URL}`)."""
    db = doc.get("database")
    if isinstance(db, dict):
        db = db.get("url")
    if not isinstance(db, str) or not db.strip():
        raise ConfigError("database must be a file name or a postgresql:// URL", str(path))
    if is_url(db):
        return db
    return Path(os.path.normpath(path.resolve().parent / db))


def gateway_id(doc: dict[str, Any]) -> str:
    """The `gateway.id` a gateway acks with (the report names it), or plain "gateway"."""
    ident = doc.get("gateway")
    gid = ident.get("id") if isinstance(ident, dict) else None
    return gid if isinstance(gid, str) and gid else "gateway"


@contextmanager
def readonly(path: Path | str) -> Iterator[sqlite3.Connection | Database]:
    """The publisher database for reading (a SQLite file opened read-only, or PostgreSQL)."""
    db: sqlite3.Connection | Database = (open_database(path) if is_url(path)
                                         else export_mod.open_readonly(Path(path)))
    try:
        yield db
    finally:
        db.close()


# ---------------------------------------------------------------- reading rows


def read_ledger(ledger: Ledger, period: Period
                ) -> tuple[list[EntryRow], dict[str, int], list[StatTotal]]:
    """A gateway's entries received in the period, its failed probes, its hourly stats."""
    rows = []
    for e in ledger.all_entries():
        if not period.contains(e.received_at) or e.outcome == "received":
            # "received" = recorded, nothing to enforce (a warn entry): not part of the report.
            # URL/hash entries are in it (verified by the proxy, or not_applicable).
            continue
        rows.append(EntryRow(e.entry_id, e.type, e.value, e.categories, e.mandatory,
                             e.authority, e.decision, e.decision_date, e.issued_at, e.deadline,
                             e.received_at, e.applied_at, e.verified_at, e.removed_at,
                             e.outcome))
    stats = [StatTotal(*t) for t in ledger.stat_totals(period.start, period.end)]
    return rows, ledger.probe_failures(period.start, period.end), stats


def _stats(db: sqlite3.Connection | Database, table: str, period: Period, gateway: str | None = None
           ) -> list[StatTotal]:
    where = "hour >= ? AND hour < ?" + (" AND gateway = ?" if gateway is not None else "")
    params: tuple[Any, ...] = (period.start, period.end)
    if gateway is not None:
        params += (gateway,)
    return [StatTotal(c, t, int(q), int(b)) for c, t, q, b in db.execute(
        f"SELECT category, tier, SUM(queries), SUM(blocked) FROM {table} WHERE {where} "
        "GROUP BY category, tier", params)]


def read_publisher(db: sqlite3.Connection | Database, period: Period
                   ) -> list[tuple[str, list[EntryRow], dict[str, int], list[StatTotal]]]:
    """Per gateway: every block entry issued in the period joined with that gateway's ack.

    No ack at all counts as not received: the gateway is answerable for what was issued.
    """
    issued = issued_in(period, db.execute(
        f"SELECT {ENTRY_COLUMNS} FROM entries WHERE action = 'block'"))
    acks = acks_by_key(db.execute(f"SELECT {ACK_COLUMNS} FROM acks"))
    gateways = [g for (g,) in db.execute(
        "SELECT id FROM gateways UNION SELECT gateway FROM acks ORDER BY 1")]
    out = []
    for gw in gateways:
        rows = rows_of(gw, issued, acks)
        probes = dict(db.execute(
            "SELECT result, SUM(count) FROM gateway_probes WHERE gateway = ? "
            "AND result != 'blocked' GROUP BY result", (gw,)).fetchall())
        out.append((gw, rows, probes, _stats(db, "gateway_stats", period, gw)))
    return out


def build_report(config: Path, period: Period, now: float) -> Report:
    """Read whichever database `config` points at and compute its report."""
    kind, doc = config_kind(config)
    if kind == "gateway":
        from gateway.config.gateway import load_config

        path = load_config(config).state_dir / export_mod.LEDGER_FILE
        ledger = export_mod.open_ledger(path)
        try:
            rows, probes, stats = read_ledger(ledger, period)
        finally:
            ledger.close()
        section = build_section(gateway_id(doc), rows, period, probes, stats)
        return Report("gateway", str(path), period, now, (section,))
    database = publisher_database(config, doc)
    with readonly(database) as db:
        per_gateway = read_publisher(db, period)
        members = read_province_members(db)
        # a province: its schools' rows for national entries too
        per_gateway = with_national(per_gateway, read_national(db, period))
    sections: tuple[Section, ...] = tuple(
        build_section(gw, rows, period, probes, stats) for gw, rows, probes, stats in per_gateway)
    return Report("publisher", redact(database), period, now, sections,
                  build_total(sections, period), (PUBLISHER_PROBE_NOTE,),
                  build_provinces(sections, members, province_names(doc), period))


def read_province_members(db: sqlite3.Connection | Database) -> dict[str, str]:
    """gateway -> province at a ministry (gateway/publisher/provinces.py); {} elsewhere."""
    try:    # the table exists only where `provinces:` ever ran (SQLite or PostgreSQL)
        rows = db.execute("SELECT gateway, province FROM province_gateways").fetchall()
    except db_errors():
        return {}
    return {str(g): str(p) for g, p in rows}


def province_names(doc: dict[str, Any]) -> dict[str, str]:
    """Province id -> display name from publisher.yaml `provinces:` (validated by serve)."""
    items = doc.get("provinces")
    out: dict[str, str] = {}
    for p in items if isinstance(items, list) else []:
        if isinstance(p, dict) and isinstance(p.get("id"), str):
            name = p.get("name")
            out[p["id"]] = name if isinstance(name, str) and name else p["id"]
    return out


# ---------------------------------------------------------------- commands


def write_output(text: str, out: Path | None) -> None:
    """stdout, or FILE replaced atomically (a resolver or a mailer may be reading it)."""
    if out is None:
        sys.stdout.write(text)
        return
    atomic_write(out, text, mode=0o644)


def cmd_report(args: argparse.Namespace) -> int:
    try:
        period = parse_period(args.date_from, args.date_to, args.tz)
    except ValueError as exc:
        raise SafeGateError(str(exc)) from None
    try:
        report = build_report(args.config, period, time.time())
    except db_errors() as exc:
        raise SafeGateError(f"{args.config}: database error: {exc}") from None
    write_output(RENDERERS[args.format](report), args.out)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `report` to the `safegate` command."""
    p = subparsers.add_parser(
        "report", help="compliance report from a gateway ledger or the publisher database",
        description="Entries received, enforced within deadline, late, never; latencies; "
                    "probe failures; query totals.")
    p.add_argument("-c", "--config", required=True, type=Path,
                   help="gateway.yaml or publisher.yaml")
    p.add_argument("--from", dest="date_from", required=True,
                   help="YYYY-MM-DD (start of that day) or an ISO 8601 time")
    p.add_argument("--to", dest="date_to", required=True,
                   help="YYYY-MM-DD (inclusive: to the end of that day) or an ISO 8601 time")
    p.add_argument("--tz", default=DEFAULT_TZ, help=f"time zone of dates (default {DEFAULT_TZ})")
    p.add_argument("--format", choices=sorted(RENDERERS), default="html")
    p.add_argument("--out", type=Path, default=None, help="write to FILE instead of stdout")
    p.set_defaults(func=cmd_report)

