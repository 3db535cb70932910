"""The admin listener of a real gateway under hostile clients (no browser): guesses sent all
at once are still locked out after the fifth, and a request without a session changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.procs import REPO_ROOT, free_port, write_gateway_config

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


def _gateway(tmp_path: Path, upstream: int, safegate_factory: Any) -> tuple[Any, str]:
    port = free_port(v6=False, udp=False)
    config = write_gateway_config(tmp_path, upstream_port=upstream,
                                  policies={"p.yaml": POLICY}, lists=LISTS,
                                  lists_yaml=LISTS_YAML,
                                  extra={"admin": {"listen": f"127.0.0.1:{port}"}})
    done = subprocess.run([sys.executable, "-m", "gateway", "admin", "passwd", "-c", str(config),
                           "--password-stdin"], input=PASSWORD + "\n", text=True,
                          capture_output=True, cwd=REPO_ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr
    return safegate_factory(config), f"http://127.0.0.1:{port}"


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_simultaneous_guesses_are_locked_out_after_five(
        tmp_path: Path, unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    gw, admin = _gateway(tmp_path, unbound.port, safegate_factory)

    async def attack() -> list[int]:
        async with aiohttp.ClientSession() as session:
            async def guess(i: int) -> int:
                async with session.post(admin + "/login", data={"password": f"guess-{i}"},
                                        allow_redirects=False) as r:
                    return r.status

            statuses = await asyncio.gather(*(guess(i) for i in range(20)))
            # The right password from the same address: locked too.
            async with session.post(admin + "/login", data={"password": PASSWORD},
                                    allow_redirects=False) as r:
                return [*statuses, r.status]

    statuses = asyncio.run(attack())
    assert sorted(statuses[:20]) == [401] * 5 + [429] * 15, statuses
    assert statuses[20] == 429
    metrics = gw.metrics_text()
    assert _sample(metrics, 'safegate_admin_logins_total{result="wrong"}') == 5
    assert _sample(metrics, 'safegate_admin_logins_total{result="locked"}') == 16
    assert _sample(metrics, 'safegate_admin_logins_total{result="ok"}') == 0
    assert _sample(metrics, "safegate_admin_lockout_addresses") == 1


def test_no_session_no_page_and_no_change(tmp_path: Path, unbound: ub.UnboundServer,
                                          safegate_factory: Any) -> None:
    gw, admin = _gateway(tmp_path, unbound.port, safegate_factory)

    async def probe() -> dict[str, tuple[int, str]]:
        out = {}
        async with aiohttp.ClientSession() as session:
            for method, path in (("GET", "/"), ("GET", "/querylog"), ("POST", "/rules"),
                                 ("POST", "/feeds/confirm"), ("POST", "/logout")):
                async with session.request(method, admin + path, allow_redirects=False,
                                           data={"name": "adult.example",
                                                 "target": "networks:kids-v4",
                                                 "action": "allow", "csrf": "x"}) as r:
                    out[f"{method} {path}"] = (r.status, r.headers.get("Location", ""))
            async with session.post(admin + "/login", data={"password": PASSWORD},
                                    cookies={"safegate_admin": "forged"},
                                    allow_redirects=False) as r:
                out["login"] = (r.status, r.headers.get("Location", ""))
        return out

    got = asyncio.run(probe())
    assert got["GET /"] == (303, "/login") and got["GET /querylog"] == (303, "/login")
    for post in ("POST /rules", "POST /feeds/confirm", "POST /logout"):
        assert got[post][0] == 403, got
    assert got["login"] == (303, "/")
    assert not (tmp_path / "policies" / "local.yaml").exists()
    assert gw.query("adult.example").answer   # still blocked (the block page's address)


def test_a_hand_written_local_policy_outside_the_policies_dir_is_loaded(
        tmp_path: Path, unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    """admin.local_policy need not be in a `policies:` directory, nor exist at start."""
    from tests.support.wait import wait_for

    config = write_gateway_config(
        tmp_path, upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
        lists_yaml=LISTS_YAML, extra={
            "admin": {"listen": f"127.0.0.1:{free_port(v6=False, udp=False)}",
                      "local_policy": "site/local.yaml"},
            "reload": {"watch_interval": 0.2}})
    gw = safegate_factory(config)
    assert gw.query("adult.example").answer[0][0].to_text() != ub.BLOCKED_TARGET_A
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "local.yaml").write_text(
        "local:\n  networks:\n    kids-v4: {allow: [adult.example]}\n")

    def allowed() -> bool:
        answer = gw.query("adult.example").answer
        return bool(answer) and answer[0][0].to_text() == ub.BLOCKED_TARGET_A

    wait_for(allowed, 20.0, what="the hand-written local.yaml in force")
