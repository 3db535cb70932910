"""Issue #13: correct verdicts for every entry type (real publisher, gateways and proxy).

A URL entry, an image SHA-256 and an image PDQ hash (both of a synthetic image drawn here,
never real material), all mandatory with a deadline a few seconds out. A gateway running the
proxy verifies them through the proxy's own matching code and acks them verified; a gateway
without the proxy acks them not_applicable. Past the deadline the publisher counts neither as
overdue, shows each outcome, and `safegate report` counts them.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.feeds import entry, gateway_extra, sample_of
from tests.support.procs import REPO_ROOT, free_port
from tests.support.publisher import start_publisher
from tests.support.wait import wait_for

pytest.importorskip("mitmproxy")
pytestmark = pytest.mark.integration

IDS = ("URL-1", "IMG-SHA", "IMG-PDQ")


def synthetic_image() -> tuple[str, str]:
    """(sha256, pdq) of a generated PNG: a gradient with a few shapes, hashed by the same
    functions the proxy runs on an image."""
    from PIL import Image, ImageDraw

    from gateway.proxy.hashes import decode_rgb, pdq_hashes

    img = Image.new("RGB", (256, 256))
    draw = ImageDraw.Draw(img)
    for x in range(256):
        draw.line([(x, 0), (x, 255)], fill=(x, 255 - x, (x * 3) % 256))
    draw.ellipse((40, 60, 160, 200), fill=(250, 240, 20))
    draw.rectangle((150, 20, 230, 120), fill=(10, 20, 200))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    pixels = decode_rgb(data, 50_000_000)
    assert pixels is not None
    (pdq,), quality = pdq_hashes(pixels, False)
    assert quality >= 50
    return hashlib.sha256(data).hexdigest(), pdq


def orders(deadline: str) -> list[dict[str, Any]]:
    sha, pdq = synthetic_image()
    base = entry("x", deadline=deadline)
    del base["issued_at"]           # the publisher's now, to the millisecond
    return [dict(base, id="URL-1", type="url", value="https://news.test/post/42"),
            dict(base, id="IMG-SHA", type="sha256", value=sha),
            dict(base, id="IMG-PDQ", type="pdq", value=pdq)]


def view(pub: Any, rid: str, gateway: str) -> dict[str, Any]:
    r = pub.request("GET", f"/v1/entries/{rid}")
    assert r.status == 200, r.body
    return next(g for g in r.json()["gateways"] if g["gateway"] == gateway)


def test_url_and_hash_entries_verified_by_the_proxy_or_not_applicable(
        tmp_path: Path, unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    pub = start_publisher(tmp_path / "publisher", gateways=("gw-proxy", "gw-dns"))
    try:
        ports = {k: free_port(v6=False, udp=False) for k in ("listen", "metrics")}
        proxy = {"enabled": True, "listen": f"127.0.0.1:{ports['listen']}",
                 "metrics_listen": f"127.0.0.1:{ports['metrics']}", "scan_hosts": ["img.test"]}
        common = {"upstream_port": unbound.port, "policies": {"p.yaml": POLICY},
                  "lists": LISTS, "lists_yaml": LISTS_YAML, "ipv6": False}
        with_proxy = safegate_factory(**common,
                                      extra={**gateway_extra(pub, "gw-proxy"), "proxy": proxy})
        without = safegate_factory(**common, extra=gateway_extra(pub, "gw-dns"))
        deadline = time.time() + 8
        deadline_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline + 1))
        path = tmp_path / "orders.json"
        path.write_text(json.dumps(orders(deadline_iso)))
        result = pub.feed("add", "--file", str(path))
        assert result.returncode == 0, result.stderr

        for rid in IDS:
            wait_for(lambda rid=rid: view(pub, rid, "gw-proxy")["verified_at"], 60,
                     what=f"{rid} verified by the proxy of gw-proxy")
            wait_for(lambda rid=rid: view(pub, rid, "gw-dns")["outcome"] == "not_applicable",
                     60, what=f"{rid} acked not_applicable by gw-dns")
        for rid in IDS:
            seen = view(pub, rid, "gw-proxy")
            assert seen["outcome"] == "verified"
            assert seen["received_at"] and seen["applied_at"] and seen["within_deadline"]
            seen = view(pub, rid, "gw-dns")
            assert seen["received_at"] and seen["verified_at"] is None
        assert with_proxy.config is not None
        ledger = with_proxy.config.parent / "var" / "ledger.sqlite3"
        with sqlite3.connect(ledger) as db:
            assert dict(db.execute("SELECT entry_id, outcome FROM entries")) == {
                rid: "verified" for rid in IDS}
        assert without.config is not None

        wait_for(lambda: time.time() > deadline + 2, 30, what="the deadline passed")
        text = pub.request("GET", "/metrics").body.decode()
        for gw in ("gw-proxy", "gw-dns"):
            assert sample_of(text, "safegate_publisher_gateway_overdue_entries",
                             gateway=gw) == 0, gw
            assert view(pub, "IMG-PDQ", gw)["overdue"] is False
        assert sample_of(text, "safegate_publisher_enforcement_latency_seconds_count",
                         gateway="gw-proxy") == 3

        today = time.strftime("%Y-%m-%d", time.gmtime())
        out = subprocess.run(
            [sys.executable, "-m", "gateway", "report", "-c", str(pub.setup.config), "--from",
             today, "--to", today, "--tz", "UTC", "--format", "json"],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        sections = {s["name"]: s for s in json.loads(out.stdout)["sections"]}
        assert sections["gw-proxy"]["all"]["within_deadline"] == 3
        assert sections["gw-dns"]["all"]["not_applicable"] == 3
        assert sections["gw-dns"]["all"]["never"] == 0
    finally:
        pub.kill()
