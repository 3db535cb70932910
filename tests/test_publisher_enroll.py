"""Enrollment: per-gateway tokens and one-time codes instead of a hand-kept token list.

In-process API tests run on both databases (SQLite file, PostgreSQL cluster); the last test
runs the real thing: `safegate feed gateways add --code` at the publisher, `safegate feeds
enroll` at a school's gateway process, acks with the enrolled token, revocation seen by the
gateway on its next ack (metric and `safegate feeds status`).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from gateway.config.gateway import load_config
from gateway.feedformat.signing import generate_keys, load_signer
from gateway.publisher.app import make_app
from gateway.publisher.config import load_publisher_config
from gateway.publisher.enroll import ALPHABET, GatewayTokens, normalize_code
from gateway.publisher.store import Store
from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.feeds import entry
from tests.support.procs import REPO_ROOT, write_gateway_config
from tests.support.publisher import (
    ADMIN_TOKEN,
    PublisherSetup,
    gateway_token,
    start_publisher,
    write_publisher_config,
)
from tests.support.wait import wait_for

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ack(gateway: str) -> dict[str, Any]:
    return {"gateway": gateway, "feed": "central", "serial": 0, "entries": [], "stats": [],
            "probes": {}, "sent_at": "2026-11-23T10:00:00Z"}


def _setup(tmp_path: Path, request: pytest.FixtureRequest, **limits: int) -> PublisherSetup:
    generate_keys(tmp_path / "keys")
    extra: dict[str, Any] = {"limits": limits} if limits else {}
    if request.param == "postgresql":
        extra["database"] = request.getfixturevalue("postgres").new_database()
    return write_publisher_config(tmp_path, keygen=False, gateways=("gw-static",), extra=extra)


@pytest.fixture(params=["sqlite", "postgresql"])
async def client(tmp_path: Path, request: pytest.FixtureRequest
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    """The publisher's app with limits.enroll_failures_per_minute 3, limits.enroll_codes 2."""
    setup = _setup(tmp_path, request, enroll_failures_per_minute=3, enroll_codes=2)
    config = load_publisher_config(setup.config)
    store = Store(config.database)
    app = make_app(store, load_signer(config.signing_key), config, CollectorRegistry())
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c
    store.close()


async def metric(client: TestClient[Any, Any], line: str) -> float | None:
    text = await (await client.get("/metrics")).text()
    for ln in text.splitlines():
        if ln.startswith(line + " "):
            return float(ln.split()[-1])
    return None


async def test_token_issue_ack_revoke_and_static_list(client: TestClient[Any, Any]) -> None:
    r = await client.post("/v1/gateways", json={"id": "school-1"})
    assert r.status == 401                                        # admin only
    r = await client.post("/v1/gateways", json={"id": "school-1"}, headers=ADMIN)
    assert r.status == 201
    token = (await r.json())["token"]
    assert len(token) >= 43
    r = await client.post("/v1/gateways", json={"id": "school-1"}, headers=ADMIN)
    assert r.status == 409 and "already has a token" in (await r.json())["error"]
    r = await client.post("/v1/gateways", json={"id": "gw-static"}, headers=ADMIN)
    assert r.status == 409 and "publisher.yaml" in (await r.json())["error"]
    r = await client.post("/v1/gateways", json={"id": "Bad Id"}, headers=ADMIN)
    assert r.status == 400

    assert (await client.post("/v1/acks", json=ack("school-1"), headers=_auth(token))).status \
        == 200
    # the static list keeps working beside it
    assert (await client.post("/v1/acks", json=ack("gw-static"),
                              headers=_auth(gateway_token("gw-static")))).status == 200
    # the enrolled gateway is one of the publisher's gateways now (metrics, entry views)
    assert await metric(client, 'safegate_publisher_gateway_applied_serial{gateway="school-1"}') \
        == 0.0
    listing = (await (await client.get("/v1/gateways", headers=ADMIN)).json())["gateways"]
    assert {(g["id"], g["source"], g["state"]) for g in listing} == {
        ("gw-static", "publisher.yaml", "active"), ("school-1", "enrolled", "active")}
    assert token not in json.dumps(listing)

    assert (await client.delete("/v1/gateways/school-1", headers=ADMIN)).status == 200
    r = await client.post("/v1/acks", json=ack("school-1"), headers=_auth(token))
    body = await r.json()
    assert r.status == 401 and "revoked" in body["error"] and "school-1" in body["error"]
    assert await metric(client, "safegate_publisher_revoked_token_requests_total") == 1.0
    assert await metric(client, 'safegate_publisher_gateway_applied_serial{gateway="school-1"}') \
        is None
    assert (await client.delete("/v1/gateways/school-1", headers=ADMIN)).status == 404
    # after a revocation a new token may be issued; the old one stays dead
    r = await client.post("/v1/gateways", json={"id": "school-1"}, headers=ADMIN)
    new = (await r.json())["token"]
    assert (await client.post("/v1/acks", json=ack("school-1"), headers=_auth(new))).status \
        == 200
    assert (await client.post("/v1/acks", json=ack("school-1"), headers=_auth(token))).status \
        == 401


async def test_codes_single_use_and_bounded(client: TestClient[Any, Any]) -> None:
    r = await client.post("/v1/gateways", json={"id": "school-2", "code": True}, headers=ADMIN)
    assert r.status == 201
    code = (await r.json())["code"]
    groups = code.split("-")
    assert [len(g) for g in groups] == [4, 4, 4, 4] and set("".join(groups)) <= set(ALPHABET)
    # typed by a person: lower case, spaces, O for 0 all fine
    typed = code.lower().replace("-", " ").replace("0", "o")
    assert normalize_code(typed) == code
    r = await client.post("/v1/enroll", json={"code": typed})
    assert r.status == 201
    got = await r.json()
    assert got["gateway"] == "school-2"
    assert (await client.post("/v1/acks", json=ack("school-2"),
                              headers=_auth(got["token"]))).status == 200
    r = await client.post("/v1/enroll", json={"code": code})
    assert r.status == 410 and "already used" in (await r.json())["error"]

    # limits.enroll_codes = 2 outstanding codes
    for gid in ("school-3", "school-4"):
        assert (await client.post("/v1/gateways", json={"id": gid, "code": True},
                                  headers=ADMIN)).status == 201
    r = await client.post("/v1/gateways", json={"id": "school-5", "code": True}, headers=ADMIN)
    assert r.status == 422 and "limits.enroll_codes" in (await r.json())["error"]
    assert await metric(client, "safegate_publisher_enroll_codes_outstanding") == 2.0
    # revoking a pending gateway drops its code (and frees the slot)
    assert (await client.delete("/v1/gateways/school-4", headers=ADMIN)).status == 200
    assert (await client.post("/v1/gateways", json={"id": "school-5", "code": True},
                              headers=ADMIN)).status == 201


async def test_wrong_codes_are_rate_limited(client: TestClient[Any, Any]) -> None:
    r = await client.post("/v1/gateways", json={"id": "school-6", "code": True}, headers=ADMIN)
    code = (await r.json())["code"]
    for _ in range(3):   # limits.enroll_failures_per_minute = 3
        r = await client.post("/v1/enroll", json={"code": "AAAA-BBBB-CCCC-DDDD"})
        assert r.status == 400 and "unknown" in (await r.json())["error"]
    # the budget is spent: even the right code waits (guessing gets nowhere)
    r = await client.post("/v1/enroll", json={"code": code})
    assert r.status == 429 and 0 < int(r.headers["Retry-After"]) <= 60
    assert await metric(client, 'safegate_publisher_enroll_attempts_total{result="unknown"}') \
        == 3.0
    assert await metric(
        client, 'safegate_publisher_enroll_attempts_total{result="rate_limited"}') == 1.0
    assert await metric(client, 'safegate_publisher_enroll_attempts_total{result="enrolled"}') \
        == 0.0
    r = await client.post("/v1/enroll", data=b"{nope")
    assert r.status == 429


def test_expired_code(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.sqlite3")
    now = [1000.0]
    tokens = GatewayTokens(store.db, 10, clock=lambda: now[0])
    code, expires = tokens.issue_code("school-7", set(), hours=1)
    assert expires == 1000.0 + 3600
    now[0] = expires
    with pytest.raises(Exception, match="expired"):
        tokens.redeem(code)
    assert tokens.outstanding_codes() == 0
    store.close()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT, env=env, check=False)


@pytest.mark.integration
def test_school_enrolls_acks_and_is_revoked(tmp_path: Path, unbound: ub.UnboundServer,
                                            safegate_factory: Any) -> None:
    pub = start_publisher(tmp_path / "publisher", gateways=("gw-static",))
    try:
        r = _run("feed", "gateways", "add", "-c", str(pub.setup.config), "school-8", "--code")
        assert r.returncode == 0, r.stderr
        code = r.stdout.split("enrollment code ")[1].split()[0]
        assert f"safegate feeds enroll {code}" in r.stdout

        feeds = {"feeds": [{"name": "central", "url": pub.url + "/v1/feed",
                            "type": "safegate", "public_key": str(pub.setup.public_key),
                            "long_poll": 10}]}
        config = write_gateway_config(tmp_path / "school", upstream_port=unbound.port,
                                      policies={"p.yaml": POLICY}, lists=LISTS,
                                      lists_yaml=LISTS_YAML, extra=feeds)
        r = _run("feeds", "enroll", code.lower(), "--publisher", pub.url, "-c", str(config))
        assert r.returncode == 0, r.stderr
        assert "as gateway 'school-8'" in r.stdout and "0600" in r.stdout
        stored = load_config(config).state_dir / "enrollment.json"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        record = json.loads(stored.read_text())
        assert record["gateway"] == "school-8"
        cfg = load_config(config)
        assert (cfg.gateway_id, cfg.gateway_token) == ("school-8", record["token"])
        r = _run("feeds", "enroll", code, "--publisher", pub.url, "-c", str(config))
        assert r.returncode == 1 and "already used" in r.stderr

        gw = safegate_factory(config)
        assert pub.request("POST", "/v1/entries", body={"entries": [entry("E-1")]},
                           token=ADMIN_TOKEN).status == 201
        wait_for(lambda: pub.request("GET", "/v1/entries/E-1").json()["gateways"][-1]
                 .get("verified_at") is not None, 30, what="the enrolled school acked E-1")
        r = _run("feed", "gateways", "list", "-c", str(pub.setup.config))
        assert "school-8\tactive\tenrolled" in r.stdout and "gw-static\tactive" in r.stdout

        r = _run("feed", "gateways", "revoke", "-c", str(pub.setup.config), "school-8")
        assert r.returncode == 0 and "next request gets 401" in r.stdout
        assert pub.request("POST", "/v1/entries", body={"entries": [entry("E-2",
                           "adult.example")]}, token=ADMIN_TOKEN).status == 201
        # the gateway still enforces (feeds need no token) but its ack is refused: it says so
        wait_for(lambda: 'safegate_feed_ack_unauthorized{feed="central"} 1.0'
                 in gw.metrics_text(), 30, what="the gateway shows its token was refused")
        assert 'safegate_feed_ack_failures_total{feed="central",reason="unauthorized"}' \
            in gw.metrics_text()
        r = _run("feeds", "status", "-c", str(config))
        assert "ACKS REFUSED" in r.stdout and "revoked" in r.stdout, r.stdout
    finally:
        pub.kill()
