"""ISP identity behind a front end: dnsdist (Debian's) in front of SafeGate, end to end.

The subscriber's policy decides, not dnsdist's address: dnsdist's own address (127.0.0.2) is in
a `staff` network that blocks nothing, while the subscribers file puts 127.0.8.5 in `kids`.
The identity arrives as a PROXY v2 header (UDP and TCP) or as EDNS Client Subnet, and is
believed only from dns.trusted_frontends.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from gateway.dns import proxyproto
from gateway.policy.decide import EDE_BLOCKED, EDE_FILTERED
from tests.support import unbound as ub
from tests.support.data import FRONTENDS_LISTS, FRONTENDS_LISTS_YAML, FRONTENDS_POLICY
from tests.support.dnsdist import Dnsdist, start_dnsdist
from tests.support.procs import SafeGateProcess, free_port, write_gateway_config
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

FRONTEND = "127.0.0.2"          # dnsdist's source address towards SafeGate
KIDS_SUBSCRIBER = "127.0.8.5"   # subscribers.csv: kids, filtered (the subscriber chose it)
ISP_CUSTOMER = "127.0.8.6"      # no subscriber entry: the isp network's tier (teens)
UNTRUSTED = "127.0.0.3"         # a direct client in the lan network (staff)

SUBSCRIBERS = """\
prefix,tier,filtered
127.0.8.5,kids,yes
2001:db8:1200::/56,kids,yes
"""


def _ede(msg: dns.message.Message) -> list[int]:
    return [o.code for o in msg.options if isinstance(o, dns.edns.EDEOption)]


def _config(tmp: Path, upstream_port: int, **dns_extra: Any) -> Path:
    (tmp / "subscribers.csv").write_text(SUBSCRIBERS)
    return write_gateway_config(
        tmp, upstream_port=upstream_port, policies={"p.yaml": FRONTENDS_POLICY},
        lists=FRONTENDS_LISTS,
        lists_yaml=FRONTENDS_LISTS_YAML, ipv6=False,
        extra={"subscribers": "subscribers.csv",
               "dns": {"trusted_frontends": [f"{FRONTEND}/32"], "proxy_protocol": True,
                       **dns_extra}})


@pytest.fixture
def gw(unbound: ub.UnboundServer, safegate_factory: Any, tmp_path: Path) -> SafeGateProcess:
    return safegate_factory(_config(tmp_path, unbound.port))  # type: ignore[no-any-return]


@pytest.fixture
def fronts(gw: SafeGateProcess, tmp_path: Path) -> Iterator[dict[str, Dnsdist]]:
    backend = [("127.0.0.1", gw.dns_port)]
    started = {
        "proxy": start_dnsdist(tmp_path / "dd-proxy", listen="127.0.0.7", port=free_port(v6=False),
                               backends=backend, source=FRONTEND, proxy_protocol=True),
        "ecs": start_dnsdist(tmp_path / "dd-ecs", listen="127.0.0.8", port=free_port(v6=False),
                             backends=backend, source=FRONTEND, ecs=True),
    }
    yield started
    for front in started.values():
        front.stop()


def _ask(front: Dnsdist, source: str, name: str, *, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, "A", use_edns=0, payload=1232)
    if tcp:
        return dns.query.tcp(q, front.address, port=front.port, timeout=3, source=source)
    return dns.query.udp(q, front.address, port=front.port, timeout=3, source=source)


@pytest.mark.parametrize("kind", ["proxy", "ecs"])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_the_subscribers_policy_decides_through_dnsdist(fronts: dict[str, Dnsdist], kind: str,
                                                        tcp: bool) -> None:
    front = fronts[kind]
    # The kids subscriber: gambling blocked with EDE 17 Filtered (they chose this filtering).
    r = _ask(front, KIDS_SUBSCRIBER, "gamble.test", tcp=tcp)
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert _ede(r) == [EDE_FILTERED]
    # Another customer of the same ISP network: teens, gambling allowed, adult blocked (EDE 15).
    r = _ask(front, ISP_CUSTOMER, "gamble.test", tcp=tcp)
    assert r.rcode() == dns.rcode.NOERROR
    assert [rr.address for rr in r.answer[0]] == [ub.BLOCKED_TARGET_A]
    r = _ask(front, ISP_CUSTOMER, "adult.example", tcp=tcp)
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert _ede(r) == [EDE_BLOCKED]
    # A client in no network and no subscriber: refused, though dnsdist's own address is staff.
    r = _ask(front, "127.0.9.9", "gamble.test", tcp=tcp)
    assert r.rcode() == dns.rcode.REFUSED


def test_ecs_from_an_untrusted_client_is_ignored(gw: SafeGateProcess) -> None:
    q = dns.message.make_query("gamble.test", "A", use_edns=0, payload=1232,
                               options=[dns.edns.ECSOption(KIDS_SUBSCRIBER, 32)])
    r = dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2, source=UNTRUSTED)
    assert r.rcode() == dns.rcode.NOERROR          # staff (its own address), not kids
    assert [rr.address for rr in r.answer[0]] == [ub.BLOCKED_TARGET_A]


def _raw_query(name: str, qid: int = 0x4242) -> bytes:
    q = dns.message.make_query(name, "A", use_edns=0, payload=1232)
    q.id = qid
    return q.to_wire()


def test_proxy_header_from_an_untrusted_client_is_not_an_identity(gw: SafeGateProcess) -> None:
    header = proxyproto.build(KIDS_SUBSCRIBER, "127.0.0.1", 5353, 53)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((UNTRUSTED, 0))
        s.settimeout(1.0)
        s.sendto(header + _raw_query("gamble.test"), ("127.0.0.1", gw.dns_port))
        try:
            reply = s.recv(4096)
        except TimeoutError:
            reply = b""
    # Read as DNS, the header is garbage: never the inner query's answer.
    assert reply[:2] != b"\x42\x42"
    if reply:
        assert reply[3] & 0x0F in (dns.rcode.FORMERR, dns.rcode.NOTIMP)


def test_trusted_proxy_v2_with_an_ipv6_delegated_prefix_udp_and_tcp(gw: SafeGateProcess
                                                                     ) -> None:
    """An IPv6-only ISP: the subscriber's /56 decides, over UDP and over one TCP connection."""
    header = proxyproto.build("2001:db8:1200:ab:1::7", "2001:db8::53", 40000, 53)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((FRONTEND, 0))
        s.settimeout(2.0)
        s.sendto(header + _raw_query("gamble.test"), ("127.0.0.1", gw.dns_port))
        r = dns.message.from_wire(s.recv(4096))
    assert r.id == 0x4242 and r.rcode() == dns.rcode.NXDOMAIN and _ede(r) == [EDE_FILTERED]

    tcp_header = proxyproto.build("2001:db8:1200:ab:1::7", "2001:db8::53", 40000, 53, udp=False)
    with socket.create_connection(("127.0.0.1", gw.dns_port), timeout=2,
                                  source_address=(FRONTEND, 0)) as c:
        msgs = [_raw_query("gamble.test", 1), _raw_query("adult.example", 2)]
        c.sendall(tcp_header[:7])      # the header may arrive in pieces
        c.sendall(tcp_header[7:] + b"".join(struct.pack(">H", len(m)) + m for m in msgs))
        replies = [_read_frame(c) for _ in msgs]
    assert [(m.id, m.rcode(), _ede(m)) for m in replies] == [
        (1, dns.rcode.NXDOMAIN, [EDE_FILTERED]), (2, dns.rcode.NXDOMAIN, [EDE_FILTERED])]


def _read_frame(c: socket.socket) -> dns.message.Message:
    size = struct.unpack(">H", _recv_exact(c, 2))[0]
    return dns.message.from_wire(_recv_exact(c, size))


def _recv_exact(c: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = c.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


class _RecordingUpstream:
    """A stand-in upstream that records each query's EDNS options: only to see what SafeGate
    sends upstream (unbound cannot show us the ECS it received)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[str, list[dns.edns.Option]]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            q = dns.message.from_wire(data)
            self.seen.append((q.question[0].name.to_text(), list(q.options)))
            r = dns.message.make_response(q)
            r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.10"))
            self.sock.sendto(r.to_wire(), addr)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("forward", [False, True], ids=["stripped", "forwarded"])
def test_ecs_is_stripped_before_upstream_unless_configured(safegate_factory: Any, tmp_path: Path,
                                                           forward: bool) -> None:
    upstream = _RecordingUpstream()
    try:
        gw = safegate_factory(_config(tmp_path, upstream.port, forward_ecs=forward))
        q = dns.message.make_query("www.allowed.test", "A", use_edns=0, payload=1232,
                                   options=[dns.edns.ECSOption("127.0.8.6", 32)])
        r = dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2, source=FRONTEND)
        assert r.rcode() == dns.rcode.NOERROR
        names = [(name, [o for o in opts if isinstance(o, dns.edns.ECSOption)])
                 for name, opts in upstream.seen if name == "www.allowed.test."]
        assert len(names) == 1
        ecs = names[0][1]
        if forward:  # cut to /24 for privacy (RFC 7871 11.1)
            assert [(o.address, o.srclen) for o in ecs] == [("127.0.8.0", 24)]
        else:
            assert ecs == []
    finally:
        upstream.close()


def _wait_metric(gw: SafeGateProcess, text: str, timeout: float = 10.0) -> None:
    wait_for(lambda: text in gw.metrics_text(), timeout=timeout, what=f"{text!r} in /metrics")


def test_subscribers_file_reloads_and_a_broken_one_keeps_the_running(
        unbound: ub.UnboundServer, safegate_factory: Any, tmp_path: Path) -> None:
    gw = safegate_factory(_config(tmp_path, unbound.port))
    q = dns.message.make_query("gamble.test", "A", use_edns=0, payload=1232)

    def rcode(source: str) -> int:
        return dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2,
                             source=source).rcode()  # type: ignore[no-any-return]

    assert rcode("127.0.8.9") == dns.rcode.NOERROR      # isp network: teens
    subs = tmp_path / "subscribers.csv"
    subs.write_text(SUBSCRIBERS + "127.0.8.9,kids\n")
    gw.reload()
    _wait_metric(gw, 'safegate_config_reloads_total{result="success"} 2.0')  # 1 = start
    assert rcode("127.0.8.9") == dns.rcode.NXDOMAIN     # now a kids subscriber
    subs.write_text(SUBSCRIBERS + "127.0.8.9,kids\n127.0.8.10,grade-nine\n")
    gw.reload()
    _wait_metric(gw, 'safegate_config_reloads_total{result="failure"} 1.0')
    assert f"{subs}:5: tier 'grade-nine' is not defined in the policies" in gw.stderr_text()
    assert rcode("127.0.8.9") == dns.rcode.NXDOMAIN     # the running subscribers stay


# ------------------------------------------------ the shipped ISP example behind shipped dnsdist

REPO = Path(__file__).resolve().parents[1]
ISP = REPO / "deploy" / "example" / "isp"
PROBE_NAME = "dnsdist-probe.safegate.invalid"   # checkName in deploy/dnsdist/dnsdist.conf


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.labels, s.value) for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name]


def _local_header() -> bytes:
    """A PROXY v2 LOCAL header (no address): what dnsdist's health check carries."""
    return proxyproto.SIGNATURE + bytes([0x20, 0x00]) + b"\x00\x00"


def test_dnsdist_health_probe_is_answered_locally_and_not_counted_as_blocked(
        unbound: ub.UnboundServer, safegate_factory: Any, tmp_path: Path) -> None:
    """The shipped ISP example (policy and subscribers) behind the shipped dnsdist.conf:
    dnsdist's probe gets the node's own NXDOMAIN/EDE 15 (never the upstream), counted under
    protocol="probe" and never as a subscriber's blocked query."""
    import shutil

    from tests.support.dnsdist import launch_dnsdist

    shutil.copy(ISP / "subscribers.csv", tmp_path / "subscribers.csv")
    gw = safegate_factory(write_gateway_config(
        tmp_path, upstream_port=unbound.port,
        policies={"isp.yaml": (ISP / "policies" / "isp.yaml").read_text()}, ipv6=False,
        extra={"blocklists": str(REPO / "blocklists" / "lists.yaml"),
               "subscribers": "subscribers.csv",
               "dns": {"trusted_frontends": [f"{FRONTEND}/32"], "proxy_protocol": True}}))
    port = free_port(v6=False)
    front = launch_dnsdist(REPO / "deploy" / "dnsdist" / "dnsdist.conf", tmp_path / "dd.log",
                           listen="127.0.0.7", port=port, env={
                               "SAFEGATE_DNSDIST_LISTEN": f"127.0.0.7:{port}",
                               "SAFEGATE_DNSDIST_ACL": "127.0.0.0/8",
                               "SAFEGATE_NODES": f"127.0.0.1:{gw.dns_port}",
                               "SAFEGATE_DNSDIST_SOURCE": FRONTEND,
                               "SAFEGATE_DNSDIST_API_KEY": ""})
    try:
        def counts() -> tuple[float, float, float]:
            """(probes, other queries, upstream queries) so far."""
            text = gw.metrics_text()
            queries = _samples(text, "safegate_dns_queries_total")
            return (sum(v for x, v in queries if x["protocol"] == "probe"),
                    sum(v for x, v in queries if x["protocol"] != "probe"),
                    sum(v for _, v in _samples(text, "safegate_upstream_queries_total")))

        # launch_dnsdist's own readiness query went through as a client's: the baseline.
        probes, others, upstream = counts()
        wait_for(lambda: counts()[0] >= probes + 3, timeout=20,
                 what="three more dnsdist health probes counted under protocol=probe")
        assert counts()[1:] == (others, upstream), "probes counted as queries or forwarded"
        queries = _samples(gw.metrics_text(), "safegate_dns_queries_total")
        assert {(x["action"], x["category"], x["tier"]) for x, v in queries
                if x["protocol"] == "probe"} == {("blocked", "allowlist-only", "frontend")}
        assert not [x for x, v in queries if x["action"] == "blocked" and x["protocol"] != "probe"]
        # What dnsdist gets, over UDP and TCP: the node's own NXDOMAIN, EDE 15.
        q = dns.message.make_query(PROBE_NAME, "A", use_edns=0, payload=1232)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((FRONTEND, 0))
            s.settimeout(3)
            s.sendto(_local_header() + q.to_wire(), ("127.0.0.1", gw.dns_port))
            r = dns.message.from_wire(s.recv(4096))
        assert (r.rcode(), _ede(r)) == (dns.rcode.NXDOMAIN, [EDE_BLOCKED])
        with socket.create_connection(("127.0.0.1", gw.dns_port), timeout=3,
                                      source_address=(FRONTEND, 0)) as c:
            wire = q.to_wire()
            c.sendall(_local_header() + struct.pack(">H", len(wire)) + wire)
            r, _ = dns.query.receive_tcp(c, expiration=None)
        assert (r.rcode(), _ede(r)) == (dns.rcode.NXDOMAIN, [EDE_BLOCKED])
        # A subscriber's query through dnsdist still counts as a subscriber's.
        r = _ask(front, "127.0.0.9", "gamble.test")
        assert r.rcode() == dns.rcode.NOERROR and r.answer   # co-ban: forwarded upstream
        queries = _samples(gw.metrics_text(), "safegate_dns_queries_total")
        assert not [x for x, v in queries if x["action"] == "blocked" and x["protocol"] != "probe"]
        assert counts()[1] == others + 1
    finally:
        front.stop()
