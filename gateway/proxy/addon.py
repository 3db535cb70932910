"""SafeGate's mitmproxy addon: the shell between mitmproxy's hooks and the pure rules.

Per connection: a client in no network is refused (fail closed); TLS is decrypted only when
Rules.intercepts says so, everything else passes through untouched; every server address is
resolved through dns.upstreams. Per request in a decrypted (or plain HTTP) connection:
Rules.decide -> block page (451/403), restricted-mode header/query, or allowed. Image responses
of decrypted connections are hash-checked. mitmproxy's `ctx` is never read here: what the
addon needs is passed in.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from mitmproxy import connection, http, tls
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.mode_specs import ReverseMode

from gateway.proxy.metrics import ProxyMetrics
from gateway.proxy.page import PLACEHOLDER_GIF, BlockPages
from gateway.proxy.resolve import ResolveError, UpstreamResolver
from gateway.proxy.rules import REPLACED, Rules, UrlVerdict
from gateway.proxy.scan import Scanner, is_image

if TYPE_CHECKING:
    from gateway.proxy.hashes import HashIndex, HashMatch

log = logging.getLogger(__name__)

NOT_IN_NETWORK = "client address is in no configured network"


class SafeGateAddon:
    """Holds the rules in force; `swap` replaces them whole (build aside, swap)."""

    def __init__(self, rules: Rules, resolver: UpstreamResolver, metrics: ProxyMetrics,
                 pages: BlockPages, origin_ports: Mapping[str, int], max_image_bytes: int,
                 on_match: Callable[[str, HashMatch], None] | None = None,
                 hash_index: HashIndex | None = None) -> None:
        self.rules = rules
        self.resolver = resolver
        self.metrics = metrics
        self.pages = pages
        self.origin_ports = dict(origin_ports)
        self.max_image_bytes = max_image_bytes
        self.on_match = on_match
        self.hash_index = hash_index
        self.scanner = Scanner(metrics.hash_seconds.observe)

    def swap(self, rules: Rules, hash_index: HashIndex | None) -> None:
        self.rules = rules
        self.hash_index = hash_index

    # ------------------------------------------------------------------ connections

    def client_connected(self, client: connection.Client) -> None:
        if self.rules.tier_of(client.peername[0]) is None:
            client.error = NOT_IN_NETWORK

    async def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Steered connections learn their destination from the SNI; the name is resolved
        here (upstream), so the server address is an IP from the start and mitmproxy reuses
        its server connections; then intercept or pass through."""
        context = data.context
        sni = (data.client_hello.sni or "").lower().rstrip(".")
        if isinstance(context.client.proxy_mode, ReverseMode):
            port = self.origin_ports["https"]
        elif context.server.address is not None:
            port = context.server.address[1]
        else:
            port = 0
        host = sni or (context.server.address[0] if context.server.address else "")
        try:
            context.server.address = (await self.resolver.address(host), port) if host else None
        except ResolveError as exc:
            log.info("no address for %s: %s", host, exc)
            context.server.address = None      # nowhere to go: the connection ends
        if context.server.address is None:
            data.ignore_connection = True
            return
        context.server.sni = host
        rules = self.rules
        if rules.intercepts(host, rules.tier_of(context.client.peername[0])):
            self.metrics.connections.labels("intercepted").inc()
        else:
            data.ignore_connection = True
            self.metrics.connections.labels("passthrough").inc()

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Safety net: a name still unresolved here goes upstream too, never to the system
        resolver (which may be SafeGate, answering the proxy's own address)."""
        if data.server.address is None:
            return
        host, port = data.server.address[0], data.server.address[1]
        try:
            data.server.address = (await self.resolver.address(host), port)
        except ResolveError as exc:
            data.server.error = str(exc)

    # ------------------------------------------------------------------ requests

    async def request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        mode = flow.client_conn.proxy_mode
        host = req.pretty_host
        if isinstance(mode, ReverseMode) and mode.scheme == "http":
            # Steered plain HTTP: the Host header names the destination (and is kept as sent).
            req.data.host = host
            req.data.port = self.origin_ports["http"]
        tier = self.rules.tier_of(flow.client_conn.peername[0])
        if tier is None:
            flow.response = http.Response.make(403, NOT_IN_NETWORK + "\n")
            return
        port = _port_of(req.host_header, req.port)
        verdict = self.rules.decide(tier, host, port, req.path)
        self.metrics.requests.labels(verdict.action).inc()
        if verdict.entry is not None:
            status, headers, body = self.pages.render(verdict, _target(flow), tier.name,
                                                      req.headers, flow.client_conn.peername[0])
            flow.response = http.Response.make(status, body, headers)
            return
        _restrict(req, verdict)
        await self._resolve_request(flow)

    async def _resolve_request(self, flow: http.HTTPFlow) -> None:
        """Plain HTTP names a host per request: resolve it here so that the server address
        is an IP and keep-alive server connections are reused (mitmproxy matches them by
        address; it allows only a few per client to one address)."""
        req = flow.request
        try:
            ipaddress.ip_address(req.host.strip("[]"))
            return
        except ValueError:
            pass
        try:
            req.data.host = await self.resolver.address(req.host)
        except ResolveError as exc:
            flow.response = http.Response.make(502, f"SafeGate: {exc}\n",
                                               {"Content-Type": "text/plain"})

    async def response(self, flow: http.HTTPFlow) -> None:
        """Hash-check images of decrypted connections (plain HTTP is always visible)."""
        index, resp = self.hash_index, flow.response
        if index is None or resp is None:
            return
        content_type = resp.headers.get("content-type", "")
        if not is_image(content_type):
            return
        data = resp.raw_content
        if data is None or not 0 < len(data) <= self.max_image_bytes:
            return
        try:
            data = resp.content or b""
        except ValueError:  # undecodable content-encoding: not an image we can read
            return
        found = await self.scanner.check(index, data, content_type)
        if found is None:
            return
        resp.headers.pop("content-encoding", None)
        resp.content = PLACEHOLDER_GIF
        resp.headers["content-type"] = "image/gif"
        resp.headers["cache-control"] = "no-store"
        self.metrics.hash_matches.labels(found.type).inc()
        self.metrics.requests.labels(REPLACED).inc()
        if self.on_match is not None:
            self.on_match(_target(flow), found)


def _restrict(req: http.Request, verdict: UrlVerdict) -> None:
    """Restricted modes: headers the service honours, query parameters it honours."""
    for name, value in verdict.headers:
        req.headers[name] = value
    for name, value in verdict.query:
        req.query[name] = value


def _port_of(host_header: str | None, port: int) -> int | None:
    """The port the client named (Host header), else the connection's."""
    if host_header and not host_header.endswith("]") and ":" in host_header:
        tail = host_header.rsplit(":", 1)[1]
        if tail.isdigit():
            return int(tail)
    return port if host_header is None else None


def _target(flow: http.HTTPFlow) -> str:
    """The URL as the user asked for it (scheme, Host header, path with query)."""
    req = flow.request
    scheme = "https" if flow.client_conn.tls_established else req.scheme
    return f"{scheme}://{req.host_header or req.pretty_host}{req.path}"
