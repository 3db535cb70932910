"""DNS over HTTPS upstreams (issue #14.3), end to end with real processes:

    dig/dnspython -> gateway A --https (test CA)--> nginx --http--> gateway B's /dns-query
                                                                  -> unbound

A's `https://127.0.0.1:PORT/dns-query#doh.test` upstream is checked against a CA made for the
test (dns.upstream_ca) and the name doh.test; several queries share one TCP connection (nginx
logs its connection serial per request); a server whose certificate the CA did not sign is
refused (SERVFAIL, error reason "tls", the upstream benched: safegate_upstream_healthy 0), and
so is one that answers 404 (reason "http").
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support import unbound as ub
from tests.support.certs import make_ca_and_cert, make_cert
from tests.support.nginx import start_nginx
from tests.support.procs import SafeGateProcess, free_port, metric
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

POLICY = """\
tiers:
  open: {}
networks:
  - {name: lab, cidrs: ["127.0.0.0/8", "::1/128"], tier: open}
"""


def ask(gw: SafeGateProcess, name: str, rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=10)  # type: ignore[no-any-return]


class Stack:
    def __init__(self, directory: Path, good: int, bad: int, ca: Path) -> None:
        self.directory = directory
        self.good = good
        self.bad = bad
        self.ca = ca

    def log(self, server: str) -> list[list[str]]:
        path = self.directory / f"{server}.log"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def stack(unbound: ub.UnboundServer, safegate_factory: Any, tmp_path: Path) -> Iterator[Stack]:
    backend: SafeGateProcess = safegate_factory(upstream_port=unbound.port,
                                                policies={"p.yaml": POLICY})
    web = backend.web_url.removeprefix("http://")
    (tmp_path / "ca").mkdir()
    (tmp_path / "self").mkdir()
    ca, cert, key = make_ca_and_cert(tmp_path / "ca", "doh.test")
    other_cert, other_key = make_cert(tmp_path / "self")   # self-signed: not from our CA
    good, bad = free_port(v6=False, udp=False), free_port(v6=False, udp=False)
    nginx_dir = tmp_path / "nginx"

    def server(port: int, crt: Path, k: Path, name: str) -> str:
        return f"""
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {crt};
    ssl_certificate_key {k};
    keepalive_requests 1000;
    access_log {nginx_dir}/{name}.log conn;
    location = /dns-query {{
      proxy_pass http://{web};
      proxy_http_version 1.1;
    }}
  }}"""

    proc = start_nginx(nginx_dir, server(good, cert, key, "good")
                       + server(bad, other_cert, other_key, "bad"), [good, bad],
                       http_extra="  log_format conn '$connection $connection_requests "
                                  "$status $request_method $request_uri';")
    yield Stack(nginx_dir, good, bad, ca)
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


def gateway(factory: Any, stack: Stack, upstreams: list[str]) -> SafeGateProcess:
    return factory(upstream_port=9, policies={"p.yaml": POLICY},  # type: ignore[no-any-return]
                   extra={"dns": {"upstreams": upstreams, "upstream_ca": str(stack.ca)},
                          "limits": {"rrl": {"enabled": False}}})


def test_queries_go_over_one_verified_https_connection(stack: Stack,
                                                       safegate_factory: Any) -> None:
    label = f"https://127.0.0.1:{stack.good}/dns-query"
    gw = gateway(safegate_factory, stack, [label + "#doh.test"])
    assert metric(gw, "safegate_upstream_queries_total", upstream=label, protocol="https") == 0
    names = [(ub.ALLOWED, "A"), (ub.WWW_ALLOWED, "A"), (ub.ALLOWED, "AAAA"),
             (ub.SHORT_TTL_NAME, "A"), (ub.NXDOMAIN_NAME, "A"), (ub.NODATA_NAME, "A")]
    replies = [ask(gw, name, rdtype) for name, rdtype in names]
    assert [r.rcode() for r in replies] == [dns.rcode.NOERROR] * 4 + [dns.rcode.NXDOMAIN,
                                                                      dns.rcode.NOERROR]
    assert [rd.to_text() for rs in replies[0].answer for rd in rs] == [ub.ALLOWED_A]
    assert [rd.to_text() for rs in replies[2].answer for rd in rs] == [ub.ALLOWED_AAAA]
    assert [rd.to_text() for rs in replies[3].answer for rd in rs] == [ub.SHORT_TTL_A]
    assert metric(gw, "safegate_upstream_queries_total", upstream=label,
                  protocol="https") == len(names)
    # Every one went through nginx, as a POST answered 200, all on one TCP connection.
    lines = wait_for(lambda: got if len(got := stack.log("good")) == len(names) else None,
                     timeout=10)
    assert {tuple(line[2:]) for line in lines} == {("200", "POST", "/dns-query")}
    assert len({line[0] for line in lines}) == 1, lines
    assert sorted(int(line[1]) for line in lines) == list(range(1, len(names) + 1))
    assert metric(gw, "safegate_upstream_sockets") == 1
    assert metric(gw, "safegate_upstream_healthy", upstream=label) == 1
    assert metric(gw, "safegate_upstream_errors_total", upstream=label) == 0


def test_a_wrong_certificate_or_a_404_is_refused_and_benched(stack: Stack,
                                                             safegate_factory: Any) -> None:
    wrong = f"https://127.0.0.1:{stack.bad}/dns-query"
    missing = f"https://127.0.0.1:{stack.good}/nope"
    gw = gateway(safegate_factory, stack, [wrong, missing])
    for i in range(3):   # dns fail_threshold: 3 failures in a row bench an upstream
        r = ask(gw, f"n{i}.{ub.ALLOWED}")
        assert r.rcode() == dns.rcode.SERVFAIL
    assert metric(gw, "safegate_upstream_errors_total", upstream=wrong, reason="tls") == 3
    assert metric(gw, "safegate_upstream_errors_total", upstream=missing, reason="http") == 3
    assert metric(gw, "safegate_upstream_healthy", upstream=wrong) == 0
    assert metric(gw, "safegate_upstream_healthy", upstream=missing) == 0
    assert stack.log("bad") == []    # the handshake failed: no request was ever sent
    assert {tuple(line[2:]) for line in stack.log("good")} == {("404", "POST", "/nope")}
