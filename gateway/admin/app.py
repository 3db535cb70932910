"""The admin page's aiohttp application (routes of site.py and pages.py)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.admin import logpage, pages
from gateway.admin.host import AdminHost
from gateway.admin.site import Admin


def admin_app(host: AdminHost, registry: CollectorRegistry,
              clock: Callable[[], float] | None = None) -> web.Application:
    """The whole admin application; limits are read once (a restart applies new ones)."""
    limits = host.config().limits.admin
    admin = Admin(host, limits, registry, clock)
    app = web.Application(middlewares=[admin.guard], client_max_size=limits.form_bytes)
    app.router.add_get("/login", admin.login_page)
    app.router.add_post("/login", admin.login)
    app.router.add_post("/logout", admin.logout)
    app.router.add_get("/static/admin.css", admin.css)
    pages.add_routes(app, admin)
    logpage.add_routes(app, admin)
    return app
