"""The forwarder in a real gateway: socket bounds under a burst of misses, in-flight caps,
0x20 and DNS over TLS against a real unbound, metrics as scraped."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest

from tests.support import unbound as ub
from tests.support.certs import make_ca_and_cert
from tests.support.procs import SafeGateProcess, free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

POLICY = """\
tiers:
  staff: {block: []}
networks:
  - {name: local, cidrs: ["127.0.0.0/8", "::1/128"], tier: staff}
"""
NO_RRL = {"rrl": {"enabled": False}}   # replies here are counted, never rate limited


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a scrape (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted(x for x in re.findall(r'\w+="[^"]*"', m.group(2) or "")))
        if got == want:
            return float(m.group(3))
    return 0.0


def burst(port: int, names: list[str], timeout: float) -> dict[str, dns.message.Message]:
    """Send every query at once from one UDP socket; collect replies until all are in."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.settimeout(0.2)
    ids: dict[int, str] = {}
    try:
        for i, name in enumerate(names):
            q = dns.message.make_query(name, "A", use_edns=0, payload=1232)
            q.id = i
            ids[i] = name
            sock.sendto(q.to_wire(), ("127.0.0.1", port))
        got: dict[str, dns.message.Message] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(names) and time.monotonic() < deadline:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            msg = dns.message.from_wire(data)
            got[ids[msg.id]] = msg
        return got
    finally:
        sock.close()


def gateway(factory: Any, upstreams: list[str], **dns_extra: Any) -> SafeGateProcess:
    limits = dns_extra.pop("limits", {})
    return factory(upstream_port=0, policies={"p.yaml": POLICY},  # type: ignore[no-any-return]
                   extra={"dns": {"upstreams": upstreams, **dns_extra},
                          "limits": {**NO_RRL, **limits}})


def test_a_burst_of_unique_misses_leaves_no_sockets_behind(unbound: ub.UnboundServer,
                                                           safegate_factory: Any) -> None:
    """Issue #10 item 1: concurrent misses each opened an upstream socket and all but one
    leaked (85 -> 15,155 descriptors in 300 s, then SERVFAIL for every miss)."""
    gw = gateway(safegate_factory, [unbound.upstream],
                 limits={"upstream": {"inflight": 10_000, "inflight_per_zone": 10_000}})
    assert gw.query(ub.ALLOWED).rcode() == dns.rcode.NOERROR
    before = open_fds(gw.pid)
    # redirect zone in unbound: every subdomain answers, each name is a distinct miss
    names = [f"n{i}.{ub.BLOCKED_NAMES[0]}" for i in range(3000)]
    got = burst(gw.dns_port, names, timeout=60)
    assert len(got) > 1000, "the gateway answered too little of the burst to test anything"
    answered = [m for m in got.values() if m.rcode() == dns.rcode.NOERROR]
    assert answered and answered[0].answer[0][0].address == ub.BLOCKED_TARGET_A
    # the pool (8 sockets) plus some slack for the runtime; a leak is thousands
    bound = before + 8 + 16
    wait_for(lambda: open_fds(gw.pid) <= bound, timeout=15,
             what=f"at most {bound} descriptors open (before: {before})")
    text = gw.metrics_text()
    assert metric(text, "safegate_upstream_sockets") <= 8
    assert gw.query(ub.ALLOWED).rcode() == dns.rcode.NOERROR


# ---------------------------------------------------------------- in-flight caps


class SlowZoneUpstream:
    """A UDP upstream (a thread) that never answers names under `slow_zone` (an authority
    that is slow or dead) and answers 192.0.2.1 for anything else."""

    def __init__(self, slow_zone: str) -> None:
        self.slow = dns.name.from_text(slow_zone)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.slow_queries: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = dns.message.from_wire(data)
            name = q.question[0].name
            if name.is_subdomain(self.slow):
                self.slow_queries.add(name.to_text().lower())
                continue
            r = dns.message.make_response(q)
            r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.1"))
            self.sock.sendto(r.to_wire(), addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def slow_zone() -> Iterator[SlowZoneUpstream]:
    server = SlowZoneUpstream("slow.test")
    yield server
    server.close()


def test_a_random_subdomain_flood_fills_only_its_zone_share(slow_zone: SlowZoneUpstream,
                                                            safegate_factory: Any) -> None:
    gw = gateway(safegate_factory, [f"127.0.0.1:{slow_zone.port}"], upstream_timeout=5,
                 query_timeout=5, limits={"upstream": {"inflight": 64,
                                                       "inflight_per_zone": 8}})
    names = [f"r{i}.slow.test" for i in range(40)]
    got = burst(gw.dns_port, names, timeout=30)
    assert len(got) == 40
    assert all(m.rcode() == dns.rcode.SERVFAIL for m in got.values())
    busy = [m for m in got.values()
            if [(o.code, o.text) for o in m.options if isinstance(o, dns.edns.EDEOption)]
            == [(14, "too many upstream queries in flight")]]
    assert len(busy) == 32                     # all but the zone's share of 8
    assert len(slow_zone.slow_queries) == 8    # the upstream saw only the share
    text = gw.metrics_text()
    assert metric(text, "safegate_upstream_dropped_total", reason="zone") == 32
    assert metric(text, "safegate_upstream_dropped_total", reason="inflight") == 0
    # while the share is full again, another zone still resolves
    again = threading.Thread(target=burst, args=(gw.dns_port,
                                                 [f"s{i}.slow.test" for i in range(8)], 10))
    again.start()
    wait_for(lambda: len(slow_zone.slow_queries) == 16, what="16 queries reached the slow zone")
    r = gw.query("www.fast.test")
    again.join()
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "192.0.2.1"


# ---------------------------------------------------------------- 0x20 and DNS over TLS


def test_0x20_against_unbound(unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    gw = gateway(safegate_factory, [unbound.upstream], upstream_0x20=True)
    for name in (ub.ALLOWED, ub.WWW_ALLOWED, f"x.{ub.BLOCKED_NAMES[1]}"):
        r = gw.query(name)
        assert r.rcode() == dns.rcode.NOERROR and r.answer
    r = gw.query(ub.NXDOMAIN_NAME)
    assert r.rcode() == dns.rcode.NXDOMAIN
    text = gw.metrics_text()
    for reason in ("case", "question", "unknown_id"):
        assert metric(text, "safegate_upstream_mismatched_replies_total",
                      upstream=unbound.upstream, reason=reason) == 0


def start_dot(d: Path, *extra: str) -> tuple[ub.UnboundServer, int, Path]:
    """unbound answering DNS over TLS on its own port, with a certificate for dot.test."""
    ca, cert, key = make_ca_and_cert(d, "dot.test")
    tls_port = free_port(v6=False, udp=False)
    server = ub.start_unbound(d, extra_config=[
        f"interface: 127.0.0.1@{tls_port}", f"tls-port: {tls_port}",
        f'tls-service-key: "{key}"', f'tls-service-pem: "{cert}"', *extra])
    return server, tls_port, ca


@pytest.fixture(scope="module")
def dot_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ub.UnboundServer,
                                                                            int, Path]]:
    server, tls_port, ca = start_dot(tmp_path_factory.mktemp("dot-upstream"))
    yield server, tls_port, ca
    server.stop()


def established(port: int) -> list[str]:
    """Peer addresses of TCP connections accepted on `port` (the server's side)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         check=True, capture_output=True, text=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


def test_dns_over_tls_upstream_reuses_one_connection(
        dot_upstream: tuple[ub.UnboundServer, int, Path], safegate_factory: Any) -> None:
    _server, tls_port, ca = dot_upstream
    label = f"tls://127.0.0.1:{tls_port}"
    gw = gateway(safegate_factory, [f"{label}#dot.test"], upstream_ca=str(ca))
    peers = set()
    for name in (ub.ALLOWED, ub.WWW_ALLOWED, ub.SHORT_TTL_NAME, ub.NXDOMAIN_NAME,
                 f"a.{ub.BLOCKED_NAMES[0]}", f"b.{ub.BLOCKED_NAMES[0]}"):
        r = gw.query(name, payload=1232)
        assert r.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), name
        peers.update(established(tls_port))
    assert gw.query(ub.ALLOWED).answer[0][0].address == ub.ALLOWED_A
    assert len(peers) == 1, peers                  # one connection carried every query
    # big answers need no TCP fallback over TLS
    big = gw.query(ub.BIG_NAME, "TXT", tcp=True)
    assert len(big.answer[0]) == ub.BIG_TXT_COUNT
    text = gw.metrics_text()
    assert metric(text, "safegate_upstream_queries_total", upstream=label, protocol="tls") >= 6
    assert metric(text, "safegate_upstream_errors_total", upstream=label, reason="tls") == 0
    assert metric(text, "safegate_upstream_sockets") == 1
    check = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                           capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_certificate_for_another_name_is_an_upstream_error(
        dot_upstream: tuple[ub.UnboundServer, int, Path], safegate_factory: Any) -> None:
    _server, tls_port, ca = dot_upstream
    label = f"tls://127.0.0.1:{tls_port}"
    gw = gateway(safegate_factory, [f"{label}#wrong.test"], upstream_ca=str(ca))
    r = gw.query(ub.ALLOWED, payload=1232)
    assert r.rcode() == dns.rcode.SERVFAIL and not r.answer
    text = gw.metrics_text()
    assert metric(text, "safegate_upstream_errors_total", upstream=label, reason="tls") == 1
    wait_for(lambda: established(tls_port) == [],   # the failed handshake's socket
             what="no connection to the DoT upstream")


def test_an_idle_tls_connection_is_closed_and_reopened(
        dot_upstream: tuple[ub.UnboundServer, int, Path], safegate_factory: Any) -> None:
    _server, tls_port, ca = dot_upstream
    gw = gateway(safegate_factory, [f"tls://127.0.0.1:{tls_port}#dot.test"],
                 upstream_ca=str(ca), limits={"upstream": {"tls_idle_timeout": 0.5}})
    assert gw.query(ub.ALLOWED).rcode() == dns.rcode.NOERROR
    wait_for(lambda: established(tls_port) == [],      # we closed it when idle
             what="no connection to the DoT upstream")
    assert metric(gw.metrics_text(), "safegate_upstream_sockets") == 0
    assert gw.query(ub.WWW_ALLOWED).answer[0][0].address == ub.ALLOWED_A


def test_a_tls_connection_the_server_closed_is_reopened(tmp_path: Path,
                                                        safegate_factory: Any) -> None:
    server, tls_port, ca = start_dot(tmp_path, "tcp-idle-timeout: 300")   # ms
    try:
        label = f"tls://127.0.0.1:{tls_port}"
        gw = gateway(safegate_factory, [f"{label}#dot.test"], upstream_ca=str(ca))
        peers = []
        for name in (ub.ALLOWED, ub.WWW_ALLOWED):
            assert gw.query(name).answer[0][0].address == ub.ALLOWED_A
            peers += established(tls_port)
            wait_for(lambda: established(tls_port) == [],   # unbound hung up
                     what="no connection to the DoT upstream")
            wait_for(lambda: metric(gw.metrics_text(), "safegate_upstream_sockets") == 0,
                     what="safegate_upstream_sockets 0")
        assert len(set(peers)) == 2
        assert metric(gw.metrics_text(), "safegate_upstream_errors_total", upstream=label,
                      reason="network") == 0
    finally:
        server.stop()
