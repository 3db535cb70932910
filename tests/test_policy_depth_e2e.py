"""Issue #4 end to end: SafeSearch CNAMEs, bypass names and ECH stripping through a real unbound."""

from __future__ import annotations

from typing import Any

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.procs import SafeGateProcess, dns_query, kdig

pytestmark = pytest.mark.integration

POLICY = """\
tiers:
  kids: {block: [adult], safesearch: strict}
  teens: {block: [adult], safesearch: moderate}
  staff: {block: [], safesearch: "off", bypass_protection: false}
networks:
  - {name: kids, cidrs: ["127.0.0.1/32"], tier: kids}
  - {name: teens, cidrs: ["127.0.0.3/32"], tier: teens}
  - {name: staff, cidrs: ["127.0.0.4/32"], tier: staff}
"""
LISTS = {"adult.txt": "adult-site.test\n"}
LISTS_YAML = "categories:\n  adult:\n    - {path: adult.txt, format: domains}\n"
ECH = "AAT+DQAA"
DATA = [
    "forcesafesearch.google.com. 300 IN A 216.239.38.120",
    "forcesafesearch.google.com. 300 IN AAAA 2001:4860:4802:32::78",
    "restrict.youtube.com. 120 IN A 216.239.38.120",
    "restrictmoderate.youtube.com. 120 IN A 216.239.38.119",
    "www.google.com. 300 IN A 192.0.2.99",
    f'ech.example. 300 IN HTTPS 1 . alpn="h2" ech="{ECH}"',
]


@pytest.fixture
def gw(unbound_factory: Any, safegate_factory: Any) -> SafeGateProcess:
    upstream = unbound_factory(extra_local_data=DATA)
    return safegate_factory(upstream_port=upstream.port,  # type: ignore[no-any-return]
                            policies={"p.yaml": POLICY}, lists=LISTS, lists_yaml=LISTS_YAML)


def ede(msg: dns.message.Message) -> list[tuple[int, str]]:
    return [(o.code, o.text or "") for o in msg.options if isinstance(o, dns.edns.EDEOption)]


@pytest.mark.parametrize(("source", "name", "rdtype", "target", "address"), [
    ("127.0.0.1", "www.google.com", "A", "forcesafesearch.google.com.", "216.239.38.120"),
    ("127.0.0.1", "www.google.com", "AAAA", "forcesafesearch.google.com.",
     "2001:4860:4802:32::78"),
    ("127.0.0.1", "www.youtube.com", "A", "restrict.youtube.com.", "216.239.38.120"),
    ("127.0.0.3", "www.youtube.com", "A", "restrictmoderate.youtube.com.", "216.239.38.119"),
])
def test_safesearch_answer_is_cname_then_target_records(
        gw: SafeGateProcess, source: str, name: str, rdtype: str, target: str,
        address: str) -> None:
    for tcp in (False, True):   # the second round is served from the cached target
        r = dns_query(name, rdtype, port=gw.dns_port, addr="127.0.0.1", tcp=tcp, payload=1232,
                      ) if source == "127.0.0.1" else _from(source, gw.dns_port, name, rdtype, tcp)
        assert r.rcode() == dns.rcode.NOERROR
        cname, addrs = r.answer
        assert cname.rdtype == dns.rdatatype.CNAME and cname.name.to_text() == f"{name}."
        assert cname[0].target.to_text() == target
        assert addrs.rdtype == dns.rdatatype.from_text(rdtype)
        assert addrs.name.to_text() == target and [a.address for a in addrs] == [address]
        assert cname.ttl <= addrs.ttl
        assert ede(r) == []                                 # a rewrite is not a block


def _from(source: str, port: int, name: str, rdtype: str, tcp: bool) -> dns.message.Message:
    import dns.query

    q = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=2, source=source)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=2, source=source)


def test_staff_get_the_real_google(gw: SafeGateProcess) -> None:
    r = _from("127.0.0.4", gw.dns_port, "www.google.com", "A", False)
    assert [(rr.rdtype, rr[0].address) for rr in r.answer] == [(dns.rdatatype.A, "192.0.2.99")]


def test_kdig_sees_the_cname_chain(gw: SafeGateProcess) -> None:
    out = kdig("@127.0.0.1", "-p", str(gw.dns_port), "+edns", "www.google.com", "A")
    answer = [line.split() for line in out.split(";; ANSWER SECTION:")[1].strip().splitlines()
              if line.strip() and not line.startswith(";;")]
    assert [(rr[0], rr[-2], rr[-1]) for rr in answer] == [
        ("www.google.com.", "CNAME", "forcesafesearch.google.com."),
        ("forcesafesearch.google.com.", "A", "216.239.38.120")]


@pytest.mark.parametrize(("name", "rcode"), [
    ("use-application-dns.net", dns.rcode.NXDOMAIN),
    ("mask.icloud.com", dns.rcode.NXDOMAIN),
    ("mask-h2.icloud.com", dns.rcode.NXDOMAIN),
    ("_dns.resolver.arpa", dns.rcode.NOERROR),
])
def test_bypass_names(gw: SafeGateProcess, name: str, rcode: int) -> None:
    r = dns_query(name, "SVCB" if "resolver" in name else "A", port=gw.dns_port, payload=1232)
    assert r.rcode() == rcode and r.answer == []
    assert ede(r) and ede(r)[0][0] == 15 and ede(r)[0][1].startswith("bypass: ")
    staff = _from("127.0.0.4", gw.dns_port, name, "A", False)
    assert not ede(staff)          # bypass_protection: false -> forwarded like any name


def test_ech_is_stripped_for_protected_tiers_only(gw: SafeGateProcess) -> None:
    for _ in range(2):  # fresh, then from the cache (kept apart per stripping)
        kid = _from("127.0.0.1", gw.dns_port, "ech.example", "HTTPS", False)
        staff = _from("127.0.0.4", gw.dns_port, "ech.example", "HTTPS", False)
        assert [rd.to_text() for rd in kid.answer[0]] == ['1 . alpn="h2"']
        assert [rd.to_text() for rd in staff.answer[0]] == [f'1 . alpn="h2" ech="{ECH}"']
