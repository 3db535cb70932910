"""A province's report rows for national entries: its schools against the ministry's orders.

A province keeps its schools' national acks in national_* tables shaped as its own entries,
gateways and acks (gateway/publisher/national_view.py); each school's report section lists
those entries next to the provincial ones, so the province answers for both.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from gateway.cli.report_rows import ACK_COLUMNS, ENTRY_COLUMNS, acks_by_key, issued_in, rows_of
from gateway.compliance.report import EntryRow, Period
from gateway.publisher.db import Database, db_errors

Section = tuple[str, list[EntryRow], dict[str, int], list[Any]]


def read_national(db: sqlite3.Connection | Database, period: Period
                  ) -> dict[str, list[EntryRow]]:
    """school -> its rows for national block entries issued in the period; {} where the
    province tier never ran."""
    try:
        entries = db.execute(
            f"SELECT {ENTRY_COLUMNS} FROM national_entries WHERE action = 'block' "
            "AND type IN ('domain', 'domain-exact')").fetchall()
        acks = acks_by_key(db.execute(f"SELECT {ACK_COLUMNS} FROM national_acks"))
        schools = [str(g) for (g,) in db.execute(
            "SELECT id FROM national_gateways ORDER BY 1")]
    except db_errors():
        return {}
    issued = issued_in(period, entries)
    return {gw: rows_of(gw, issued, acks) for gw in schools}


def with_national(per_gateway: list[Section], national: dict[str, list[EntryRow]]
                  ) -> list[Section]:
    """Each school's section with its national rows added (a school that acked only the
    national feed gets a section of its own)."""
    if not national:
        return per_gateway
    left = dict(national)
    out = [(gw, rows + left.pop(gw, []), probes, stats)
           for gw, rows, probes, stats in per_gateway]
    out.extend((gw, rows, {}, []) for gw, rows in left.items())
    return sorted(out, key=lambda s: s[0])
