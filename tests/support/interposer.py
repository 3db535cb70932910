"""An HTTP hop between two real processes (aiohttp, in its own thread) that can misbehave on
cue: rewrite response bodies while keeping every header (a tampering province or cache), or
refuse POSTs with 503 (an upstream outage for acks only, while feeds still pass)."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from typing import Self

import aiohttp
from aiohttp import web

from tests.support.procs import free_port

_KEEP = ("SafeGate-Signature", "ETag", "Cache-Control", "X-SafeGate-Full", "Retry-After")


class ThreadedApp(ABC):
    """An aiohttp app on a free loopback port, served by its own event loop in a thread so
    that a test's blocking code (and the processes under test) can talk to it."""

    def __init__(self) -> None:
        self.port = free_port(v6=False, udp=False)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @abstractmethod
    def routes(self, app: web.Application) -> None:
        """Add the hop's routes to `app`."""

    async def _start(self) -> None:
        app = web.Application()
        self.routes(app)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def start(self) -> Self:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Interposer(ThreadedApp):
    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.tamper: tuple[bytes, bytes] | None = None   # (old, new) replaced in bodies
        self.refuse_posts = False
        self.tampered = 0
        self.requests = 0
        self.posts = 0               # POSTs passed on to the upstream
        self.refused = 0             # POSTs answered 503 while refuse_posts
        self.last_query = ""

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.last_query = request.query_string
        if request.method == "POST" and self.refuse_posts:
            self.refused += 1
            return web.Response(status=503, text="interposer: refusing POSTs\n")
        headers = {k: v for k, v in request.headers.items()
                   if k in ("If-None-Match", "Cache-Control", "Pragma", "Authorization",
                            "Content-Type")}
        data = await request.read() if request.method == "POST" else None
        self.posts += request.method == "POST"
        async with aiohttp.ClientSession() as session, session.request(
                request.method, self.upstream + request.path_qs, headers=headers,
                data=data, timeout=aiohttp.ClientTimeout(total=90)) as r:
            body = await r.read()
            if self.tamper is not None and self.tamper[0] in body:
                body = body.replace(*self.tamper)
                self.tampered += 1
            keep = {k: v for k, v in r.headers.items() if k in _KEEP}
            return web.Response(status=r.status, body=body or None, headers=keep,
                                content_type=None if r.status == 304 else r.content_type)
