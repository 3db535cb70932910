"""The admin page's pages: status (with the Confirm button of a held feed update), per-tier
statistics, explain, allow/deny and the block page's reports. Each reads the running gateway
through AdminHost; nothing here touches the query path."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.admin import rules
from gateway.admin.i18n import translator
from gateway.admin.site import language, redirect
from gateway.errors import SafeGateError
from gateway.feeds.client import status_of
from gateway.feeds.hold import confirm_held

if TYPE_CHECKING:
    from gateway.admin.site import Admin

REPORTS_SHOWN = 200


def add_routes(app: web.Application, admin: Admin) -> None:
    pages = Pages(admin)
    app.router.add_get("/", pages.status)
    app.router.add_post("/feeds/confirm", pages.confirm)
    app.router.add_get("/stats", pages.stats)
    app.router.add_get("/explain", pages.explain)
    app.router.add_get("/rules", pages.rules)
    app.router.add_post("/rules", pages.change)
    app.router.add_get("/reports", pages.reports)


class Pages:
    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.host = admin.host
        self._changing = asyncio.Lock()

    async def status(self, request: web.Request, message: str = "",
                     status_code: int = 200) -> web.Response:
        config = self.host.config()
        status = self.host.status()
        feeds = [status_of(config.state_dir, f.name) for f in config.feeds]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.last_reload_at))
        return self.admin.render(request, "status.html", status=status_code, st=status,
                                 feeds=feeds, reload_time=when, message=message)

    async def confirm(self, request: web.Request) -> web.Response:
        """What `safegate feeds confirm` does: the feed manager applies it within a second."""
        form = await request.post()
        feed = str(form.get("feed", ""))
        t = translator(language(request))
        config = self.host.config()
        if feed not in {f.name for f in config.feeds}:
            return await self.status(request, f"no feed named {feed!r}", 400)
        try:
            held = confirm_held(config.state_dir, feed)
        except SafeGateError as exc:
            return await self.status(request, str(exc), 409)
        rules.audit(config.state_dir, {"action": "confirm", "feed": feed, "update": held["id"]})
        return await self.status(request, t("confirmed", id=held["id"], feed=feed))

    async def stats(self, request: web.Request) -> web.Response:
        status = self.host.status()
        policy = self.host.policy()
        tiers = []
        for name in policy.tiers:
            counts = status.tier_counts.get(name, {})
            tiers.append({
                "name": name,
                "networks": [n.name for n in policy.networks if n.tier == name],
                "queries": sum(counts.values()),
                "blocked": counts.get("blocked", 0),
                "categories": status.blocked_by_category.get(name, {}),
            })
        top = self.host.top_blocked()
        by_category = self.host.blocked_by_category()
        tier_of = {n.name: n.tier for n in policy.networks}
        networks = [{"name": name, "tier": tier_of.get(name, ""), "top": names,
                     "categories": by_category.get(name, {}),
                     "blocked": sum(by_category.get(name, {}).values())}
                    for name, names in sorted(top.items())]
        return self.admin.render(request, "stats.html", tiers=tiers, networks=networks)

    async def explain(self, request: web.Request) -> web.Response:
        client = request.query.get("client", "").strip()[:64]
        name = request.query.get("name", "").strip()[:300]
        result, message = None, ""
        if client and name:
            result = self.host.explain(client, name)
            if result is None:
                message = translator(language(request))("bad_input")
        return self.admin.render(request, "explain.html", client=client, name=name,
                                 result=result, message=message, message_kind="bad")

    async def rules(self, request: web.Request, *, error: str = "", message: str = "",
                    name: str = "", target: str = "", status_code: int = 200) -> web.Response:
        config = self.host.config()
        assert config.admin is not None
        policy = self.host.policy()
        try:
            local: dict[str, Any] = rules.read_local(config.admin.local_policy)
        except rules.RuleError as exc:
            local, error = {}, error or str(exc)
        if request.query.get("saved") and not error:
            message = translator(language(request))("saved")
        return self.admin.render(
            request, "rules.html", status=status_code, path=config.admin.local_policy,
            error=error, message=message, name=name, target=target, local=local,
            networks=[n.name for n in policy.networks], tiers=list(policy.tiers),
            audit=rules.read_audit(config.state_dir))

    async def change(self, request: web.Request) -> web.Response:
        """Check, write, log, reload: the page answers once the change is in force."""
        form = await request.post()
        name = str(form.get("name", ""))[:300]
        target = str(form.get("target", ""))
        action = str(form.get("action", ""))
        kind, _, which = target.partition(":")
        t = translator(language(request))
        policy = self.host.policy()
        known = {"networks": {n.name for n in policy.networks}, "tiers": set(policy.tiers)}
        if which not in known.get(kind, set()) or action not in rules.ACTIONS:
            return await self.rules(request, error=f"unknown target {target!r} or action "
                                    f"{action!r}", name=name, status_code=400)
        # One change at a time (read, check, write, reload); the policy check runs in a
        # thread so a large policy never holds up DNS.
        async with self._changing:
            config = self.host.config()
            assert config.admin is not None
            try:
                before = await asyncio.to_thread(rules.change, config, self.host.categories(),
                                                 kind, which, action, name)
            except rules.RuleError as exc:
                self.admin.metrics.changes.labels("refused").inc()
                return await self.rules(request, error=f"{t('refused')}\n{exc}", name=name,
                                        target=target, status_code=422)
            ok, errors = await self.host.reload("admin page: allow/deny")
            if not ok:
                # Something else the reload read is broken: put local.yaml back as it was, so
                # the file and the running policy agree.
                rules.restore(config.admin.local_policy, before)
                self.admin.metrics.changes.labels("refused").inc()
                return await self.rules(request, error=f"{t('refused')}\n{errors}", name=name,
                                        target=target, status_code=422)
        self.admin.metrics.changes.labels("applied").inc()
        rules.audit(config.state_dir, {"action": action, kind.rstrip("s"): which,
                                       "name": name.strip().lower().rstrip(".")})
        return redirect("/rules?saved=1")

    async def reports(self, request: web.Request) -> web.Response:
        from gateway.hotline.store import FILENAME, ReportStore

        path = self.host.config().state_dir / FILENAME
        shown: list[Any] = []
        if path.exists():
            store = ReportStore(path, readonly=True)
            try:
                shown = store.reports(REPORTS_SHOWN)
            finally:
                store.close()
        return self.admin.render(request, "reports.html", reports=shown)
