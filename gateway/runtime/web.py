"""The web listener: the block page (any Host), POST /report and the proxy CA onboarding page
/ca. (/metrics, /healthz and /readyz are gateway/http/health.py, shared with the proxy.)"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from aiohttp import web

from gateway.blockpage.ca_page import render_ca_page
from gateway.blockpage.frame import page, security_headers
from gateway.blockpage.model import BlockInfo, choose_lang, not_blocked
from gateway.blockpage.page import render_block
from gateway.blockpage.report_pages import render_report_form, render_report_result
from gateway.hotline.desk import ReportDesk


def _unexplained() -> Callable[[str, str], BlockInfo | None]:
    return lambda client, host: None


@dataclass(frozen=True)
class Site:
    """What the web listener's pages need from the running gateway (read per request, so a
    reload's changes apply at once)."""

    # (client address, host) -> why the host is blocked for that client, or None
    explain: Callable[[str, str], BlockInfo | None] = field(default_factory=_unexplained)
    client_address: Callable[[web.Request], str] = lambda request: request.remote or ""
    report_url: Callable[[], str] = lambda: "/report"
    timezone: Callable[[], str] = lambda: "Asia/Ho_Chi_Minh"
    ca_dir: Callable[[], Path | None] = lambda: None
    desk: ReportDesk | None = None          # None: reports are not accepted (404)
    clock: Callable[[], float] = time.time


SITE = web.AppKey("site", Site)
MAX_FORM = 16 * 1024


def blockpage_app(*mounts: Callable[[web.Application], None],
                  site: Site | None = None) -> web.Application:
    """The web listener: blocked names' A/AAAA answers lead browsers here.

    `mounts` add their routes first (DoH's /dns-query); /report and /ca next; the block page
    catches every other path, whatever the Host.
    """
    app = web.Application(client_max_size=MAX_FORM)
    app[SITE] = site or Site()
    app.on_response_prepare.append(_secure)
    for mount in mounts:
        mount(app)
    app.router.add_get("/report", _report_form)
    app.router.add_post("/report", _report)
    app.router.add_get("/ca", _ca_page)
    app.router.add_get("/ca/{name}", _ca_file)
    app.router.add_route("*", "/{tail:.*}", _blockpage)
    return app


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer of the web listener carries the security headers (the pages set them
    already; this covers /ca, the home page, proxy.pac, DoH and aiohttp's own errors)."""
    headers = response.headers
    for name, value in security_headers(request.app[SITE].report_url()).items():
        headers.setdefault(name, value)


def _now(site: Site) -> datetime:
    try:
        zone = ZoneInfo(site.timezone())
    except (ValueError, KeyError):
        zone = ZoneInfo("Asia/Ho_Chi_Minh")
    return datetime.fromtimestamp(site.clock(), zone)


def _host(request: web.Request) -> str:
    """The Host header without its port (IPv6 literals keep their brackets)."""
    host = request.host or ""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _response(status: int, headers: dict[str, str], body: bytes) -> web.Response:
    return web.Response(status=status, headers=headers, body=body)


async def _blockpage(request: web.Request) -> web.Response:
    site = request.app[SITE]
    host = _host(request)
    lang = request.query.get("lang")
    if _is_ip(host) and request.path == "/" and request.method == "GET":
        return _response(*_home(site, request, lang))
    info = site.explain(site.client_address(request), host.lower().rstrip(".")) if host else None
    if info is None:
        # A stale answer in the browser's cache, or a name unblocked since: say so, still 403.
        info = not_blocked(host)
    csrf = (site.desk.tokens.issue(site.client_address(request), site.clock())
            if site.desk is not None else "")
    target = host if request.path in ("", "/") else f"{host}{request.path}"
    info = BlockInfo(target, info.category, info.reason, info.legal, info.authority,
                     info.decision, info.decision_date, info.entry_id, info.tier)
    status, headers, body = render_block(info, request.headers, now=_now(site),
                                         report_url=site.report_url(), lang=lang, csrf=csrf)
    if request.method == "HEAD":
        body = b""
    return _response(status, headers, body)


def _home(site: Site, request: web.Request, lang: str | None
          ) -> tuple[int, dict[str, str], bytes]:
    """The gateway's own address: what it is, and where the CA page is."""
    chosen = choose_lang(request.headers, lang)
    text = {"vi": ("SafeGate: cổng lọc nội dung bảo vệ trẻ em.",
                   "Cài chứng chỉ của bộ lọc HTTPS"),
            "en": ("SafeGate: a content-filtering gateway that protects children.",
                   "Install the HTTPS filter's certificate")}[chosen]
    body = f"<p>{text[0]}</p>\n<p><a href=\"/ca?lang={chosen}\">{text[1]}</a></p>"
    return 200, {"Cache-Control": "no-store", "Content-Type": "text/html; charset=utf-8"}, \
        page(chosen, "SafeGate", body).encode("utf-8")


async def _report(request: web.Request) -> web.Response:
    site = request.app[SITE]
    if site.desk is None:
        raise web.HTTPNotFound(text="reports are not accepted here\n")
    try:
        posted = await request.post()
    except ValueError:
        return web.Response(status=400, text="field: the form could not be read\n")
    form = {k: v for k, v in posted.items() if isinstance(v, str)}
    outcome = site.desk.submit(form, site.client_address(request), site.clock())
    status, headers, body = render_report_result(
        outcome.status, form, request.headers, report_url=site.report_url(),
        report_id=outcome.report.id if outcome.report else "", error=outcome.error)
    return _response(status, headers, body)


async def _report_form(request: web.Request) -> web.Response:
    """An empty report form with a token for this client (a refused post links here); on a
    blocked name's Host, /report is just another blocked path."""
    site = request.app[SITE]
    host = _host(request)
    if not _is_ip(host) and host.lower() != (urlsplit(site.report_url()).hostname or ""):
        return await _blockpage(request)
    if site.desk is None:
        raise web.HTTPNotFound(text="reports are not accepted here\n")
    csrf = site.desk.tokens.issue(site.client_address(request), site.clock())
    return _response(*render_report_form(request.headers, report_url=site.report_url(),
                                         csrf=csrf, lang=request.query.get("lang")))


# ------------------------------------------------------------------------ the CA page

# Served name -> (file mitmproxy writes in ca_dir, Content-Type). Only certificates: the key
# files (mitmproxy-ca.pem, mitmproxy-ca.p12) are never reachable from here.
CA_FILES: dict[str, tuple[str, str]] = {
    "safegate-ca.pem": ("mitmproxy-ca-cert.pem", "application/x-pem-file"),
    "safegate-ca.cer": ("mitmproxy-ca-cert.cer", "application/pkix-cert"),
    "safegate-ca.p12": ("mitmproxy-ca-cert.p12", "application/x-pkcs12"),
}


def _ca_path(site: Site, name: str) -> Path | None:
    """The certificate file behind a served name, if it exists and holds no private key."""
    ca_dir = site.ca_dir()
    spec = CA_FILES.get(name)
    if ca_dir is None or spec is None:
        return None
    path = ca_dir / spec[0]
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return None if b"PRIVATE KEY" in data else path


async def _ca_page(request: web.Request) -> web.Response:
    site = request.app[SITE]
    lang = choose_lang(request.headers, request.query.get("lang"))
    available = {name for name in CA_FILES if _ca_path(site, name) is not None}
    status, html = render_ca_page(lang, available)
    return web.Response(status=status, body=html.encode("utf-8"), headers={
        "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"})


async def _ca_file(request: web.Request) -> web.StreamResponse:
    site = request.app[SITE]
    name = request.match_info["name"]
    path = _ca_path(site, name)
    if path is None:
        raise web.HTTPNotFound(text="no such certificate: the HTTPS filter (proxy) is not "
                                    "enabled on this gateway\n")
    return web.Response(body=path.read_bytes(), headers={
        "Content-Type": CA_FILES[name][1], "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="{name}"'})


def gateway_url(host: str, port: int, tls: bool) -> str:
    """The web listener's own absolute URL (report forms post here from any page)."""
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if tls else "http"
    default = 443 if tls else 80
    return f"{scheme}://{host}" + ("" if port == default else f":{port}")
