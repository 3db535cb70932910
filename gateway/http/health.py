"""/metrics, /healthz and /readyz: the scrape target of the gateway and of the proxy process."""

from __future__ import annotations

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
