"""Batched UDP I/O (gateway/dns/_udpio.c, gateway/dns/udp_batch.py) on real sockets.

The extension is optional: without a compiler (or off Linux) these tests skip, unless
SAFEGATE_EXPECT_COMPILED=1 (the compiled CI pass) where a missing extension is a failure. The
asyncio listener is what SAFEGATE_PURE=1 runs; the gateway tests here run both and compare.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import sys
from types import ModuleType
from typing import Any

import dns.message
import dns.rcode
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.config.limits import UdpLimits
from gateway.dns.stats import StreamStats
from gateway.dns.tasks import Tasks
from gateway.dns.udp_batch import UdpBatchListener, batched_udp_io
from gateway.runtime.metrics import StreamCollector
from tests.support import unbound as ub
from tests.support.builders import make_profile, make_resolver
from tests.support.wait import async_wait_for, wait_for


@pytest.fixture(scope="module")
def udpio() -> ModuleType:
    io = batched_udp_io(pure=False)
    if io is None:
        if os.environ.get("SAFEGATE_EXPECT_COMPILED") == "1" and sys.platform.startswith("linux"):
            pytest.fail("SAFEGATE_EXPECT_COMPILED=1 but gateway.dns._udpio is not built")
        pytest.skip("batched UDP I/O not built (python setup.py build_ext --inplace; Linux)")
    return io


def bound(family: socket.AddressFamily, host: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, 0))
    s.setblocking(False)
    return s


def readable(s: socket.socket) -> bool:
    return bool(select.select([s], [], [], 0)[0])


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"),
                                              (socket.AF_INET6, "::1")])
def test_recv_and_send_batch_round_trip(udpio: ModuleType, family: socket.AddressFamily,
                                        host: str) -> None:
    server, client = bound(family, host), bound(family, host)
    with server, client:
        assert udpio.recv_batch(server.fileno(), 8) == []          # EAGAIN: nothing queued
        sent = [bytes([i]) * (12 + i) for i in range(20)]
        for d in sent:
            client.sendto(d, server.getsockname())
        wait_for(lambda: readable(server), 10)
        got = udpio.recv_batch(server.fileno(), 8)               # bounded by max
        while len(got) < 20:
            got += udpio.recv_batch(server.fileno(), 8)
        assert [d for d, _, _ in got] == sent
        assert {ip for _, ip, _ in got} == {host}
        replies = [(b"re" + d, name) for d, _, name in got]
        assert udpio.send_batch(server.fileno(), replies) == 20
        back = []
        while len(back) < 20:
            wait_for(lambda: readable(client), 10)
            back.append(client.recv(100))
        assert back == [r for r, _ in replies]


def test_a_truncated_read_is_flagged_and_a_full_size_datagram_is_whole(
        udpio: ModuleType) -> None:
    server, client = bound(socket.AF_INET, "127.0.0.1"), bound(socket.AF_INET, "127.0.0.1")
    with server, client:
        client.sendto(b"q" * 1000, server.getsockname())
        wait_for(lambda: readable(server), 10)
        [(data, ip, _)] = udpio.recv_batch(server.fileno(), 4, 512)
        assert data is None and ip == "127.0.0.1"              # never silently cut to 512
        big = os.urandom(65507)                                 # the largest IPv4 UDP payload
        client.sendto(big, server.getsockname())
        wait_for(lambda: readable(server), 10)
        [(data, _, _)] = udpio.recv_batch(server.fileno(), 4)
        assert data == big


def test_send_batch_stops_where_the_kernel_pushes_back(udpio: ModuleType, tmp_path: Any) -> None:
    # An AF_UNIX datagram receiver that never reads makes its sender see EAGAIN (loopback UDP
    # drops at the receiver instead): send_batch reports how many went, not an error.
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with server, client:
        client.bind(str(tmp_path / "c"))
        name = sockaddr_un(str(tmp_path / "c"))
        n = udpio.send_batch(server.fileno(), [(b"x" * 100, name)] * 5000)
        assert 0 < n < 5000
        assert udpio.send_batch(server.fileno(), [(b"x" * 100, name)]) == 0


def sockaddr_un(path: str) -> bytes:
    return struct.pack("=H", socket.AF_UNIX) + path.encode() + b"\0"


async def test_the_send_queue_is_bounded_and_flushes_in_order_once_the_client_reads(
        udpio: ModuleType, tmp_path: Any) -> None:
    # A client that never reads: replies wait in the listener's queue up to
    # limits.udp.send_queue_bytes, then are dropped and counted; once it reads, the queue
    # drains in order through the writability callback.
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "s"))
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.bind(str(tmp_path / "c"))
    client.setblocking(False)
    stats = StreamStats()
    listener = UdpBatchListener(server, make_resolver(make_profile()), Tasks(), None,
                                UdpLimits(send_queue_bytes=10_000), stats, udpio)
    listener.start()
    addr = ("127.0.0.1", sockaddr_un(str(tmp_path / "c")))
    try:
        for i in range(3000):
            listener.sendto(i.to_bytes(4, "big") + b"y" * 96, addr)
        # Replies finished outside a batch (upstream answers) leave together at the next
        # turn of the loop, in one send_batch.
        assert not listener.queue and len(listener._later) == 3000
        await asyncio.sleep(0)
        assert not listener._later
        assert listener.queue and listener.queued_bytes <= 10_000
        assert len(listener.queue) == 100
        assert stats.udp["send_dropped"] > 0
        queued = list(listener.queue)
        got: list[bytes] = []

        def drain() -> bool:
            while True:
                try:
                    got.append(client.recv(200))
                except BlockingIOError:
                    return not listener.queue and not readable(client)
        await async_wait_for(drain, 20)
        assert got[-100:] == [r for r, _ in queued]          # kept in order, none lost
        assert len(got) + stats.udp["send_dropped"] == 3000   # each reply sent or counted
        assert listener.queued_bytes == 0
        registry = CollectorRegistry()
        registry.register(StreamCollector(stats))
        assert (f"safegate_dns_udp_send_dropped_total {float(stats.udp['send_dropped'])}"
                in generate_latest(registry).decode())
    finally:
        listener.close()
        client.close()
    assert listener.is_closing() and server.fileno() == -1
    await asyncio.sleep(0)


POLICY = """\
tiers:
  kids: {block: [adult], answer: nxdomain}
networks:
  - {name: lab, cidrs: ["127.0.0.0/8", "::1/128"], tier: kids}
"""
LISTS = {"adult.txt": "adult-site.test\n"}
LISTS_YAML = "categories:\n  adult:\n    - {path: adult.txt, format: domains}\n"


def gateway(factory: Any, unbound: Any, pure: bool, **extra: Any) -> Any:
    return factory(upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
                   lists_yaml=LISTS_YAML,
                   extra={"limits": {"rrl": {"enabled": False}, **extra}},
                   env={"SAFEGATE_PURE": "1" if pure else ""})


@pytest.mark.integration
@pytest.mark.parametrize(("pure", "batch"), [(False, 64), (False, 3), (True, 64)],
                         ids=["batched", "batched-by-3", "asyncio"])
def test_a_burst_of_500_queries_from_several_sources_all_answered_right(
        udpio: ModuleType, unbound: Any, safegate_factory: Any, pure: bool, batch: int) -> None:
    # limits.udp.batch: 3 reads a burst in many small batches, each answered before the next.
    gw = gateway(safegate_factory, unbound, pure, udp={"batch": batch})
    says = "(UDP, TCP)" if pure else "(UDP batched, TCP)"
    assert says in gw.stderr_text()
    names = [("adult-site.test", dns.rcode.NXDOMAIN), (ub.ALLOWED, dns.rcode.NOERROR),
             ("www.adult-site.test", dns.rcode.NXDOMAIN), (ub.WWW_ALLOWED, dns.rcode.NOERROR)]
    clients = []
    for family, host in [(socket.AF_INET, "127.0.0.1")] * 3 + [(socket.AF_INET6, "::1")] * 2:
        s = bound(family, host)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        clients.append((s, host))
    expected: dict[tuple[int, int], int] = {}
    for k in range(100):                       # 5 sources x 100: sent without waiting
        for c, (s, host) in enumerate(clients):
            name, rcode = names[(k + c) % len(names)]
            q = dns.message.make_query(name, "A", use_edns=False)
            q.id = k * 7 + c
            expected[(c, q.id)] = rcode
            s.sendto(q.to_wire(), (host, gw.dns_port))
    seen: dict[tuple[int, int], int] = {}

    def collect() -> bool:
        for c, (s, _) in enumerate(clients):
            while readable(s):
                reply = dns.message.from_wire(s.recv(4096))
                seen[(c, reply.id)] = reply.rcode()
        return len(seen) == len(expected)
    try:
        wait_for(collect, 30)
    finally:
        for s, _ in clients:
            s.close()
    assert seen == expected


@pytest.mark.integration
def test_an_oversized_datagram_is_answered_as_the_asyncio_listener_does(
        udpio: ModuleType, unbound: Any, safegate_factory: Any) -> None:
    # A 60,000-byte "query" (a real header, then garbage): both listeners read it whole and
    # give the same answer (FORMERR from the header), and keep serving.
    q = dns.message.make_query(ub.ALLOWED, "A", use_edns=False)
    q.id = 4242
    datagram = q.to_wire()[:12] + b"\xff" * 60_000
    answers = []
    for pure in (False, True):
        gw = gateway(safegate_factory, unbound, pure)
        with bound(socket.AF_INET, "127.0.0.1") as s:
            s.sendto(datagram, ("127.0.0.1", gw.dns_port))
            wait_for(lambda s=s: readable(s), 10)
            answers.append(s.recv(65535))
        assert gw.query(ub.ALLOWED).rcode() == dns.rcode.NOERROR
    assert answers[0] == answers[1]
    reply = dns.message.from_wire(answers[0], question_only=True)
    assert reply.id == 4242 and reply.rcode() == dns.rcode.FORMERR


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.integration
def test_a_client_that_never_reads_cannot_grow_the_gateway(
        udpio: ModuleType, unbound: Any, safegate_factory: Any) -> None:
    gw = gateway(safegate_factory, unbound, False)
    assert "(UDP batched, TCP)" in gw.stderr_text()
    hostile = bound(socket.AF_INET, "127.0.0.1")
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # fills at once
    wire = dns.message.make_query(ub.ALLOWED, "A", use_edns=False).to_wire()
    for _ in range(2000):   # warm: memo, buffers
        hostile.sendto(wire, ("127.0.0.1", gw.dns_port))
    wait_for(lambda: gw.query(ub.ALLOWED).rcode() == dns.rcode.NOERROR, 10)
    before = rss_kib(gw.pid)
    with hostile:
        for _ in range(20):
            for _ in range(1000):
                hostile.sendto(wire, ("127.0.0.1", gw.dns_port))
            assert gw.query(ub.ALLOWED).rcode() == dns.rcode.NOERROR   # others still served
    # 20,000 unread replies (~1.2 MB) held nowhere: the kernel drops them at the client on
    # loopback, and the listener's queue is bounded by limits.udp.send_queue_bytes anyway.
    assert rss_kib(gw.pid) - before < 8 * 1024
    text = gw.metrics_text()
    assert "safegate_dns_udp_send_dropped_total 0.0" in text
