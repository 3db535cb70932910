"""A province's report rows for national entries: its schools against the ministry's orders.

A province keeps its schools' national acks in national_* tables shaped as its own entries,
gateways and acks (gateway/publisher/national_view.py); each school's report section lists
those entries next to the provincial ones, so the province answers for both.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from gateway.compliance.report import EntryRow, Period, iso_to_unix
from gateway.publisher.db import Database, db_errors

Section = tuple[str, list[EntryRow], dict[str, int], list[Any]]


def read_national(db: sqlite3.Connection | Database, period: Period
                  ) -> dict[str, list[EntryRow]]:
    """school -> its rows for national block entries issued in the period; {} where the
    province tier never ran."""
    try:
        entries = db.execute(
            "SELECT id, type, value, categories, mandatory, authority, decision, decision_date, "
            "issued_at, deadline, removed_at FROM national_entries WHERE action = 'block' "
            "AND type IN ('domain', 'domain-exact')").fetchall()
        acks: dict[tuple[str, str], tuple[Any, ...]] = {
            (g, e): tuple(rest) for g, e, *rest in db.execute(
                "SELECT gateway, entry_id, received_at, applied_at, verified_at, outcome "
                "FROM national_acks")}
        schools = [str(g) for (g,) in db.execute(
            "SELECT id FROM national_gateways ORDER BY 1")]
    except db_errors():
        return {}
    issued = []
    for (rid, etype, value, cats, mand, auth, dec, ddate, issued_at, deadline,
         removed_at) in entries:
        t = iso_to_unix(issued_at)
        if t is not None and period.contains(t):
            issued.append((rid, etype, value, tuple(json.loads(cats)), bool(mand), auth, dec,
                           ddate, t, iso_to_unix(deadline), iso_to_unix(removed_at)))
    out: dict[str, list[EntryRow]] = {}
    for gw in schools:
        rows = out.setdefault(gw, [])
        for rid, etype, value, cats, mand, auth, dec, ddate, t, deadline, removed in issued:
            received, applied, verified, outcome = acks.get((gw, rid), (None, None, None, ""))
            rows.append(EntryRow(rid, etype, value, cats, mand, auth, dec, ddate, t, deadline,
                                 received, applied, verified, removed, outcome, gw))
    return out


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
