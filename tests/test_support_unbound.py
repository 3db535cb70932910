"""The unbound fixture serves exactly what tests/support/unbound.py's constants promise.

If these fail, every integration test built on the fixture is meaningless (e.g. a name that
SafeGate failed to block would look blocked because unbound answered NXDOMAIN itself).
"""

from __future__ import annotations

import sys
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from tests.support import unbound as ub
from tests.support.procs import (
    SafeGateFactory,
    SafeGateProcess,
    dig,
    free_port,
    kdig,
    write_gateway_config,
)
from tests.support.unbound import UnboundFactory, UnboundServer
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

ADDRS = ["127.0.0.1", "::1"]


def _rrset(msg: dns.message.Message, rdtype: str) -> list[str]:
    t = dns.rdatatype.from_text(rdtype)
    return sorted(rd.to_text() for rrset in msg.answer if rrset.rdtype == t for rd in rrset)


def _soa_ttl(msg: dns.message.Message) -> int:
    soas = [r for r in msg.authority if r.rdtype == dns.rdatatype.SOA]
    assert len(soas) == 1, msg
    return soas[0].ttl


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("addr", ADDRS)
def test_allowed_a_aaaa(unbound: UnboundServer, addr: str, tcp: bool) -> None:
    for name in (ub.ALLOWED, ub.WWW_ALLOWED):
        a = unbound.query(name, "A", addr=addr, tcp=tcp)
        assert a.rcode() == dns.rcode.NOERROR
        assert _rrset(a, "A") == [ub.ALLOWED_A]
        assert a.answer[0].ttl == ub.ALLOWED_TTL
        aaaa = unbound.query(name, "AAAA", addr=addr, tcp=tcp)
        assert _rrset(aaaa, "AAAA") == [ub.ALLOWED_AAAA]
        assert aaaa.flags & dns.flags.AA


def test_short_ttl(unbound: UnboundServer) -> None:
    r = unbound.query(ub.SHORT_TTL_NAME, "A")
    assert _rrset(r, "A") == [ub.SHORT_TTL_A]
    assert r.answer[0].ttl == ub.SHORT_TTL


def test_cname_is_not_chased(unbound: UnboundServer) -> None:
    r = unbound.query(ub.CNAME_NAME, "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert _rrset(r, "CNAME") == [ub.CNAME_TARGET + "."]
    assert _rrset(r, "A") == []


def test_nodata_has_soa(unbound: UnboundServer) -> None:
    r = unbound.query(ub.NODATA_NAME, "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.answer == []
    assert _soa_ttl(r) == ub.NEG_TTL
    txt = unbound.query(ub.NODATA_NAME, "TXT")
    assert _rrset(txt, "TXT") == [f'"{ub.NODATA_TXT}"']


@pytest.mark.parametrize(
    "name", [ub.NXDOMAIN_NAME, "nope.invalid", "nope.example", "example.com", "nx.allowed.test"]
)
def test_everything_else_nxdomain_with_soa(unbound: UnboundServer, name: str) -> None:
    r = unbound.query(name, "A")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert _soa_ttl(r) == ub.NEG_TTL


@pytest.mark.parametrize("addr", ADDRS)
def test_blocked_names_resolve_upstream(unbound: UnboundServer, addr: str) -> None:
    for name in ub.BLOCKED_NAMES:
        for qname in (name, f"sub.{name}", f"a.b.{name}"):
            r = unbound.query(qname, "A", addr=addr)
            assert _rrset(r, "A") == [ub.BLOCKED_TARGET_A], qname
            r6 = unbound.query(qname, "AAAA", addr=addr)
            assert _rrset(r6, "AAAA") == [ub.BLOCKED_TARGET_AAAA], qname


@pytest.mark.parametrize("addr", ADDRS)
def test_big_truncates_over_udp_at_1232_and_is_whole_over_tcp(
    unbound: UnboundServer, addr: str
) -> None:
    udp = unbound.query(ub.BIG_NAME, "TXT", addr=addr, payload=1232)
    assert udp.flags & dns.flags.TC
    tcp = unbound.query(ub.BIG_NAME, "TXT", addr=addr, tcp=True, payload=1232)
    assert not tcp.flags & dns.flags.TC
    assert len(_rrset(tcp, "TXT")) == ub.BIG_TXT_COUNT
    assert ub.BIG_MIN_SIZE < len(tcp.to_wire()) < ub.BIG_MAX_SIZE
    # Without EDNS the 512-byte limit applies: truncated too.
    assert unbound.query(ub.BIG_NAME, "TXT", addr=addr).flags & dns.flags.TC


def test_kdig_and_dig_helpers(unbound: UnboundServer) -> None:
    out = kdig(f"@{unbound.addr4}", "-p", str(unbound.port), ub.ALLOWED, "A", "+short")
    assert out.split() == [ub.ALLOWED_A]
    out = dig(f"@{unbound.addr6}", "-p", str(unbound.port), ub.ALLOWED, "AAAA", "+short")
    assert out.split() == [ub.ALLOWED_AAAA]


def test_factory_extra_data_and_stop(unbound_factory: UnboundFactory) -> None:
    server = unbound_factory(["extra.test. 30 IN A 192.0.2.99", "x.other-tld. 30 IN A 192.0.2.98"])
    assert _rrset(server.query("extra.test"), "A") == ["192.0.2.99"]
    assert _rrset(server.query("x.other-tld"), "A") == ["192.0.2.98"]
    assert server.query("y.other-tld").rcode() == dns.rcode.NXDOMAIN
    assert _rrset(server.query(ub.ALLOWED), "A") == [ub.ALLOWED_A]
    server.stop()
    assert not server.running()
    with pytest.raises(Exception):  # noqa: B017 - timeout or ICMP refusal, either is fine
        server.query(ub.ALLOWED, timeout=0.3)


def test_free_port_is_distinct_and_free() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20


# ---------------------------------------------------------------- the SafeGate process harness
# Exercised with a stand-in server so the harness is known good before/independently of the
# real one: it serves /readyz on the metrics port and exits 0 on SIGTERM, like SafeGate must.

FAKE_SERVER = r"""
import signal, sys, yaml
from http.server import BaseHTTPRequestHandler, HTTPServer
cfg = yaml.safe_load(open(sys.argv[1]))
if cfg.get("fail"):
    sys.stderr.write("fake: config says fail\n")
    sys.exit(3)
host, _, port = cfg["metrics"]["listen"].rpartition(":")
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
srv = HTTPServer((host, int(port)), H)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
signal.signal(signal.SIGHUP, lambda *a: sys.stderr.write("fake: reload\n"))
sys.stderr.write("fake: ready\n")
srv.serve_forever()
"""


def test_safegate_process_harness(tmp_path: Path, unbound: UnboundServer) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SERVER)
    cfg_path = write_gateway_config(
        tmp_path / "gw",
        upstream_port=unbound.port,
        policies={"school.yaml": "networks: []\n"},
        lists={"adult.txt": "adult-site.test\n"},
        lists_yaml="categories:\n  adult:\n    - {path: adult.txt, format: domains}\n",
        extra={"dns": {"cache": {"size": 10}}},
    )
    cfg = yaml.safe_load(cfg_path.read_text())
    assert cfg["dns"]["upstreams"] == [unbound.upstream]
    assert cfg["dns"]["cache"] == {"size": 10}
    assert cfg["dns"]["listen"][1].startswith("[::1]:")
    assert (cfg_path.parent / "blocklists" / "adult.txt").read_text() == "adult-site.test\n"
    assert (cfg_path.parent / "policies" / "school.yaml").exists()

    proc = SafeGateProcess().start(cfg_path, command=[sys.executable, str(script), str(cfg_path)])
    assert proc.dns_port == int(cfg["dns"]["listen"][0].rpartition(":")[2])
    assert proc.http_get("/readyz")[0] == 200
    proc.reload()
    wait_for(lambda: "fake: reload" in proc.stderr_text(), what="the fake gateway saw SIGHUP")
    proc.stop()
    assert not proc.running()

    bad = write_gateway_config(tmp_path / "bad", upstream_port=unbound.port, extra={"fail": True})
    with pytest.raises(AssertionError, match="config says fail"):
        SafeGateProcess().start(bad, command=[sys.executable, str(script), str(bad)])


def test_safegate_factory_stops_at_teardown(
    tmp_path: Path,
    unbound: UnboundServer,
    safegate_factory: SafeGateFactory,
) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SERVER)
    cfg = write_gateway_config(tmp_path / "gw", upstream_port=unbound.port)
    proc = safegate_factory(cfg, command=[sys.executable, str(script), str(cfg)])
    assert proc.running()
    assert proc.http_get("/readyz")[0] == 200
    # left running on purpose: the fixture's teardown must SIGTERM it and see exit 0
