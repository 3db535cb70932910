"""A province's own record of its schools' national acks (docs/national-layout.md).

The ministry owns national compliance, but a provincial department answers for its schools
too: it must see which of them applied each national order without asking the ministry. The
province already checks every national ack before forwarding it; here it also keeps it, in
tables shaped as the publisher's own (entries, gateways, acks) under a `national_` prefix, so
`safegate report` and the province's /metrics read them as they read the provincial ones.

The national entries come from the mirrored documents: a diff adds and removes entries; a
snapshot only marks removed what it no longer lists, and is parsed only when it lists ids
not recorded yet (the first start, a missed diff). Removed entries keep their row, as at a
publisher, so a report for an earlier period still shows them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.feedformat.document import FeedEntry, FeedError, parse_feed
from gateway.publisher.db import Database
from gateway.publisher.metrics import entry_deadline
from gateway.publisher.mirror import NationalDoc
from gateway.publisher.store import Ack

SCHEMA = """
CREATE TABLE IF NOT EXISTS national_entries (id TEXT PRIMARY KEY, type TEXT NOT NULL,
  value TEXT NOT NULL, categories TEXT NOT NULL, action TEXT NOT NULL,
  mandatory INTEGER NOT NULL, authority TEXT, decision TEXT, decision_date TEXT,
  issued_at TEXT NOT NULL, deadline TEXT, removed_at TEXT);
CREATE TABLE IF NOT EXISTS national_gateways (id TEXT PRIMARY KEY,
  applied_serial INTEGER NOT NULL DEFAULT 0, last_ack REAL);
CREATE TABLE IF NOT EXISTS national_acks (gateway TEXT NOT NULL, entry_id TEXT NOT NULL,
  received_at REAL, applied_at REAL, verified_at REAL, outcome TEXT NOT NULL,
  PRIMARY KEY (gateway, entry_id));
"""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class NationalView:
    """The national_* tables in the province's publisher database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.executescript(SCHEMA)
        self._live = {str(r[0]) for r in db.execute(
            "SELECT id FROM national_entries WHERE removed_at IS NULL")}

    # ------------------------------------------------------------------ national entries

    def installed(self, doc: NationalDoc) -> None:
        """The mirror put `doc` in force: record its entries and removals."""
        if doc.since is not None:
            feed = parse_feed(doc.body)
            self._add(feed.entries)
            self._remove(set(feed.removed) & self._live, feed.generated_at)
            return
        self._remove(self._live - doc.ids, _iso(doc.signed_at))
        if doc.ids - self._live:
            try:
                feed = parse_feed(doc.body)
            except FeedError:           # verified before it was kept: cannot happen
                return
            self._add([e for e in feed.entries if e.id not in self._live])

    def _add(self, entries: Iterable[FeedEntry]) -> None:
        rows = []
        for e in entries:
            lb = e.legal_basis
            rows.append((e.id, e.type, e.value, json.dumps(list(e.categories)), e.action,
                         int(e.mandatory), lb.authority if lb else None,
                         lb.decision if lb else None, lb.date if lb else None, e.issued_at,
                         e.deadline))
        if not rows:
            return
        with self.db.write() as db:
            # A reused (removed) id: the new entry replaces the old row.
            db.executemany("DELETE FROM national_entries WHERE id=?", [(r[0],) for r in rows])
            db.executemany(
                "INSERT INTO national_entries (id, type, value, categories, action, mandatory, "
                "authority, decision, decision_date, issued_at, deadline, removed_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL)", rows)
        self._live |= {r[0] for r in rows}

    def _remove(self, ids: set[str], removed_at: str) -> None:
        if not ids:
            return
        self.db.executemany("UPDATE national_entries SET removed_at=? WHERE id=? AND "
                            "removed_at IS NULL", [(removed_at, i) for i in sorted(ids)])
        self._live -= ids

    # ------------------------------------------------------------------ school acks

    def record(self, ack: Ack, now: float) -> None:
        """A school's national ack, as the publisher records its own (idempotent: a time once
        recorded stays, the latest outcome wins); stats stay out (they go to the ministry)."""
        with self.db.write() as db:
            db.execute("INSERT INTO national_gateways (id, applied_serial, last_ack) "
                       "VALUES (?,?,?) ON CONFLICT (id) DO UPDATE SET applied_serial="
                       "max(national_gateways.applied_serial, excluded.applied_serial), "
                       "last_ack=excluded.last_ack", (ack.gateway, ack.serial, now))
            db.executemany(
                "INSERT INTO national_acks (gateway, entry_id, received_at, applied_at, "
                "verified_at, outcome) VALUES (?,?,?,?,?,?) ON CONFLICT (gateway, entry_id) "
                "DO UPDATE SET "
                "received_at=coalesce(national_acks.received_at, excluded.received_at), "
                "applied_at=coalesce(national_acks.applied_at, excluded.applied_at), "
                "verified_at=coalesce(national_acks.verified_at, excluded.verified_at), "
                "outcome=excluded.outcome",
                [(ack.gateway, e.entry_id, e.received_at, e.applied_at, e.verified_at,
                  e.outcome) for e in ack.entries])

    def applied_serials(self) -> dict[str, int]:
        return {str(g): int(s) for g, s in self.db.execute(
            "SELECT id, applied_serial FROM national_gateways")}

    def compliance(self, gateways: list[str], now: float, default_hours: float
                   ) -> tuple[dict[str, int], dict[str, int]]:
        """Per school: live mandatory national block entries it verified, and those past
        their deadline it has not verified."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT id, issued_at, deadline FROM national_entries WHERE removed_at IS NULL "
                "AND mandatory=1 AND action='block'").fetchall()
            verified: dict[str, set[str]] = {}
            for gw, eid in db.execute("SELECT gateway, entry_id FROM national_acks "
                                      "WHERE verified_at IS NOT NULL"):
                verified.setdefault(str(gw), set()).add(str(eid))
        due = []
        live = set()
        for eid, issued_at, deadline in rows:
            live.add(str(eid))
            entry = FeedEntry(str(eid), "domain", "", (), "block", True, None, str(issued_at),
                              None if deadline is None else str(deadline))
            if entry_deadline(entry, default_hours) <= now:
                due.append(str(eid))
        done = {gw: len(verified.get(gw, set()) & live) for gw in gateways}
        overdue = {gw: sum(1 for e in due if e not in verified.get(gw, set()))
                   for gw in gateways}
        return done, overdue


class NationalViewCollector(Collector):
    """The province's schools against the national feed, one series per school gateway
    (the province's own gateways: bounded by its token list and enrollment)."""

    def __init__(self, view: NationalView, gateways: Callable[[], list[str]],
                 overdue_after_hours: float, clock: Callable[[], float] = time.time) -> None:
        self.view = view
        self.gateways = gateways
        self.overdue_after_hours = overdue_after_hours
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        gateways = sorted(self.gateways())
        serials = self.view.applied_serials()
        verified, overdue = self.view.compliance(gateways, self.clock(),
                                                 self.overdue_after_hours)
        for name, text, values in (
                ("safegate_publisher_national_gateway_applied_serial",
                 "National feed serial each school acked through this province (0: never).",
                 serials),
                ("safegate_publisher_national_gateway_verified_entries",
                 "Live mandatory national entries each school verified.", verified),
                ("safegate_publisher_national_gateway_overdue_entries",
                 "Live mandatory national entries past their deadline a school has not "
                 "verified.", overdue)):
            g = GaugeMetricFamily(name, text, labels=["gateway"])
            for gw in gateways:
                g.add_metric([gw], values.get(gw, 0))
            yield g
