"""SafeGate as a real process in front of a real unbound, queried by real clients."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.procs import SafeGateProcess, dns_query, kdig

pytestmark = pytest.mark.integration

def ede(msg: dns.message.Message) -> list[tuple[int, str]]:
    return [(o.code, o.text or "") for o in msg.options if isinstance(o, dns.edns.EDEOption)]


def query_from(source: str, port: int, name: str, rdtype: str = "A", *, edns: bool = True,
               tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, payload=1232)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=2, source=source)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=2, source=source)


@pytest.fixture
def gw(unbound: ub.UnboundServer, safegate_factory: Any) -> SafeGateProcess:
    return safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},  # type: ignore[no-any-return]
                            lists=LISTS, lists_yaml=LISTS_YAML)


def test_allowed_name_is_forwarded_over_udp_and_tcp_v4_and_v6(gw: SafeGateProcess) -> None:
    for addr in ("127.0.0.1", "::1"):
        for tcp in (False, True):
            r = dns_query(ub.ALLOWED, "A", port=gw.dns_port, addr=addr, tcp=tcp, payload=1232)
            assert r.rcode() == dns.rcode.NOERROR
            assert [rr.address for rr in r.answer[0]] == [ub.ALLOWED_A]
            assert 0 < r.answer[0].ttl <= ub.ALLOWED_TTL
    out = kdig("@::1", "-p", str(gw.dns_port), ub.ALLOWED, "AAAA", "+short")
    assert out.strip() == ub.ALLOWED_AAAA


def test_blocked_per_tier_with_ede(gw: SafeGateProcess) -> None:
    port = gw.dns_port
    kids = query_from("127.0.0.1", port, "sub.adult-site.test")
    assert kids.rcode() == dns.rcode.NOERROR
    assert [rr.address for rr in kids.answer[0]] == ["127.0.0.1"]  # the block page
    assert ede(kids) == [(15, "adult: adult-site.test")]
    assert kids.answer[0].ttl == 30

    teens = dns_query("sub.adult-site.test", "A", port=port, addr="::1", payload=1232)
    assert teens.rcode() == dns.rcode.NXDOMAIN
    assert ede(teens) == [(15, "adult: adult-site.test")]
    assert teens.authority[0].name.to_text() == "adult-site.test."
    assert teens.authority[0].rdtype == dns.rdatatype.SOA

    zero = query_from("127.0.0.3", port, "adult.example", "AAAA")
    assert [rr.address for rr in zero.answer[0]] == ["::"]

    # gambling is blocked for kids only; staff gets the upstream's answer
    assert ede(query_from("127.0.0.1", port, "gamble.test")) == [(15, "gambling: gamble.test")]
    staff = query_from("127.0.0.4", port, "gamble.test")
    assert [rr.address for rr in staff.answer[0]] == [ub.BLOCKED_TARGET_A]
    assert ede(staff) == []


def test_mandatory_csam_blocks_every_tier_with_censored(gw: SafeGateProcess) -> None:
    for source in ("127.0.0.1", "127.0.0.3", "127.0.0.4"):
        r = query_from(source, gw.dns_port, "x.csam-test.invalid")
        assert ede(r) == [(16, "csam: csam-test.invalid")], source
    # RPZ's `CNAME .` is NXDOMAIN whatever the tier's answer
    assert query_from("127.0.0.4", gw.dns_port, "csam-test.invalid").rcode() == dns.rcode.NXDOMAIN


def test_network_deny_and_allow(gw: SafeGateProcess) -> None:
    port = gw.dns_port
    deny = query_from("127.0.0.1", port, "play.games.test")
    assert ede(deny) == [(15, "deny: games.test")]
    ok = query_from("127.0.0.1", port, "ok.adult-site.test")
    assert [rr.address for rr in ok.answer[0]] == [ub.BLOCKED_TARGET_A]


def test_no_ede_without_edns(gw: SafeGateProcess) -> None:
    r = query_from("127.0.0.1", gw.dns_port, "adult-site.test", edns=False)
    assert r.edns == -1 and [rr.address for rr in r.answer[0]] == ["127.0.0.1"]


def test_kdig_sees_the_block_with_ede(gw: SafeGateProcess) -> None:
    out = kdig("@127.0.0.1", "-p", str(gw.dns_port), "+edns", "sub.adult-site.test", "A")
    assert "127.0.0.1" in out
    assert "EDE: 15 (Blocked): 'adult: adult-site.test'" in out


def test_clients_outside_every_network_are_refused(gw: SafeGateProcess) -> None:
    r = query_from("127.0.0.2", gw.dns_port, ub.ALLOWED)
    assert r.rcode() == dns.rcode.REFUSED
    assert ede(r)[0][0] == 18
    assert not r.answer


def test_cache_never_crosses_tiers(gw: SafeGateProcess) -> None:
    port = gw.dns_port
    # staff resolves (and so caches) the name first; kids must still be blocked ...
    assert query_from("127.0.0.4", port, "www.adult.example").answer
    assert ede(query_from("127.0.0.1", port, "www.adult.example"))[0][0] == 15
    # ... and the other way round.
    assert ede(query_from("127.0.0.1", port, "b.adult.example"))[0][0] == 15
    r = query_from("127.0.0.4", port, "b.adult.example")
    assert [rr.address for rr in r.answer[0]] == [ub.BLOCKED_TARGET_A] and not ede(r)


def test_large_answer_truncates_over_udp_and_arrives_over_tcp(gw: SafeGateProcess) -> None:
    udp = dns_query(ub.BIG_NAME, "TXT", port=gw.dns_port, payload=1232)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = dns_query(ub.BIG_NAME, "TXT", port=gw.dns_port, tcp=True)
    assert len(tcp.answer[0]) == ub.BIG_TXT_COUNT
    # kdig retries over TCP by itself when it sees TC
    out = kdig("@127.0.0.1", "-p", str(gw.dns_port), "+bufsize=1232", ub.BIG_NAME, "TXT")
    assert out.count("big-") >= ub.BIG_TXT_COUNT


def test_case_is_preserved_and_id_echoed(gw: SafeGateProcess) -> None:
    for name in ("AlLoWeD.TeSt", "SuB.AdUlT-SiTe.TeSt"):
        for _ in range(2):  # the second answer comes from a cache / memo
            q = dns.message.make_query(name, "A")
            r = dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2)
            assert r.id == q.id
            assert r.question[0].name.to_text() == name + "."


def test_negative_and_nodata_answers_pass_through(gw: SafeGateProcess) -> None:
    nx = dns_query(ub.NXDOMAIN_NAME, "A", port=gw.dns_port)
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
    nodata = dns_query(ub.NODATA_NAME, "A", port=gw.dns_port)
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer


def test_any_gets_rfc8482_and_notify_gets_notimp(gw: SafeGateProcess) -> None:
    r = dns_query(ub.ALLOWED, "ANY", port=gw.dns_port)
    assert r.answer[0].rdtype == dns.rdatatype.HINFO
    assert r.answer[0][0].cpu == b"RFC8482"
    q = dns.message.make_query("x.test", "SOA")
    q.set_opcode(dns.opcode.NOTIFY)
    assert dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2).rcode() == dns.rcode.NOTIMP


def test_edns_version_1_gets_badvers(gw: SafeGateProcess) -> None:
    q = dns.message.make_query(ub.ALLOWED, "A", use_edns=1)
    r = dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2)
    assert r.rcode() == dns.rcode.BADVERS


def _udp_exchange(port: int, packet: bytes, timeout: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def test_malformed_packets_never_take_the_server_down(gw: SafeGateProcess) -> None:
    port = gw.dns_port
    good = dns.message.make_query(ub.ALLOWED, "A").to_wire()
    header = good[:12]
    assert _udp_exchange(port, b"") is None                    # zero-length: dropped
    assert _udp_exchange(port, good[:7]) is None               # truncated header: dropped
    for packet in (
        header + b"\xc0\x0c\x00\x01\x00\x01",                  # compression loop
        header + b"\x05ab",                                    # name cut short
        header + b"\xff" * 64,                                 # reserved label type
        header[:4] + b"\x00\x01\x00\x00\x00\x00\x00\x05" + good[12:],  # 5 additional, none there
    ):
        reply = _udp_exchange(port, packet)
        assert reply is not None and reply[:2] == header[:2]
        assert reply[3] & 0xF == dns.rcode.FORMERR
    garbage = bytes((i * 7919) & 0xFF for i in range(65535))
    reply = _udp_exchange(port, garbage[:65000])  # near the largest UDP payload
    assert reply is None or reply[3] & 0xF in (dns.rcode.FORMERR, dns.rcode.NOTIMP)
    # TCP: a zero-length frame, then a 64 KiB frame of garbage, then a good query
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"\x00\x00" + struct.pack(">H", 65535) + garbage
                  + struct.pack(">H", len(good)) + good)
        s.settimeout(2)
        data = b""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            data += s.recv(65535)
            frames = []
            pos = 0
            while pos + 2 <= len(data):
                size = struct.unpack_from(">H", data, pos)[0]
                if pos + 2 + size > len(data):
                    break
                frames.append(data[pos + 2:pos + 2 + size])
                pos += 2 + size
            if any(f[:2] == good[:2] and f[3] & 0xF == 0 for f in frames):
                break
        else:
            pytest.fail("no answer to the good query after garbage on TCP")
    # still answering
    assert dns_query(ub.ALLOWED, "A", port=port).answer
    assert gw.running()


def test_metrics_count_and_pass_promtool(gw: SafeGateProcess) -> None:
    for _ in range(3):
        query_from("127.0.0.1", gw.dns_port, "x.adult-site.test")
    query_from("127.0.0.2", gw.dns_port, "x.adult-site.test")
    text = gw.metrics_text()
    assert ('safegate_dns_queries_total{action="blocked",category="adult",protocol="udp",'
            'tier="kids"} 3.0') in text
    assert 'safegate_dns_queries_total{action="refused",category="",protocol="udp",tier=""} 1.0' \
        in text
    assert 'safegate_list_entries{category="adult"} 2.0' in text
    assert "127.0.0.2" not in text and "127.0.0.1\"" not in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed"
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert gw.http_get("/healthz")[0] == 200 and gw.http_get("/readyz")[0] == 200


def test_blockpage_is_served_at_the_web_address(gw: SafeGateProcess) -> None:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(gw.web_url + "/", headers={
        "Host": "adult-site.test", "Accept": "text/html"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=2)
    assert err.value.code == 403
    body = err.value.read().decode()
    assert "adult-site.test" in body and "111" in body
    assert err.value.headers["Cache-Control"] == "no-store"


def test_upstream_down_serves_stale_then_servfail(unbound_factory: Any,
                                                  safegate_factory: Any) -> None:
    upstream = unbound_factory()
    gw = safegate_factory(upstream_port=upstream.port, policies={"p.yaml": POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML,
                          extra={"dns": {"cache": {"max_ttl": 1}, "upstream_timeout": 0.3,
                                         "query_timeout": 1.0}})
    fresh = dns_query(ub.ALLOWED, "A", port=gw.dns_port)
    assert fresh.answer[0].ttl == 1
    upstream.stop()
    time.sleep(1.2)
    stale = dns_query(ub.ALLOWED, "A", port=gw.dns_port, timeout=3)
    assert stale.rcode() == dns.rcode.NOERROR
    assert [rr.address for rr in stale.answer[0]] == [ub.ALLOWED_A]
    assert stale.answer[0].ttl == 30  # RFC 8767
    never = dns_query(ub.WWW_ALLOWED, "A", port=gw.dns_port, timeout=3)
    assert never.rcode() == dns.rcode.SERVFAIL
    # blocked names still answer with no upstream at all
    assert query_from("127.0.0.1", gw.dns_port, "adult-site.test").answer
    text = gw.metrics_text()
    assert 'safegate_dns_queries_total{action="stale",' in text
    assert "safegate_upstream_errors_total" in text


def test_failover_to_second_upstream(unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    from tests.support.procs import free_port

    dead = free_port(v6=False)
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML,
                          extra={"dns": {"upstreams": [f"127.0.0.1:{dead}",
                                                       f"127.0.0.1:{unbound.port}"],
                                         "upstream_timeout": 0.3}})
    r = dns_query(ub.ALLOWED, "A", port=gw.dns_port, timeout=3)
    assert [rr.address for rr in r.answer[0]] == [ub.ALLOWED_A]


def test_sigterm_exits_cleanly_and_removes_index(gw: SafeGateProcess, tmp_path: Path) -> None:
    assert gw.config is not None
    var = gw.config.parent / "var"
    assert list(var.glob("*.sgidx"))
    gw.stop()
    assert not list(var.glob("*.sgidx"))


def _read_frames(sock: socket.socket, count: int, timeout: float = 2.0) -> list[bytes]:
    sock.settimeout(timeout)
    data = b""
    frames: list[bytes] = []
    while len(frames) < count:
        chunk = sock.recv(65535)
        if not chunk:
            break
        data += chunk
        while len(data) >= 2 and len(data) >= 2 + struct.unpack_from(">H", data)[0]:
            size = struct.unpack_from(">H", data)[0]
            frames.append(data[2:2 + size])
            data = data[2 + size:]
    return frames


def test_tcp_pipelining_and_idle_timeout(unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
                          lists_yaml=LISTS_YAML, extra={"dns": {"tcp_idle_timeout": 0.5}})
    queries = [dns.message.make_query(n, "A") for n in
               (ub.ALLOWED, "x.adult-site.test", ub.WWW_ALLOWED, ub.NXDOMAIN_NAME)]
    with socket.create_connection(("127.0.0.1", gw.dns_port), timeout=2) as s:
        s.sendall(b"".join(struct.pack(">H", len(w)) + w for w in (q.to_wire() for q in queries)))
        frames = _read_frames(s, len(queries))
        replies = {dns.message.from_wire(f).id: dns.message.from_wire(f) for f in frames}
        assert set(replies) == {q.id for q in queries}  # every query answered, any order
        assert replies[queries[0].id].answer[0][0].address == ub.ALLOWED_A
        assert replies[queries[3].id].rcode() == dns.rcode.NXDOMAIN
        # the same connection is reused, then closed by the server once idle
        s.sendall(struct.pack(">H", len(queries[0].to_wire())) + queries[0].to_wire())
        assert len(_read_frames(s, 1)) == 1
        time.sleep(1.0)
        s.settimeout(2)
        assert s.recv(10) == b""  # EOF: the server closed the idle connection


def test_ipv6_only_network(safegate_factory: Any, unbound: ub.UnboundServer) -> None:
    from tests.support.procs import free_port

    port = free_port()
    web_port = free_port(udp=False)
    policy = POLICY.replace('cidrs: ["::1/128"], tier: teens', 'cidrs: ["::1/128"], tier: kids')
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": policy}, lists=LISTS,
                          lists_yaml=LISTS_YAML,
                          extra={"dns": {"listen": [f"[::1]:{port}"],
                                         "upstreams": [f"[::1]:{unbound.port}"]},
                                 "web": {"listen": f"[::1]:{web_port}"}})
    assert gw.running()
    for tcp in (False, True):
        r = dns_query(ub.ALLOWED, "AAAA", port=port, addr="::1", tcp=tcp, payload=1232)
        assert [rr.address for rr in r.answer[0]] == [ub.ALLOWED_AAAA]
        # the block page's IPv6 address (the web listener), EDE 15
        blocked = dns_query("adult-site.test", "AAAA", port=port, addr="::1", tcp=tcp,
                            payload=1232)
        assert [rr.address for rr in blocked.answer[0]] == ["::1"]
        assert ede(blocked) == [(15, "adult: adult-site.test")]
        # no IPv4 block-page address on this network: A is NODATA, still with the EDE
        a = dns_query("adult-site.test", "A", port=port, addr="::1", tcp=tcp, payload=1232)
        assert a.rcode() == dns.rcode.NOERROR and not a.answer and ede(a)
