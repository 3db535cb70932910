"""The enrollment HTTP API: /v1/gateways (admin: issue, list, revoke) and /v1/enroll (a code).

Tokens and codes live in gateway/publisher/enroll.py; this module is their HTTP face, its
metrics, and the lookup app.py's gateway authentication falls back to after the static list.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.feedformat.stats import iso
from gateway.publisher.config import PublisherConfig, valid_gateway_id
from gateway.publisher.enroll import (
    ATTEMPT_RESULTS,
    DEFAULT_CODE_HOURS,
    EnrollError,
    FailureLimiter,
    GatewayTokens,
)
from gateway.publisher.store import Store

log = logging.getLogger("safegate.publisher")

MAX_BODY = 4096
_STATUS = {"conflict": 409, "not_found": 404, "invalid": 400, "limit": 422, "unknown": 400,
           "expired": 410, "used": 410}
AdminAuth = Callable[[web.Request], "web.Response | None"]


class EnrollMetrics:
    def __init__(self, registry: CollectorRegistry, tokens: GatewayTokens) -> None:
        self.attempts = Counter("safegate_publisher_enroll_attempts",
                                "Enrollment code exchanges (POST /v1/enroll), by result.",
                                ["result"], registry=registry)
        for result in ATTEMPT_RESULTS:
            self.attempts.labels(result)
        self.revoked = Counter("safegate_publisher_revoked_token_requests",
                               "Requests refused (401) because they bore a revoked token.",
                               registry=registry)
        Gauge("safegate_publisher_enroll_codes_outstanding",
              "Enrollment codes neither used nor expired (limits.enroll_codes).",
              registry=registry).set_function(lambda: float(tokens.outstanding_codes()))


@dataclass(frozen=True)
class Enrollment:
    tokens: GatewayTokens
    limiter: FailureLimiter
    metrics: EnrollMetrics
    static: frozenset[str]


ENROLLMENT = web.AppKey("enrollment", Enrollment)


def enrolled(app: web.Application, token: str) -> str | web.Response | None:
    """The enrolled gateway bearing `token`, a 401 naming a revoked one, or None."""
    state = app[ENROLLMENT]
    found = state.tokens.check(token)
    if found.revoked is not None:
        state.metrics.revoked.inc()
        return web.json_response(
            {"error": f"the token of gateway {found.revoked!r} was revoked by the publisher; "
                      "ask for a new enrollment code (`safegate feeds enroll`)"},
            status=401, headers={"WWW-Authenticate": 'Bearer realm="safegate-publisher", '
                                                     'error="invalid_token"'})
    return found.gateway


def all_gateways(app: web.Application) -> list[str]:
    """Every gateway expected to ack: publisher.yaml's and the enrolled ones."""
    state = app[ENROLLMENT]
    return sorted(state.static | set(state.tokens.active()))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise EnrollError(f"the body is larger than {MAX_BODY} bytes", "invalid")
    try:
        body = json.loads(raw or b"{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise EnrollError(f"the body is not valid JSON: {exc}", "invalid") from None
    if not isinstance(body, dict):
        raise EnrollError("the body must be a JSON object", "invalid")
    return body


def listing(tokens: GatewayTokens, static: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every gateway the publisher knows a credential for (tokens themselves never shown)."""
    out: list[dict[str, Any]] = [{"id": gid, "source": "publisher.yaml", "state": "active"}
                                 for gid in sorted(static)]
    for g in tokens.list():
        out.append({"id": g.gateway, "source": "enrolled", "state": g.state,
                    "created_at": iso(g.created_at), "revoked_at": iso(g.revoked_at),
                    "code_expires_at": iso(g.code_expires_at)})
    return out


def issue(tokens: GatewayTokens, static: Mapping[str, str], gateway: str, code: bool,
          hours: float) -> dict[str, Any]:
    """A token or a code for `gateway` (CLI and API alike); EnrollError when refused."""
    if not valid_gateway_id(gateway):
        raise EnrollError(f"gateway id {gateway!r} must be lowercase letters, digits, '.', "
                          "'_' or '-' (at most 63)", "invalid")
    if code:
        text, expires = tokens.issue_code(gateway, set(static), hours)
        return {"id": gateway, "code": text, "expires_at": iso(expires)}
    return {"id": gateway, "token": tokens.issue(gateway, set(static))}


def add_routes(app: web.Application, store: Store, config: PublisherConfig,
               registry: CollectorRegistry, require_admin: AdminAuth) -> None:
    """Mount the four routes; admin authentication is the publisher's own (passed in)."""
    tokens = GatewayTokens(store.db, config.limits.enroll_codes)
    static = config.gateways
    limiter = FailureLimiter(config.limits.enroll_failures_per_minute)
    metrics = EnrollMetrics(registry, tokens)
    app[ENROLLMENT] = Enrollment(tokens, limiter, metrics, frozenset(static))

    async def post_gateway(request: web.Request) -> web.Response:
        """{"id": ID, "code": false, "expires_hours": 168}: a token (shown once) or a code."""
        denied = require_admin(request)
        if denied is not None:
            return denied
        try:
            body = await _body(request)
            unknown = sorted(set(body) - {"id", "code", "expires_hours"})
            if unknown:
                raise EnrollError(f"unknown field(s) {', '.join(unknown)}", "invalid")
            hours = body.get("expires_hours", DEFAULT_CODE_HOURS)
            if not isinstance(body.get("id"), str) or isinstance(hours, bool) \
                    or not isinstance(hours, int | float):
                raise EnrollError('the body must be {"id": "...", "code": true|false, '
                                  '"expires_hours": N}', "invalid")
            out = issue(tokens, static, body["id"], body.get("code") is True, float(hours))
        except EnrollError as exc:
            return _error(_STATUS.get(exc.kind, 400), str(exc))
        store.ensure_gateways([body["id"]])
        log.info("gateway %s: %s issued via the API", body["id"],
                 "enrollment code" if "code" in out else "token")
        return web.json_response(out, status=201)

    async def get_gateways(request: web.Request) -> web.Response:
        denied = require_admin(request)
        if denied is not None:
            return denied
        return web.json_response({"gateways": listing(tokens, static)})

    async def delete_gateway(request: web.Request) -> web.Response:
        denied = require_admin(request)
        if denied is not None:
            return denied
        gateway = request.match_info["id"]
        try:
            tokens.revoke(gateway)
        except EnrollError as exc:
            return _error(_STATUS.get(exc.kind, 400), str(exc))
        log.info("gateway %s: token revoked via the API", gateway)
        return web.json_response({"id": gateway, "state": "revoked"})

    async def post_enroll(request: web.Request) -> web.Response:
        """{"code": "XXXX-XXXX-XXXX-XXXX"} -> {"gateway": ID, "token": TOKEN} (no auth: the code
        is the credential). Wrong codes count against limits.enroll_failures_per_minute."""
        wait = limiter.retry_after()
        if wait > 0:
            metrics.attempts.labels("rate_limited").inc()
            return _error(429, "too many wrong enrollment codes; try again in "
                               f"{math.ceil(wait)} s", {"Retry-After": str(math.ceil(wait))})
        try:
            body = await _body(request)
            code = body.get("code")
            if not isinstance(code, str) or not 0 < len(code) <= 64:
                raise EnrollError('the body must be {"code": "XXXX-XXXX-XXXX-XXXX"}', "invalid")
            gateway, token = tokens.redeem(code)
        except EnrollError as exc:
            if exc.kind in ATTEMPT_RESULTS:
                limiter.failed()
                metrics.attempts.labels(exc.kind).inc()
            return _error(_STATUS.get(exc.kind, 400), str(exc))
        store.ensure_gateways([gateway])
        metrics.attempts.labels("enrolled").inc()
        log.info("gateway %s enrolled with a code", gateway)
        return web.json_response({"gateway": gateway, "token": token}, status=201)

    app.router.add_post("/v1/gateways", post_gateway)
    app.router.add_get("/v1/gateways", get_gateways)
    app.router.add_delete("/v1/gateways/{id}", delete_gateway)
    app.router.add_post("/v1/enroll", post_enroll)
