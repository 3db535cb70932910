"""DNS over HTTPS (RFC 8484) on the web listener: GET ?dns= and POST application/dns-message.

Identity: /dns-query/{token} takes the token's profile (the policy follows a child's phone off
the school network); plain /dns-query uses the client address, like UDP. Behind a reverse proxy
(HTTP/2 termination), X-Forwarded-For is believed only from a peer in dns.trusted_frontends.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
import struct
from collections.abc import Callable

from aiohttp import web

from gateway.dns import wire
from gateway.dns.chain import Resolver
from gateway.dns.wire import RR_FIXED
from gateway.policy.decide import Profile

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/dns-message"
MAX_MESSAGE = 65_535
PATH = "/dns-query"
_B64URL = re.compile(r"[A-Za-z0-9_-]+")

Frontends = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


class DohHandler:
    """The /dns-query routes; the resolver and trusted front ends are read per request."""

    def __init__(self, resolver: Resolver, frontends: Callable[[], Frontends]) -> None:
        self.resolver = resolver
        self.frontends = frontends

    def add_routes(self, app: web.Application) -> None:
        for path in (PATH, PATH + "/{token}"):
            app.router.add_get(path, self.handle)
            app.router.add_post(path, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        profile: Profile | None = None
        token = request.match_info.get("token")
        if token is not None:
            profile = self.resolver.view.tokens.get(token)
            if profile is None:
                return _error(404, "unknown token")
        if request.method == "GET":
            data = _from_get(request)
            if isinstance(data, web.Response):
                return data
        else:
            if request.content_type != CONTENT_TYPE:
                return _error(415, f"Content-Type must be {CONTENT_TYPE}")
            if (request.content_length or 0) > MAX_MESSAGE:
                return _error(413, "a DNS message is at most 65535 bytes")
            body = bytearray()
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > MAX_MESSAGE:
                    return _error(413, "a DNS message is at most 65535 bytes")
            data = bytes(body)
        if len(data) < 12:
            return _error(400, "not a DNS message")
        client = self.client_address(request)
        result = self.resolver.handle(data, client, "doh", profile=profile)
        if result is not None and not isinstance(result, bytes):
            result = await result
        if result is None:
            return _error(400, "not a DNS query")
        # The chain answers with the ID it was sent: 0 by RFC 8484 4.1, echoed either way.
        return web.Response(body=result, content_type=CONTENT_TYPE,
                            headers={"Cache-Control": f"max-age={min_ttl(result)}"})

    def client_address(self, request: web.Request) -> str:
        """The direct peer, or the client a trusted front end names in X-Forwarded-For.

        The list is read right to left, skipping our own front ends: entries left of the first
        untrusted hop were written by the client and prove nothing. An unreadable entry gives
        "" so the query is refused (fail closed), never answered with the front end's profile.
        """
        peer = request.remote or ""
        frontends = self.frontends()
        if not frontends or not _within(peer, frontends):
            return peer
        forwarded = request.headers.getall("X-Forwarded-For", [])
        hops = [h.strip() for line in forwarded for h in line.split(",")]
        address = peer
        for hop in reversed(hops):
            try:
                ip = ipaddress.ip_address(hop.removeprefix("[").partition("]")[0] or hop)
            except ValueError:
                return ""
            address = str(ip)
            if not any(ip in net for net in frontends):
                break
        return address


def _within(address: str, nets: Frontends) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in nets)


def _from_get(request: web.Request) -> bytes | web.Response:
    param = request.query.get("dns")
    if not param:
        return _error(400, "missing the dns parameter")
    # base64url without padding (RFC 8484 4.1); padding is tolerated, other characters are not.
    text = param.rstrip("=")
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        return _error(400, "the dns parameter is not base64url")
    if len(text) * 3 // 4 > MAX_MESSAGE:
        return _error(413, "a DNS message is at most 65535 bytes")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return _error(400, "the dns parameter is not base64url")


def _error(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers={"Cache-Control": "no-store"})


def min_ttl(reply: bytes) -> int:
    """Freshness for HTTP caches (RFC 8484 5.1): the smallest TTL in the answer section, else
    in the authority section (a negative answer's SOA), else 0."""
    try:
        qd, an, ns = struct.unpack_from(">HHH", reply, 4)
        pos = 12
        for _ in range(qd):
            pos = wire.skip_name(reply, pos) + 4
        ttls: list[list[int]] = [[], []]
        for section, count in enumerate((an, ns)):
            for _ in range(count):
                pos = wire.skip_name(reply, pos)
                _, _, ttl, rdlength = RR_FIXED.unpack_from(reply, pos)
                ttls[section].append(ttl & 0x7FFFFFFF)
                pos += RR_FIXED.size + rdlength
    except (struct.error, wire.WireError):
        return 0
    found = ttls[0] or ttls[1]
    return min(found) if found else 0
