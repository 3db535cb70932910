"""The web listener under limits.web, against a real gateway: idle and trickling connections
(slowloris) cannot hold it. Per-client and global caps refuse at once; a header sent a byte at
a time is cut at header_timeout; a body likewise at request_timeout; an idle keep-alive
connection at idle_timeout; the same over web.tls; and the counters say so."""

from __future__ import annotations

import contextlib
import re
import select
import shutil
import socket
import ssl
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import unbound as ub
from tests.support.certs import make_cert
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.hotline import BLOCKED, http
from tests.support.procs import SafeGateProcess
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

REQUEST = f"GET / HTTP/1.1\r\nHost: {BLOCKED}\r\nAccept: text/plain\r\n\r\n".encode()


def metric(gw: SafeGateProcess, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", gw.metrics_text(), re.M)
    assert found is not None, name
    return float(found.group(1))


def connections(gw: SafeGateProcess) -> float:
    return metric(gw, 'safegate_web_connections{listener="web"}')


def web_addr(gw: SafeGateProcess) -> tuple[str, int]:
    url = urllib.parse.urlsplit(gw.web_url)
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


def connect(gw: SafeGateProcess, source: str) -> socket.socket:
    return socket.create_connection(web_addr(gw), timeout=10, source_address=(source, 0))


def closed_by_peer(sock: socket.socket | ssl.SSLSocket, timeout: float = 10.0) -> bool:
    """True if the gateway closes the connection (EOF or reset) within `timeout` (a generous
    upper bound: a refused connection is closed at once)."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def answers(sock: socket.socket | ssl.SSLSocket) -> bool:
    """The connection is open and serves a request: the block page's short text."""
    sock.settimeout(10)
    sock.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        data += chunk
    return data.startswith(b"HTTP/1.1 403")


def promtool_ok(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_per_client_and_global_caps_refuse_at_once(unbound: ub.UnboundServer,
                                                   safegate_factory: Any,
                                                   sockets: list[socket.socket]) -> None:
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML, extra={"limits": {"web": {
                              "connections": 8, "per_client": 3, "idle_timeout": 120}}})
    # Idle connections from 127.0.0.2: three are held, the next two are closed at once.
    # (The listener accepts in the order the connections were made.)
    held = [connect(gw, "127.0.0.2") for _ in range(3)]
    sockets.extend(held)
    extra = [connect(gw, "127.0.0.2") for _ in range(2)]
    sockets.extend(extra)
    assert all(closed_by_peer(s) for s in extra)
    assert all(answers(s) for s in held)
    assert connections(gw) == 3
    # Another client is not held back by 127.0.0.2.
    status, _, page = http(gw, "GET", "/", accept="text/plain")
    assert status == 403 and BLOCKED in page
    assert metric(gw, 'safegate_web_refused_total{listener="web",reason="per_client"}') == 2
    wait_for(lambda: connections(gw) == 3, 10.0, what="127.0.0.1's connection released")

    # Eight open in all (the cap): the next one, from anyone, is closed at once.
    more = [connect(gw, source) for source in ["127.0.0.3"] * 3 + ["127.0.0.4"] * 2]
    sockets.extend(more)
    wait_for(lambda: connections(gw) == 8, 10.0, what="eight connections open")
    late = connect(gw, "127.0.0.5")
    sockets.append(late)
    assert closed_by_peer(late)
    assert metric(gw, 'safegate_web_refused_total{listener="web",reason="global"}') == 1
    for sock in more:
        sock.close()
    wait_for(lambda: connections(gw) == 3, 10.0, what="the closed ones are released")
    assert http(gw, "GET", "/", accept="text/plain")[0] == 403
    promtool_ok(gw.metrics_text())


def trickle(sock: socket.socket | ssl.SSLSocket, data: bytes) -> int:
    """Send `data` a byte at a time, 0.1 s apart, until the gateway closes the connection;
    the number of bytes sent by then (len(data) if it never did)."""
    sock.settimeout(10)
    for sent in range(len(data)):
        try:
            sock.send(data[sent:sent + 1])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return sent
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            try:
                if not sock.recv(4096):
                    return sent + 1
            except (ConnectionResetError, ssl.SSLError):
                return sent + 1
    return len(data)


# 90 s of trickling at most (the generous bound): the gateway must close well before.
SLOW_HEADER = (f"GET / HTTP/1.1\r\nHost: {BLOCKED}\r\nX-Pad: " + "a" * 900 + "\r\n\r\n").encode()
SLOW_BODY = (f"POST /report HTTP/1.1\r\nHost: {BLOCKED}\r\n"
             "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 900\r\n\r\n"
             ).encode()


def test_trickled_header_and_body_and_idle_connections_are_closed(
        unbound: ub.UnboundServer, safegate_factory: Any,
        sockets: list[socket.socket]) -> None:
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML, extra={"limits": {"web": {
                              "header_timeout": 1.0, "request_timeout": 2.0,
                              "idle_timeout": 2.0}}})
    # Slowloris: every byte arrives well within any per-read timeout; the header never ends.
    slow = connect(gw, "127.0.0.2")
    sockets.append(slow)
    assert trickle(slow, SLOW_HEADER) < len(SLOW_HEADER)
    assert metric(gw, 'safegate_web_closed_total{listener="web",reason="header_timeout"}') == 1

    # Headers sent at once, the body a byte at a time.
    body = connect(gw, "127.0.0.3")
    sockets.append(body)
    body.sendall(SLOW_BODY)
    assert trickle(body, b"k" * 900) < 900
    assert metric(gw, 'safegate_web_closed_total{listener="web",reason="request_timeout"}') == 1

    # A keep-alive connection that asks nothing more is closed after idle_timeout.
    idle = connect(gw, "127.0.0.4")
    sockets.append(idle)
    assert answers(idle)
    assert closed_by_peer(idle, timeout=30.0)
    assert metric(gw, 'safegate_web_closed_total{listener="web",reason="idle"}') == 1
    wait_for(lambda: connections(gw) == 0, 10.0, what="every connection released")
    assert http(gw, "GET", "/", accept="text/plain")[0] == 403
    promtool_ok(gw.metrics_text())


def test_web_tls_has_the_same_caps_and_deadlines(tmp_path: Path, unbound: ub.UnboundServer,
                                                 safegate_factory: Any) -> None:
    cert, key = make_cert(tmp_path)
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML, extra={
                              "web": {"tls": {"cert": str(cert), "key": str(key)}},
                              "limits": {"web": {"per_client": 2, "header_timeout": 1.0,
                                                 "idle_timeout": 120}}})
    ctx = ssl.create_default_context(cafile=str(cert))
    opened: list[socket.socket] = []
    try:
        def tls(source: str) -> ssl.SSLSocket:
            sock = ctx.wrap_socket(connect(gw, source), server_hostname="localhost")
            opened.append(sock)
            return sock

        def closed_in_handshake(source: str) -> bool:
            """Refused: closed at once, before the handshake could end (or just after)."""
            try:
                sock = tls(source)
            except (ssl.SSLError, ConnectionResetError):
                return True
            return closed_by_peer(sock)

        held = [tls("127.0.0.2") for _ in range(2)]
        assert closed_in_handshake("127.0.0.2")
        assert all(answers(s) for s in held)
        assert connections(gw) == 2
        assert metric(gw, 'safegate_web_refused_total{listener="web",reason="per_client"}') == 1
        slow = tls("127.0.0.3")
        assert trickle(slow, SLOW_HEADER) < len(SLOW_HEADER)
        assert metric(gw,
                      'safegate_web_closed_total{listener="web",reason="header_timeout"}') == 1
        # Connections that never start their handshake count too, and are cut at
        # header_timeout (the handshake is part of what is due by then).
        silent = [connect(gw, "127.0.0.4") for _ in range(3)]
        opened.extend(silent)
        assert closed_by_peer(silent[2])       # the third: per_client reached, at once
        assert metric(gw, 'safegate_web_refused_total{listener="web",reason="per_client"}') == 2
        assert closed_by_peer(silent[0], timeout=30.0) and closed_by_peer(silent[1])
        assert metric(gw,
                      'safegate_web_closed_total{listener="web",reason="header_timeout"}') == 3
        # Gone in the middle of a handshake, or plain HTTP on the TLS port: nothing stays held.
        for _ in range(3):
            connect(gw, "127.0.0.5").close()
        outgoing = ssl.MemoryBIO()
        half = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
        with contextlib.suppress(ssl.SSLWantReadError):
            half.do_handshake()
        hello = connect(gw, "127.0.0.5")
        opened.append(hello)
        hello.sendall(outgoing.read())          # a ClientHello, then the client is gone
        hello.close()
        plain = connect(gw, "127.0.0.5")
        opened.append(plain)
        plain.sendall(REQUEST)
        assert closed_by_peer(plain)
        wait_for(lambda: connections(gw) == 2, 10.0, what="only the two held connections remain")
        assert all(answers(s) for s in held)
    finally:
        for sock in opened:
            sock.close()


def test_guard_counts_ipv6_by_64_and_exempts_trusted_frontends() -> None:
    """The bookkeeping behind the caps, without sockets: what a per-client place is."""
    from ipaddress import ip_network

    from prometheus_client import CollectorRegistry

    from gateway.config.limits import WebLimits
    from gateway.http.guard import ConnectionGuard, WebMetrics, client_key

    assert client_key(("2001:db8:0:1::1", 443, 0, 0)) == client_key(("2001:db8:0:1:ff::9", 1))
    assert client_key(("2001:db8:0:2::1", 443, 0, 0)) != client_key(("2001:db8:0:1::1", 1))
    assert client_key(("::ffff:192.0.2.7", 1, 0, 0)) == "192.0.2.7"
    guard = ConnectionGuard(WebLimits(connections=4, per_client=1), WebMetrics(
        CollectorRegistry()), "web", lambda: (ip_network("192.0.2.0/24"),))
    front = client_key(("192.0.2.10", 1))
    assert [guard.admit(front, "192.0.2.10") for _ in range(3)] == [None, None, None]
    other = client_key(("198.51.100.1", 1))
    assert guard.admit(other, "198.51.100.1") is None
    assert guard.admit(other, "198.51.100.1") == "global"
    guard.release(front)
    assert guard.admit(other, "198.51.100.1") == "per_client"


def test_one_guard_covers_every_web_listen_address(unbound: ub.UnboundServer,
                                                   safegate_factory: Any,
                                                   sockets: list[socket.socket]) -> None:
    """Dual stack (issue #14 item 4): limits.web.connections counts the IPv4 and the IPv6
    listener together, so a second address family does not double the cap."""
    from tests.support.procs import free_port

    port = free_port(udp=False)
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML, extra={
                              "web": {"listen": [f"127.0.0.1:{port}", f"[::1]:{port}"]},
                              "limits": {"web": {"connections": 4, "per_client": 3,
                                                 "idle_timeout": 120}}})
    held = [connect(gw, "127.0.0.2") for _ in range(3)]
    held.append(socket.create_connection(("::1", port), timeout=10))
    sockets.extend(held)
    wait_for(lambda: connections(gw) == 4, 10.0, what="four connections open")
    late = socket.create_connection(("::1", port), timeout=10)
    sockets.append(late)
    assert closed_by_peer(late)
    assert metric(gw, 'safegate_web_refused_total{listener="web",reason="global"}') == 1
    assert all(answers(s) for s in held)
