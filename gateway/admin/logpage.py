"""The query log page: search by name substring, verdict, network and time range (times in
the gateway's timezone). Shows at most SHOWN rows, newest first; client addresses only as the
day's salted hash (gateway/querylog/salt.py)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from aiohttp import web

from gateway.querylog.store import VERDICTS

if TYPE_CHECKING:
    from gateway.admin.site import Admin

SHOWN = 500
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
          33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY"}


def add_routes(app: web.Application, admin: Admin) -> None:
    async def page(request: web.Request) -> web.Response:
        return await query_log(admin, request)

    app.router.add_get("/querylog", page)


def _when(text: str, zone: ZoneInfo) -> float | None:
    """A datetime-local field (YYYY-MM-DDTHH:MM) in the gateway's zone; None if empty/bad."""
    try:
        return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp() if text else None
    except ValueError:
        return None


async def query_log(admin: Admin, request: web.Request) -> web.Response:
    config = admin.host.config()
    zone = ZoneInfo(config.timezone)
    q = request.query
    form = {key: q.get(key, "").strip()[:200] for key in ("name", "verdict", "network",
                                                           "from", "to")}
    verdict = form["verdict"] if form["verdict"] in VERDICTS else ""
    logged = [n.name for n in admin.host.policy().networks if n.query_log_hours]
    found = await admin.host.search_log(
        name=form["name"].lower(), verdict=verdict,
        network=form["network"] if form["network"] in logged else "",
        since=_when(form["from"], zone), until=_when(form["to"], zone), limit=SHOWN)
    rows = [{"time": datetime.fromtimestamp(f.t, zone).strftime("%Y-%m-%d %H:%M:%S"),
             "network": f.network, "tier": f.tier, "qname": f.qname,
             "qtype": QTYPES.get(f.qtype, str(f.qtype)), "verdict": f.verdict,
             "category": f.category, "client": f.client} for f in found or []]
    return admin.render(request, "querylog.html", form=form, verdicts=VERDICTS,
                        networks=logged, rows=rows, enabled=found is not None or bool(logged),
                        shown=SHOWN, now=time.time())
