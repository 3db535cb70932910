"""The block page's web listener as a browser reaches it, and the reports a publisher got."""

from __future__ import annotations

import urllib.parse
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from tests.support.procs import SafeGateProcess
from tests.support.publisher import (
    ADMIN_TOKEN,
    PublisherProcess,
    gateway_token,
)

BLOCKED = "adult-site.test"     # category adult for the kids network (127.0.0.1)


def gateway_extra(pub_url: str, public_key: Path) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-a", "token": gateway_token("gw-a")},
        "feeds": [{"name": "central", "url": pub_url + "/v1/feed", "type": "safegate",
                   "public_key": str(public_key), "interval": 60, "long_poll": 10}],
        "reports": {"forward_to": [pub_url + "/v1/reports"]},
    }


def http(gw: SafeGateProcess, method: str, path: str, *, host: str = BLOCKED,
         data: dict[str, str] | None = None, accept: str = "text/html",
         source: str = "127.0.0.1") -> tuple[int, dict[str, str], str]:
    """One request from the loopback address `source` (a client of that address)."""
    url = urllib.parse.urlsplit(gw.web_url)
    assert url.hostname is not None and url.port is not None
    conn = HTTPConnection(url.hostname, url.port, timeout=5, source_address=(source, 0))
    headers = {"Host": host, "Accept": accept}
    body = None
    if data is not None:
        body = urllib.parse.urlencode(data).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def reports_at(pub: PublisherProcess) -> list[dict[str, Any]]:
    r = pub.request("GET", "/v1/reports", token=ADMIN_TOKEN)
    assert r.status == 200, r.body
    return list(r.json()["reports"])
