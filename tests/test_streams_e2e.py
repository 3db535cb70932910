"""DNS over TCP and TLS under hostile clients (issue #10): limits.tcp / limits.dot.

A real gateway in front of a real unbound, attacked at a small scale by plain sockets: a
client that pipelines and never reads, one host taking every slot, a frame (or a TLS
handshake) trickled a byte at a time, a client that half-closes. 127.0.0.2, .5 and .6 are in
no network of POLICY (answered REFUSED); 127.0.0.1, .3 and .4 are inside.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest

from gateway.dns.streams import client_key
from tests.support import unbound as ub
from tests.support.certs import make_cert
from tests.support.procs import SafeGateProcess, free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

POLICY = """\
tiers:
  kids: {block: [adult], answer: blockpage}
  staff: {block: []}
networks:
  - {name: kids-v4, cidrs: ["127.0.0.1/32", "127.0.0.3/32"], tier: kids}
  - {name: staff-net, cidrs: ["127.0.0.4/32"], tier: staff}
"""
LISTS = {"adult.txt": "adult-site.test\n"}
LISTS_YAML = "categories:\n  adult:\n    - {path: adult.txt, format: domains}\n"
OUTSIDE = "127.0.0.2"


def start(factory: Any, unbound: ub.UnboundServer, **extra: Any) -> SafeGateProcess:
    gw: SafeGateProcess = factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                                  lists=LISTS, lists_yaml=LISTS_YAML, extra=extra)
    return gw


def frame(name: str, qid: int, rdtype: str = "A") -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=False)
    q.id = qid
    wire = q.to_wire()
    return struct.pack(">H", len(wire)) + wire


def read_frames(sock: socket.socket, count: int) -> list[dns.message.Message]:
    """Up to `count` answers, fewer if the server closes first."""
    data, out = b"", []
    while len(out) < count:
        try:
            chunk = sock.recv(65535)
        except OSError:   # reset, timeout, TLS cut short
            break
        if not chunk:
            break
        data += chunk
        while len(data) >= 2 and len(data) >= 2 + struct.unpack_from(">H", data)[0]:
            size = struct.unpack_from(">H", data)[0]
            out.append(dns.message.from_wire(data[2:2 + size]))
            data = data[2 + size:]
    return out


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed (EOF or reset), waiting up to the socket's timeout."""
    try:
        return sock.recv(65535) == b""
    except TimeoutError:
        return False
    except (ConnectionResetError, ssl.SSLError):   # reset, or TLS closed without close_notify
        return True


def trickle_until_closed(sock: socket.socket, data: bytes, timeout: float = 30) -> int:
    """Send `data` a byte every 0.2 s; the bytes sent when the server closed the connection."""
    deadline = time.monotonic() + timeout
    for i in range(len(data)):
        assert time.monotonic() < deadline, f"still open after {timeout}s of trickling"
        try:
            sock.send(data[i:i + 1])
        except OSError:
            return i
        sock.settimeout(0.2)
        if closed_by_server(sock):
            return i + 1
    raise AssertionError("the whole frame was trickled in and the connection is still open")


def metric(gw: SafeGateProcess, name: str, **labels: str) -> float:
    text = gw.metrics_text()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    assert m, f"{name}{{{want}}} not in /metrics"
    return float(m.group(1))


def promtool_ok(gw: SafeGateProcess) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed"
    proc = subprocess.run([promtool, "check", "metrics"], input=gw.metrics_text(),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def flood_without_reading(gw: SafeGateProcess, sock: socket.socket) -> tuple[int, int]:
    """Pipeline up to 24 MiB of queries on `sock`, never reading; (bytes sent, peak RSS KiB).

    Sending stops when the gateway takes no more for 3 s (it stopped reading) or closes.
    """
    one = frame("x.outside.test", 7)
    chunk = one * ((1 << 20) // len(one))
    sent, peak = 0, rss_kib(gw.pid)
    last_progress = time.monotonic()
    sock.settimeout(0.5)
    while sent < 24 * (1 << 20) and time.monotonic() - last_progress < 3:
        try:
            sent += sock.send(chunk)
            last_progress = time.monotonic()
        except TimeoutError:
            pass
        except OSError:   # closed by the gateway
            break
        peak = max(peak, rss_kib(gw.pid))
    return sent, max(peak, rss_kib(gw.pid))


def tcp_conn(gw: SafeGateProcess, source: str, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.dns_port), timeout=timeout,
                                    source_address=(source, 0))


def answered(sock: socket.socket, qid: int) -> bool:
    """One query on `sock`: True if answered (any RCODE), False if the server closed it."""
    try:
        sock.sendall(frame(ub.ALLOWED, qid))
    except (BrokenPipeError, ConnectionResetError):
        return False
    got = read_frames(sock, 1)
    return bool(got) and got[0].id == qid


# ---------------------------------------------------------------- TCP


def test_client_that_never_reads_is_bounded_then_closed(unbound: ub.UnboundServer,
                                                        safegate_factory: Any) -> None:
    """#10.3: pipelining 24 MB of queries without reading cannot grow the gateway's memory.

    Bound: per connection the gateway keeps at most limits.tcp.queued_bytes of answers
    (256 KiB) and one read of unparsed queries (256 KiB) before it stops reading; 16 MiB
    covers that plus allocator and loop noise many times over (measured: about 1 MiB, the
    client's 8 MB ending in kernel buffers). Without the bound every query was parsed and
    its answer buffered: 58 MiB of RSS for 26 MB sent.
    """
    gw = start(safegate_factory, unbound, limits={"tcp": {"idle_timeout": 2}})
    assert gw.query(ub.ALLOWED, tcp=True).answer   # warm: first query's allocations done
    before = rss_kib(gw.pid)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # and it never reads
        s.bind((OUTSIDE, 0))
        s.connect(("127.0.0.1", gw.dns_port))
        sent, peak = flood_without_reading(gw, s)
        assert peak - before < 16 * 1024, f"RSS grew {peak - before} KiB for {sent} bytes sent"
        # the client has not read for idle_timeout while stalled: closed and counted
        wait_for(lambda: metric(gw, "safegate_dns_stream_closed_total", protocol="tcp",
                                reason="backpressure") == 1, 30, what="backpressure close")
        wait_for(lambda: metric(gw, "safegate_dns_stream_connections", protocol="tcp") == 0,
                 10, what="slot freed")
    assert gw.query(ub.ALLOWED, tcp=True).answer
    assert "it has not read its answers" in gw.stderr_text()
    promtool_ok(gw)


def test_half_closed_client_gets_every_answer(unbound: ub.UnboundServer,
                                              safegate_factory: Any) -> None:
    """#10.9: queries, then shutdown(SHUT_WR): every answer arrives (upstream ones too)."""
    gw = start(safegate_factory, unbound, limits={"tcp": {"queries_per_connection": 8}})
    names = [f"half-{i}.test" for i in range(40)]   # cache misses: NXDOMAIN from unbound
    names += [ub.ALLOWED, "adult-site.test"]
    with tcp_conn(gw, "127.0.0.1", timeout=10) as s:
        s.sendall(b"".join(frame(n, i + 1) for i, n in enumerate(names)))
        s.shutdown(socket.SHUT_WR)
        got = {m.id: m for m in read_frames(s, len(names) + 1)}   # +1: reads to EOF
        assert closed_by_server(s)
    assert set(got) == set(range(1, len(names) + 1))
    assert all(got[i + 1].rcode() == dns.rcode.NXDOMAIN for i in range(40))
    assert got[41].answer[0][0].address == ub.ALLOWED_A
    assert got[42].rcode() == dns.rcode.NOERROR and got[42].answer   # blocked: the block page


def test_one_host_cannot_take_the_tcp_table(unbound: ub.UnboundServer,
                                            safegate_factory: Any) -> None:
    """#10.4: per-client cap, the outside share, and eviction for an inside client."""
    gw = start(safegate_factory, unbound,
               limits={"tcp": {"connections": 6, "per_client": 3, "outside": 4}})
    held: list[socket.socket] = []
    try:
        results = []
        for i in range(5):   # one host in no network tries 5 connections
            s = tcp_conn(gw, OUTSIDE)
            held.append(s)
            results.append(answered(s, 100 + i))
        assert results == [True, True, True, False, False]
        s = tcp_conn(gw, "127.0.0.5")
        held.append(s)
        assert answered(s, 200)   # 4 outside connections: the share is full
        s = tcp_conn(gw, "127.0.0.6")
        held.append(s)
        assert not answered(s, 201)
        for i in range(2):       # an inside client fills the table
            s = tcp_conn(gw, "127.0.0.3")
            held.append(s)
            assert answered(s, 300 + i)
        assert metric(gw, "safegate_dns_stream_connections", protocol="tcp") == 6
        s = tcp_conn(gw, "127.0.0.1")   # full, yet an inside client is served ...
        held.append(s)
        assert answered(s, 400)
        held[0].settimeout(10)
        assert closed_by_server(held[0])   # ... in the oldest outside connection's slot
        assert answered(held[1], 101)      # the others stay
        assert metric(gw, "safegate_dns_stream_refused_total", protocol="tcp",
                      reason="per_client") == 2
        assert metric(gw, "safegate_dns_stream_refused_total", protocol="tcp",
                      reason="outside") == 1
        assert metric(gw, "safegate_dns_stream_closed_total", protocol="tcp",
                      reason="evicted") == 1
        assert metric(gw, "safegate_dns_stream_connections", protocol="tcp") == 6
    finally:
        for s in held:
            s.close()
    log = gw.stderr_text()
    assert log.count(f"refused a connection from {OUTSIDE}") == 1   # once a minute per client
    promtool_ok(gw)


def test_ipv6_clients_are_capped_per_64_and_front_ends_are_not(unbound: ub.UnboundServer,
                                                                safegate_factory: Any) -> None:
    """per_client counts an IPv6 /64 as one client (one host usually owns it); a trusted
    front end (dnsdist) carries many clients on its connections, so it has no per-client cap
    (the global one still holds)."""
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") \
        == "2001:0db8:0001:0002::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("fe80::1%lo") != client_key("fe80::2%lo")   # a LAN shares fe80::/64
    assert client_key("192.0.2.1") == "192.0.2.1"
    gw = start(safegate_factory, unbound, dns={"trusted_frontends": ["127.0.0.5/32"]},
               limits={"tcp": {"per_client": 2}})
    held: list[socket.socket] = []
    try:
        for i in range(3):
            s = socket.create_connection(("::1", gw.dns_port), timeout=5)
            held.append(s)
            assert answered(s, 10 + i) == (i < 2)
        for i in range(4):
            s = tcp_conn(gw, "127.0.0.5")
            held.append(s)
            assert answered(s, 20 + i)
    finally:
        for s in held:
            s.close()
    assert metric(gw, "safegate_dns_stream_refused_total", protocol="tcp",
                  reason="per_client") == 1


def test_trickled_frame_is_closed_after_frame_timeout(unbound: ub.UnboundServer,
                                                      safegate_factory: Any) -> None:
    """#10.4: one byte every 0.2 s never completes a 200-byte frame: closed at frame_timeout,
    though every byte arrives well within idle_timeout."""
    gw = start(safegate_factory, unbound,
               limits={"tcp": {"frame_timeout": 1, "idle_timeout": 60}})
    data = frame("a" * 60 + "." + "b" * 60 + ".trickle.test", 9)
    assert len(data) > 100
    with tcp_conn(gw, "127.0.0.1") as s:
        assert answered(s, 1)   # a complete frame first: then the connection is in use
        assert trickle_until_closed(s, data) < len(data)
    assert metric(gw, "safegate_dns_stream_closed_total", protocol="tcp",
                  reason="frame_timeout") == 1
    assert "did not complete within 1s" in gw.stderr_text()


# ---------------------------------------------------------------- DoT


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


def start_dot(factory: Any, unbound: ub.UnboundServer, certs: tuple[Path, Path],
              dot_limits: dict[str, Any]) -> SafeGateProcess:
    port = free_port(v6=False, udp=False)
    gw = start(factory, unbound, dns={"tls": {"listen": [f"127.0.0.1:{port}"],
                                              "cert": str(certs[0]), "key": str(certs[1])}},
               limits={"dot": dot_limits})
    gw.dot_port = port   # type: ignore[attr-defined]
    return gw


def dot_conn(gw: SafeGateProcess, certs: tuple[Path, Path], source: str
             ) -> ssl.SSLSocket | None:
    """A DoT connection from `source`, None if the gateway closed it before TLS."""
    ctx = ssl.create_default_context(cafile=str(certs[0]))
    raw = socket.create_connection(("127.0.0.1", gw.dot_port), timeout=5,  # type: ignore
                                   source_address=(source, 0))
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except (ssl.SSLError, ConnectionResetError, OSError):
        raw.close()
        return None


def test_one_host_cannot_take_the_dot_table(unbound: ub.UnboundServer, safegate_factory: Any,
                                            certs: tuple[Path, Path]) -> None:
    gw = start_dot(safegate_factory, unbound, certs,
                   {"connections": 3, "per_client": 2, "outside": 3})
    held: list[ssl.SSLSocket] = []
    try:
        for i in range(2):
            s = dot_conn(gw, certs, OUTSIDE)
            assert s is not None
            held.append(s)
            assert answered(s, 10 + i)
        assert dot_conn(gw, certs, OUTSIDE) is None   # per_client: refused before TLS
        s = dot_conn(gw, certs, "127.0.0.1")
        assert s is not None
        held.append(s)
        assert answered(s, 20)                         # the table is full now
        s = dot_conn(gw, certs, "127.0.0.4")           # inside: takes an outside slot
        assert s is not None
        held.append(s)
        assert answered(s, 21)
        held[0].settimeout(10)
        assert closed_by_server(held[0])
        assert metric(gw, "safegate_dns_stream_refused_total", protocol="dot",
                      reason="per_client") == 1
        assert metric(gw, "safegate_dns_stream_closed_total", protocol="dot",
                      reason="evicted") == 1
        assert metric(gw, "safegate_dns_stream_connections", protocol="dot") == 3
    finally:
        for s in held:
            s.close()
    promtool_ok(gw)


def test_dot_client_that_never_reads_is_bounded_then_closed(
        unbound: ub.UnboundServer, safegate_factory: Any, certs: tuple[Path, Path]) -> None:
    """#10.3 over TLS: the same bound (see the TCP test) holds under the TLS layer."""
    gw = start_dot(safegate_factory, unbound, certs, {"idle_timeout": 2})
    s = dot_conn(gw, certs, OUTSIDE)
    assert s is not None
    with s:
        assert answered(s, 1)
        before = rss_kib(gw.pid)
        sent, peak = flood_without_reading(gw, s)
        assert peak - before < 16 * 1024, f"RSS grew {peak - before} KiB for {sent} bytes sent"
        wait_for(lambda: metric(gw, "safegate_dns_stream_closed_total", protocol="dot",
                                reason="backpressure") == 1, 30, what="backpressure close")
        wait_for(lambda: metric(gw, "safegate_dns_stream_connections", protocol="dot") == 0,
                 10, what="slot freed")


def test_dot_trickled_handshake_and_frame_are_closed(unbound: ub.UnboundServer,
                                                     safegate_factory: Any,
                                                     certs: tuple[Path, Path]) -> None:
    """#10.4 for DoT: a ClientHello or a DNS frame trickled in is closed at frame_timeout."""
    gw = start_dot(safegate_factory, unbound, certs, {"frame_timeout": 1, "idle_timeout": 60})
    hello = bytes.fromhex("160301") + b"\x02\x00" + b"\x01" * 512   # a record never finished
    with socket.create_connection(("127.0.0.1", gw.dot_port), timeout=30) as s:  # type: ignore
        assert trickle_until_closed(s, hello) < len(hello)
    wait_for(lambda: metric(gw, "safegate_dns_stream_closed_total", protocol="dot",
                            reason="frame_timeout") == 1, 10, what="handshake timeout counted")
    s2 = dot_conn(gw, certs, "127.0.0.1")
    assert s2 is not None
    with s2:
        assert answered(s2, 1)
        data = frame("a" * 60 + ".trickle.test", 2)
        assert trickle_until_closed(s2, data) < len(data)
    wait_for(lambda: metric(gw, "safegate_dns_stream_closed_total", protocol="dot",
                            reason="frame_timeout") == 2, 10, what="frame timeout counted")


def test_worker_processes_apply_the_tcp_limits_and_report_them(unbound: ub.UnboundServer,
                                                                safegate_factory: Any) -> None:
    """dns.workers: 2: each process holds its own table (per_client 2 each, so 2 to 4
    connections from one host get in) and the primary's /metrics counts the worker's too."""
    gw = start(safegate_factory, unbound, dns={"workers": 2},
               limits={"tcp": {"per_client": 2}})
    held = [tcp_conn(gw, OUTSIDE) for _ in range(12)]
    try:
        accepted = sum(answered(s, 50 + i) for i, s in enumerate(held))
        assert 2 <= accepted <= 4
        wait_for(lambda: metric(gw, "safegate_dns_stream_refused_total", protocol="tcp",
                                reason="per_client") == 12 - accepted, 15,
                 what="the worker's refusals reach the primary's /metrics")
        wait_for(lambda: metric(gw, "safegate_dns_stream_connections", protocol="tcp")
                 == accepted, 15, what="open connections summed over the processes")
    finally:
        for s in held:
            s.close()
