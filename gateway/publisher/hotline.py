"""Reports gateways forward to the publisher: POST /v1/reports (gateway token), GET for the
admin. Stored in the publisher's database, deduplicated by report id (gateways deliver at
least once). The JSON contract is docs/hotline.md."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from gateway.feedformat.hotline import KINDS, HotlineReport, ReportError, from_json
from gateway.publisher.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (id TEXT PRIMARY KEY, gateway TEXT NOT NULL,
  kind TEXT NOT NULL, target TEXT NOT NULL, category TEXT NOT NULL, entry_id TEXT NOT NULL,
  comment TEXT NOT NULL, contact TEXT NOT NULL, created_at TEXT NOT NULL,
  received_at REAL NOT NULL);
"""
MAX_REPORT = 16 * 1024
LIST_LIMIT = 1000


class ReportInbox:
    """The reports table on the publisher's (autocommit) connection, SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.executescript(SCHEMA)

    def add(self, report: HotlineReport, now: float) -> bool:
        """True if new; a repeated id is a no-op (at-least-once delivery)."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO reports VALUES (?,?,?,?,?,?,?,?,?,?)",
            (report.id, report.gateway, report.kind, report.target, report.category,
             report.entry_id, report.comment, report.contact, report.created_at, now))
        return bool(cur.rowcount)

    def list(self, since: float = 0.0, limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, kind, target, category, entry_id, comment, contact, created_at, "
            "gateway, received_at FROM reports WHERE received_at>=? "
            "ORDER BY received_at, id LIMIT ?", (since, limit)).fetchall()
        keys = ("id", "kind", "target", "category", "entry_id", "comment", "contact",
                "created_at", "gateway", "received_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]


INBOX = web.AppKey("report_inbox", ReportInbox)
RECEIVED = web.AppKey("report_counter", Counter)
GatewayAuth = Callable[[web.Request], "str | web.Response"]
AdminAuth = Callable[[web.Request], "web.Response | None"]


def add_routes(app: web.Application, inbox: ReportInbox, registry: CollectorRegistry,
               gateway_of: GatewayAuth, require_admin: AdminAuth) -> None:
    """Mount the two routes; authentication is the publisher's own (passed in)."""
    app[INBOX] = inbox
    app[RECEIVED] = Counter("safegate_publisher_reports_received_total",
                            "Reports received from gateways (repeats not counted), by kind",
                            ["kind"], registry=registry)
    for kind in KINDS:   # at 0 from the start, so rate() sees the first report
        app[RECEIVED].labels(kind)

    async def post_report(request: web.Request) -> web.Response:
        gateway = gateway_of(request)
        if isinstance(gateway, web.Response):
            return gateway
        body = await request.content.read(MAX_REPORT + 1)
        if len(body) > MAX_REPORT:
            return web.json_response({"error": f"a report is at most {MAX_REPORT} bytes"},
                                     status=413)
        try:
            report = from_json(json.loads(body))
        except (ValueError, ReportError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if report.gateway != gateway:
            return web.json_response({"error": f"this token belongs to gateway {gateway!r}, "
                                               f"not {report.gateway!r}"}, status=403)
        new = request.app[INBOX].add(report, time.time())
        if new:
            request.app[RECEIVED].labels(report.kind).inc()
        return web.json_response({"ok": True, "id": report.id, "duplicate": not new})

    async def get_reports(request: web.Request) -> web.Response:
        denied = require_admin(request)
        if denied is not None:
            return denied
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            return web.json_response({"error": "since: a unix time"}, status=400)
        return web.json_response({"reports": request.app[INBOX].list(since)})

    app.router.add_post("/v1/reports", post_report)
    app.router.add_get("/v1/reports", get_reports)
