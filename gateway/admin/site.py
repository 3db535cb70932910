"""The admin page's shared part: login and logout, the session and CSRF checks every other
route relies on, rendering and the security headers. The pages are in pages.py, the
application is put together in app.py.

Every route but /login and /static/ needs a session cookie; every POST needs the session's
CSRF token in its form (403 otherwise). No JavaScript: plain forms, works on a phone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.admin.auth import (
    Lockout,
    Session,
    Sessions,
    csrf_ok,
    read_password_file,
    verify_password,
)
from gateway.admin.host import AdminHost
from gateway.admin.i18n import pick, translator
from gateway.config.limits import AdminLimits

log = logging.getLogger(__name__)

COOKIE = "safegate_admin"
LOGIN_RESULTS = ("ok", "wrong", "locked", "no_password")
TEMPLATES = Path(__file__).parent / "templates"
CSS = """body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa;
overflow-wrap:anywhere}
header{background:#1d4e89;color:#fff;padding:.5em 1em;display:flex;flex-wrap:wrap;gap:.5em 1em;
align-items:center}header a{color:#fff}nav{display:flex;flex-wrap:wrap;gap:.3em 1em}
nav a[aria-current]{font-weight:bold;text-decoration:none}main{padding:1em;max-width:60em}
table{border-collapse:collapse;margin:.5em 0;max-width:100%;display:block;overflow-x:auto}
td,th{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left}.n{text-align:right}
.ok{color:#176b2c}.bad{color:#a4161a}.small{font-size:.9em;color:#555}form.inline{display:inline}
label{display:block;margin:.4em 0}input,select,button{font-size:1em;padding:.3em;max-width:100%}
.message{padding:.5em;background:#eef}pre{white-space:pre-wrap}.langs{margin-left:auto}"""
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminMetrics:
    def __init__(self, registry: CollectorRegistry, sessions: Sessions, lockout: Lockout
                 ) -> None:
        self.logins = Counter("safegate_admin_logins", "Admin page logins, by result "
                              "(ok, wrong password, refused while locked, no password set).",
                              ["result"], registry=registry)
        for result in LOGIN_RESULTS:
            self.logins.labels(result)
        sessions_g = Gauge("safegate_admin_sessions", "Admin page sessions held "
                           "(limits.admin.sessions).", registry=registry)
        sessions_g.set_function(lambda: len(sessions))
        locked = Gauge("safegate_admin_lockout_addresses", "Addresses with failed admin "
                       "logins remembered (limits.admin.lockout_table).", registry=registry)
        locked.set_function(lambda: len(lockout))
        self.changes = Counter("safegate_admin_rule_changes", "Allow/deny changes from the "
                               "admin page, by result (applied, refused by the checks).",
                               ["result"], registry=registry)
        for result in ("applied", "refused"):
            self.changes.labels(result)


class Admin:
    """State shared by the routes: the host, sessions, lockout, templates, metrics."""

    def __init__(self, host: AdminHost, limits: AdminLimits, registry: CollectorRegistry,
                 clock: Callable[[], float] | None = None) -> None:
        self.host = host
        self.limits = limits
        self.sessions = Sessions(limits, clock) if clock else Sessions(limits)
        self.lockout = Lockout(limits, clock) if clock else Lockout(limits)
        self.metrics = AdminMetrics(registry, self.sessions, self.lockout)
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                      autoescape=True, undefined=jinja2.StrictUndefined)
        self._verify = asyncio.Lock()   # one scrypt at a time: a login flood costs one core

    def render(self, request: web.Request, template: str, *, status: int = 200,
               **context: Any) -> web.Response:
        lang = language(request)
        page = self.env.get_template(template).render(
            lang=lang, t=translator(lang), session=request.get(SESSION_KEY),
            message=context.pop("message", ""), message_kind=context.pop("message_kind", ""),
            page=template.removesuffix(".html"), **context)
        response = web.Response(text=page, status=status, content_type="text/html")
        if request.query.get("lang") in ("vi", "en"):
            response.set_cookie("lang", request.query["lang"], httponly=True, samesite="Strict",
                                max_age=365 * 86400)
        return response

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Session for everything but the login page; CSRF token for every POST."""
        if request.path == "/login" or request.path.startswith("/static/"):
            response = await handler(request)
        else:
            session = self.sessions.get(request.cookies.get(COOKIE))
            if session is None:
                if request.method == "POST":
                    response = self.render(request, "error.html", status=403, status_code=403,
                                           message=translator(language(request))("csrf"))
                else:
                    response = redirect("/login")
            else:
                request[SESSION_KEY] = session
                response = await self._checked(request, handler, session)
        response.headers.update(_HEADERS)
        return response

    async def _checked(self, request: web.Request, handler: Handler, session: Session
                       ) -> web.StreamResponse:
        if request.method == "POST":
            form = await request.post()
            if not csrf_ok(session, form.get("csrf")):
                return self.render(request, "error.html", status=403, status_code=403,
                                   message=translator(language(request))("csrf"))
        return await handler(request)

    async def login_page(self, request: web.Request) -> web.Response:
        return self.render(request, "login.html")

    async def login(self, request: web.Request) -> web.StreamResponse:
        address = request.remote or ""
        t = translator(language(request))
        stored = read_password_file(self._password_file())
        if stored is None:
            self.metrics.logins.labels("no_password").inc()
            return self.render(request, "login.html", status=503, message_kind="bad",
                               message=t("no_password"))
        form = await request.post()
        password = form.get("password")
        async with self._verify:
            # Checked under the lock: guesses sent all at once wait here, and the ones after
            # the fifth failure find the address locked instead of being tried.
            locked = self.lockout.locked(address)
            ok = not locked and isinstance(password, str) and await asyncio.to_thread(
                verify_password, password, stored)
        if locked:
            self.metrics.logins.labels("locked").inc()
            minutes = max(1, round(self.limits.lockout_seconds / 60))
            return self.render(request, "login.html", status=429, message_kind="bad",
                               message=t("locked", minutes=minutes))
        if not ok:
            self.lockout.failed(address)
            self.metrics.logins.labels("wrong").inc()
            log.warning("admin page: wrong password from %s", address)
            return self.render(request, "login.html", status=401, message_kind="bad",
                               message=t("wrong_password"))
        self.lockout.succeeded(address)
        self.metrics.logins.labels("ok").inc()
        token, _ = self.sessions.create()
        response = redirect("/")
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict",
                            secure=request.secure, path="/",
                            max_age=int(self.limits.session_lifetime))
        log.info("admin page: login from %s", address)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.end(request.cookies.get(COOKIE))
        response = redirect("/login")
        response.del_cookie(COOKIE, path="/")
        return response

    async def css(self, request: web.Request) -> web.Response:
        return web.Response(text=CSS, content_type="text/css")

    def _password_file(self) -> Path:
        admin = self.host.config().admin
        assert admin is not None
        return admin.password_file


SESSION_KEY = "safegate_admin_session"


def language(request: web.Request) -> str:
    return pick(request.query.get("lang"), request.cookies.get("lang"),
                request.headers.get("Accept-Language", ""))


def redirect(location: str) -> web.Response:
    """303 See Other: after a POST the browser GETs the next page."""
    return web.Response(status=303, headers={"Location": location})
