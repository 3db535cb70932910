"""A publisher's block entries joined with one gateway's acks, as report rows.

The same for a publisher's own `entries`/`acks` (report.py) and for a province's
`national_entries`/`national_acks` (report_national.py): both tables have these columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gateway.compliance.report import EntryRow, Period, iso_to_unix

ENTRY_COLUMNS = ("id, type, value, categories, mandatory, authority, decision, decision_date, "
                 "issued_at, deadline, removed_at")
ACK_COLUMNS = "gateway, entry_id, received_at, applied_at, verified_at, outcome"
Issued = tuple[Any, ...]


def issued_in(period: Period, entries: Iterable[Sequence[Any]]) -> list[Issued]:
    """The rows (ENTRY_COLUMNS) issued in `period`, categories decoded and times in Unix
    seconds."""
    issued = []
    for (rid, etype, value, cats, mand, auth, dec, ddate, issued_at, deadline,
         removed_at) in entries:
        t = iso_to_unix(issued_at)
        if t is not None and period.contains(t):
            issued.append((rid, etype, value, tuple(json.loads(cats)), bool(mand), auth, dec,
                           ddate, t, iso_to_unix(deadline), iso_to_unix(removed_at)))
    return issued


def acks_by_key(rows: Iterable[Sequence[Any]]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(gateway, entry id) -> (received_at, applied_at, verified_at, outcome), from rows of
    ACK_COLUMNS."""
    return {(g, e): tuple(rest) for g, e, *rest in rows}


def rows_of(gateway: str, issued: Iterable[Issued],
            acks: Mapping[tuple[str, str], Sequence[Any]]) -> list[EntryRow]:
    """Every issued entry as `gateway` saw it. No ack at all counts as not received: the
    gateway is answerable for what was issued."""
    rows = []
    for rid, etype, value, cats, mand, auth, dec, ddate, t, deadline, removed in issued:
        received, applied, verified, outcome = acks.get((gateway, rid), (None, None, None, ""))
        rows.append(EntryRow(rid, etype, value, cats, mand, auth, dec, ddate, t, deadline,
                             received, applied, verified, removed, outcome, gateway))
    return rows
