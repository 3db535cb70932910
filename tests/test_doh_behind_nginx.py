"""DoH behind a reverse proxy: Debian's nginx terminates TLS and HTTP/2, SafeGate serves HTTP/1.1.

This is the deployment the README gives for browsers, Android and `kdig +https` (all HTTP/2):
kdig asks nginx over HTTP/2, nginx forwards with X-Forwarded-For from its own address (a
trusted front end), and the asking client's tier decides, token paths included.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import unbound as ub
from tests.support.certs import make_cert
from tests.support.data import DOH_LISTS, DOH_LISTS_YAML, DOH_POLICY, DOH_TOKEN
from tests.support.nginx import require_nginx, start_nginx
from tests.support.procs import SafeGateProcess, free_port, kdig

pytestmark = pytest.mark.integration

PROXY_SOURCE = "127.0.0.20"   # nginx's source address towards SafeGate (proxy_bind)


def _start_nginx(directory: Path, port: int, web_port: int, cert: Path, key: Path
                 ) -> subprocess.Popen[bytes]:
    return start_nginx(directory, f"""
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location /dns-query {{
      proxy_pass http://127.0.0.1:{web_port};
      proxy_bind {PROXY_SOURCE};
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
  }}""", [port], http_extra="  access_log off;")


@pytest.fixture
def stack(unbound: ub.UnboundServer, safegate_factory: Any, tmp_path: Path
          ) -> Iterator[tuple[SafeGateProcess, int, Path]]:
    require_nginx()
    cert, key = make_cert(tmp_path)
    gw: SafeGateProcess = safegate_factory(
        upstream_port=unbound.port, policies={"p.yaml": DOH_POLICY}, lists=DOH_LISTS,
        lists_yaml=DOH_LISTS_YAML, extra={"dns": {"trusted_frontends": [f"{PROXY_SOURCE}/32"]}})
    web_port = int(gw.web_url.rsplit(":", 1)[1].split("/")[0])
    port = free_port(v6=False, udp=False)
    nginx = _start_nginx(tmp_path / "nginx", port, web_port, cert, key)
    yield gw, port, cert
    nginx.terminate()
    nginx.wait(5)


def _kdig(port: int, cert: Path, source: str, name: str, path: str = "") -> str:
    https = f"+https={path}" if path else "+https"
    return kdig("-b", source, "@127.0.0.1", "-p", str(port), https, f"+tls-ca={cert}",
                "+tls-hostname=localhost", "+timeout=3", "+retry=0", name)


def test_kdig_over_http2_through_nginx_gets_the_clients_tier(
        stack: tuple[SafeGateProcess, int, Path]) -> None:
    gw, port, cert = stack
    allowed = _kdig(port, cert, "127.0.0.1", ub.ALLOWED)
    assert ";; HTTP session (HTTP/2-POST)" in allowed and "(status: 200)" in allowed
    assert ub.ALLOWED_A in allowed and "NOERROR" in allowed
    # Kids (127.0.0.1): gambling is blocked, with the block page's address and EDE 15.
    kids = _kdig(port, cert, "127.0.0.1", "gamble.test")
    assert "127.0.0.1" in kids and "EDE: 15 (Blocked)" in kids, kids
    # Staff (127.0.0.4) through the same nginx: nginx's X-Forwarded-For decides, not nginx.
    staff = _kdig(port, cert, "127.0.0.4", "gamble.test")
    assert ub.BLOCKED_TARGET_A in staff and "EDE" not in staff, staff
    # A token path selects its tier wherever the client is (teens: gambling allowed).
    token = _kdig(port, cert, "127.0.0.1", "gamble.test", f"/dns-query/{DOH_TOKEN}")
    assert ub.BLOCKED_TARGET_A in token, token
    doh = [line for line in gw.metrics_text().splitlines()
           if line.startswith("safegate_dns_queries_total") and 'protocol="doh"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in doh) == 4.0
