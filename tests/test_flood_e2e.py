"""Random-subdomain ("water torture") floods against a real gateway in front of a real unbound:
the answer cache keeps the names clients ask again, and the in-flight share of the flooded zone
leaves room for everyone else's misses (issue #12 item 2)."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest

from tests.support import unbound as ub
from tests.support.procs import SafeGateProcess
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

POLICY = """\
tiers:
  staff: {block: []}
networks:
  - {name: local, cidrs: ["127.0.0.0/8", "::1/128"], tier: staff}
"""
NO_RRL = {"rrl": {"enabled": False}}   # replies here are counted, never rate limited


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a scrape (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and ",".join(
                sorted(re.findall(r'\w+="[^"]*"', m.group(2) or ""))) == want:
            return float(m.group(3))
    return 0.0


def burst(port: int, names: list[str], timeout: float, source: str = "127.0.0.1"
          ) -> dict[str, dns.message.Message]:
    """Send every query at once from one UDP socket; collect replies until all are in."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((source, 0))
    sock.settimeout(0.2)
    try:
        for i, name in enumerate(names):
            q = dns.message.make_query(name, "A", use_edns=0, payload=1232)
            q.id = i
            sock.sendto(q.to_wire(), ("127.0.0.1", port))
        got: dict[str, dns.message.Message] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(names) and time.monotonic() < deadline:
            try:
                msg = dns.message.from_wire(sock.recv(4096))
            except TimeoutError:
                continue
            got[names[msg.id]] = msg
        return got
    finally:
        sock.close()


def unbound_saw(server: ub.UnboundServer, name: str) -> int:
    """How many queries for `name` unbound logged (log-queries: yes)."""
    return len(re.findall(rf"info: 127\.0\.0\.1 {re.escape(name)}\. A IN",
                          server.log_text()))


def logged_up_to_now(server: ub.UnboundServer, marker: str) -> None:
    """Ask unbound itself for `marker` and wait until its log shows it: every query unbound
    received before is in the log by then."""
    server.query(marker)
    wait_for(lambda: unbound_saw(server, marker) == 1, what=f"unbound logged {marker}")


# ---------------------------------------------------------------- cache admission


def test_a_flood_of_unique_nxdomains_does_not_evict_popular_answers(
        unbound_factory: Any, safegate_factory: Any) -> None:
    """With the plain LRU, 300 unique NXDOMAINs through a 100-entry cache evicted all 40
    popular names, and each was fetched from unbound again."""
    upstream = unbound_factory(extra_config=["log-queries: yes"])
    gw: SafeGateProcess = safegate_factory(
        upstream_port=0, policies={"p.yaml": POLICY},
        extra={"dns": {"upstreams": [upstream.upstream], "cache": {"size": 100}},
               "limits": {**NO_RRL, "upstream": {"inflight_per_zone": 1024}}})
    popular = [f"p{i}.{ub.BLOCKED_NAMES[0]}" for i in range(40)]   # redirect zone: A for all
    for name in popular:   # over TCP: no per-profile reply memo, every answer is the cache's
        for _ in range(2):   # the second ask promotes it out of probation
            r = gw.query(name, tcp=True)
            assert r.rcode() == dns.rcode.NOERROR
            assert r.answer[0][0].address == ub.BLOCKED_TARGET_A
    flood = [f"x{i}.y{i}.flood.test" for i in range(300)]
    got = burst(gw.dns_port, flood, timeout=60)
    assert len(got) == 300 and {m.rcode() for m in got.values()} == {dns.rcode.NXDOMAIN}
    before = gw.metrics_text()
    assert metric(before, "safegate_cache_entries") == 100
    assert metric(before, "safegate_cache_segment_entries", segment="protected") == 40
    assert metric(before, "safegate_cache_segment_evictions_total", segment="probation") >= 240
    assert metric(before, "safegate_cache_segment_evictions_total", segment="protected") == 0
    for name in popular:
        r = gw.query(name, tcp=True)
        assert r.rcode() == dns.rcode.NOERROR
        assert r.answer[0][0].address == ub.BLOCKED_TARGET_A
    after = gw.metrics_text()
    assert metric(after, "safegate_cache_hits_total") - \
        metric(before, "safegate_cache_hits_total") == 40
    logged_up_to_now(upstream, "marker.allowed.test")
    assert {unbound_saw(upstream, name) for name in popular} == {1}   # fetched once, ever


# ---------------------------------------------------------------- the flooded zone's share


class SlowAuthority:
    """flood.test's authoritative server (asyncio, in a thread): every answer (NXDOMAIN + SOA)
    goes out `delay` seconds after its query came in."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.queries = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        transport, _ = self.loop.run_until_complete(self.loop.create_datagram_endpoint(
            lambda: _Delayed(self), local_addr=("127.0.0.1", 0)))
        self.port = transport.get_extra_info("sockname")[1]
        self.ready.set()
        self.loop.run_forever()
        transport.close()
        self.loop.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class _Delayed(asyncio.DatagramProtocol):
    def __init__(self, server: SlowAuthority) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.queries += 1
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        r.set_rcode(dns.rcode.NXDOMAIN)
        r.authority.append(dns.rrset.from_text(
            "flood.test.", 60, "IN", "SOA", "ns.flood.test. h.flood.test. 1 3600 600 86400 60"))
        asyncio.get_running_loop().call_later(self.server.delay, self._send, r.to_wire(), addr)

    def _send(self, reply: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(reply, addr)


@pytest.fixture
def slow_authority() -> Iterator[SlowAuthority]:
    server = SlowAuthority(delay=0.3)
    yield server
    server.close()


def dropped(text: str) -> float:
    return sum(metric(text, "safegate_upstream_dropped_total", reason=r)
               for r in ("zone", "inflight"))


class Flooder:
    """One client (127.0.0.1) sending unique `<r>.<r>.flood.test` names until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.replies: dict[tuple[int, tuple[int, ...]], int] = {}   # (rcode, EDE codes) -> n
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        try:
            while not self.stop.is_set():
                for _ in range(50):
                    n = self.sent
                    q = dns.message.make_query(f"a{n}.b{n}.flood.test", "A", use_edns=0)
                    sock.sendto(q.to_wire(), ("127.0.0.1", self.port))
                    self.sent += 1
                try:
                    while True:
                        msg = dns.message.from_wire(sock.recv(4096))
                        kind = (msg.rcode(), tuple(o.code for o in msg.options
                                                   if isinstance(o, dns.edns.EDEOption)))
                        self.replies[kind] = self.replies.get(kind, 0) + 1
                except BlockingIOError:
                    pass
                self.stop.wait(0.02)
        finally:
            sock.close()


def test_a_slow_zones_flood_leaves_other_clients_misses_resolving(
        unbound_factory: Any, slow_authority: SlowAuthority, safegate_factory: Any) -> None:
    """Before the share was the registrable domain, `<r>.<r>.flood.test` counted against a new
    parent zone per query: the flood took every in-flight slot, and the other client's misses
    got SERVFAIL (EDE 14)."""
    others = [f"site{i}.test" for i in range(30)]   # 30 zones, each under its share
    upstream = unbound_factory([f"{n}. 300 IN A 192.0.2.{100 + i}" for i, n in enumerate(others)],
                               extra_config=[
        'local-zone: "flood.test." transparent',   # not the static test. zone: ask its server
        'stub-zone:', '  name: "flood.test."', f"  stub-addr: 127.0.0.1@{slow_authority.port}",
        'server:', "  qname-minimisation: no"])
    gw: SafeGateProcess = safegate_factory(
        upstream_port=0, policies={"p.yaml": POLICY},
        extra={"dns": {"upstreams": [upstream.upstream]},
               "limits": {**NO_RRL, "upstream": {"inflight": 64, "inflight_per_zone": 16}}})
    flooder = Flooder(gw.dns_port)
    flooder.thread.start()
    try:
        wait_for(lambda: dropped(gw.metrics_text()) >= 200, timeout=30,
                 what="the flood ran into an in-flight cap")
        # Another client (127.0.0.2): misses through the same unbound, while the flood goes on.
        got = burst(gw.dns_port, others, timeout=20, source="127.0.0.2")
        assert len(got) == 30
        assert {m.rcode() for m in got.values()} == {dns.rcode.NOERROR}
        assert [got[n].answer[0][0].address for n in others] == \
            [f"192.0.2.{100 + i}" for i in range(30)]
        nx = burst(gw.dns_port, [f"nothing{i}.test" for i in range(10)], timeout=20,
                   source="127.0.0.2")
        assert {m.rcode() for m in nx.values()} == {dns.rcode.NXDOMAIN} and len(nx) == 10
        flood_sent = flooder.sent
    finally:
        flooder.stop.set()
        flooder.thread.join(10)
    text = gw.metrics_text()
    assert metric(text, "safegate_upstream_dropped_total", reason="inflight") == 0
    # the flood's own queries over the share: SERVFAIL with EDE 14, one per refusal
    assert flooder.replies.get((dns.rcode.SERVFAIL, (14,)), 0) >= 200
    # the authority saw at most the share at a time: far fewer questions than were flooded
    assert 0 < slow_authority.queries < flood_sent // 4
