"""HTTP endpoints: /metrics, /healthz, /readyz, and the block page browsers land on."""

from __future__ import annotations

import html
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

READY: web.AppKey[Callable[[], bool]] = web.AppKey("ready")
REGISTRY = web.AppKey("registry", CollectorRegistry)


def metrics_app(registry: CollectorRegistry, ready: Callable[[], bool]) -> web.Application:
    """Prometheus scrape target plus liveness and readiness for load balancers and systemd."""
    app = web.Application()
    app[REGISTRY] = registry
    app[READY] = ready
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[READY]():
        return web.Response(text="ready\n")
    return web.Response(status=503, text="loading policies and lists\n")


_PAGE = """<!doctype html>
<html lang="vi"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Trang bị chặn / Page blocked</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;
color:#222}}h1{{color:#b00020}}.en{{color:#555;border-top:1px solid #ddd;margin-top:2em;
padding-top:1em}}</style></head><body>
<h1>Trang này đã bị chặn</h1>
<p>Truy cập tới <strong>{host}</strong> bị chặn theo chính sách bảo vệ trẻ em của mạng này.</p>
<p>Nếu bạn cần hỗ trợ, hãy liên hệ Tổng đài quốc gia bảo vệ trẻ em <strong>111</strong>.</p>
<div class="en" lang="en"><h2>This page is blocked</h2>
<p>Access to <strong>{host}</strong> is blocked by this network's child-protection policy.</p>
<p>For help, call the national child protection hotline <strong>111</strong>.</p></div>
</body></html>
"""


def blockpage_app(*mounts: Callable[[web.Application], None]) -> web.Application:
    """The page a blocked name's A/AAAA answer leads a browser to (full version: issue 5).

    `mounts` add their routes first (DoH's /dns-query): the block page catches every path.
    """
    app = web.Application()
    for mount in mounts:
        mount(app)
    app.router.add_route("*", "/{tail:.*}", _blockpage)
    return app


async def _blockpage(request: web.Request) -> web.Response:
    host = html.escape(request.host.rsplit(":", 1)[0] if request.host else "", quote=True)
    headers = {"Cache-Control": "no-store"}
    if "text/html" not in request.headers.get("Accept", ""):
        return web.Response(status=403, text=f"blocked by SafeGate: {host}\n", headers=headers)
    return web.Response(status=403, text=_PAGE.format(host=host), content_type="text/html",
                        headers=headers)
