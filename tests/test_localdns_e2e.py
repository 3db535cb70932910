"""Issue #14 item 3: a school's own names. `dns.local_records` are answered by the gateway
itself (never upstream) after the policy decision; `dns.forward_zones` send a zone's names to
the school's own DNS server. Real gateway, real unbound upstreams, real clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support import unbound as ub
from tests.support.cli import check, config
from tests.support.procs import SafeGateProcess, metric

pytestmark = pytest.mark.integration

POLICY = """\
tiers:
  kids: {block: [adult], answer: nxdomain}
networks:
  - {name: lab, cidrs: ["127.0.0.1/32", "::1/128"], tier: kids}
"""
LISTS = {"adult.txt": "adult-site.test\n"}
LISTS_YAML = "categories:\n  adult:\n    - {path: adult.txt, format: domains}\n"
RECORDS = [
    "192.0.2.50 moodle.school.test lms-host.school.test",
    "2001:db8::50 moodle.school.test",
    "cname www.school.test moodle.school.test",
    "ptr 192.0.2.51 printer.school.test",
    "192.0.2.66 adult-site.test",   # a local record cannot unblock a blocked name
]


def ask(gw: SafeGateProcess, name: str, rdtype: str, tcp: bool) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, "127.0.0.1", port=gw.dns_port, timeout=3)  # type: ignore[no-any-return]


def rrs(r: dns.message.Message) -> list[tuple[str, str, str]]:
    return [(rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype), rd.to_text())
            for rrset in r.answer for rd in rrset]


def start(factory: Any, upstream: ub.UnboundServer, dns_extra: dict[str, Any]
          ) -> SafeGateProcess:
    return factory(upstream_port=upstream.port, policies={"p.yaml": POLICY},  # type: ignore[no-any-return]
                   lists=LISTS, lists_yaml=LISTS_YAML,
                   extra={"dns": dns_extra, "limits": {"rrl": {"enabled": False}}})


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_local_records_are_answered_without_any_upstream_query(
        unbound: ub.UnboundServer, safegate_factory: Any, tcp: bool) -> None:
    gw = start(safegate_factory, unbound, {"local_records": RECORDS, "block_ttl": 45})
    sent = metric(gw, "safegate_upstream_queries_total")
    expected = {
        ("moodle.school.test", "A"): [("moodle.school.test.", "A", "192.0.2.50")],
        ("MOODLE.School.test", "A"): [("MOODLE.School.test.", "A", "192.0.2.50")],
        ("lms-host.school.test", "A"): [("lms-host.school.test.", "A", "192.0.2.50")],
        ("moodle.school.test", "AAAA"): [("moodle.school.test.", "AAAA", "2001:db8::50")],
        ("50.2.0.192.in-addr.arpa", "PTR"): [("50.2.0.192.in-addr.arpa.", "PTR",
                                              "moodle.school.test.")],
        ("51.2.0.192.in-addr.arpa", "PTR"): [("51.2.0.192.in-addr.arpa.", "PTR",
                                              "printer.school.test.")],
        ("www.school.test", "A"): [("www.school.test.", "CNAME", "moodle.school.test."),
                                   ("moodle.school.test.", "A", "192.0.2.50")],
        ("www.school.test", "CNAME"): [("www.school.test.", "CNAME", "moodle.school.test.")],
    }
    for _ in range(2):   # the second round comes from the UDP reply memo
        for (name, rdtype), answer in expected.items():
            r = ask(gw, name, rdtype, tcp)
            assert r.rcode() == dns.rcode.NOERROR and rrs(r) == answer, (name, rdtype)
            assert all(rrset.ttl == 45 for rrset in r.answer)
        # NODATA: a local name without a record of that type, SOA for negative caching
        r = ask(gw, "moodle.school.test", "TXT", tcp)
        assert r.rcode() == dns.rcode.NOERROR and not r.answer
        assert [dns.rdatatype.to_text(x.rdtype) for x in r.authority] == ["SOA"]
        # blocked stays blocked, local record or not
        r = ask(gw, "adult-site.test", "A", tcp)
        assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer
    assert metric(gw, "safegate_upstream_queries_total") == sent
    assert metric(gw, "safegate_dns_queries_total", action="local") == 2 * (len(expected) + 1)
    # other names still go upstream
    r = ask(gw, ub.ALLOWED, "A", tcp)
    assert rrs(r) == [(ub.ALLOWED + ".", "A", ub.ALLOWED_A)]
    assert metric(gw, "safegate_upstream_queries_total") == sent + 1


def test_forward_zones_send_their_names_to_their_own_server(
        unbound: ub.UnboundServer, unbound_factory: ub.UnboundFactory,
        safegate_factory: Any) -> None:
    school = unbound_factory(
        ["dc1.school.test. 300 IN A 192.0.2.2", "deep.lab.school.test. 300 IN A 192.0.2.3",
         "5.2.0.192.in-addr.arpa. 300 IN PTR dc1.school.test."],
        extra_config=['local-zone: "2.0.192.in-addr.arpa." static'])
    lab = unbound_factory(["deep.lab.school.test. 300 IN A 192.0.2.99"])
    # The main upstream knows none of them: an answer proves where the query went.
    for name, rdtype in (("dc1.school.test", "A"), ("5.2.0.192.in-addr.arpa", "PTR")):
        assert unbound.query(name, rdtype).rcode() == dns.rcode.NXDOMAIN
    gw = start(safegate_factory, unbound, {"forward_zones": [
        {"zone": "School.Test.", "servers": [school.upstream]},
        {"zone": "lab.school.test", "servers": [lab.upstream]},
        {"zone": "2.0.192.in-addr.arpa", "servers": [school.upstream]},
    ]})
    for tcp in (False, True):
        assert rrs(ask(gw, "dc1.school.test", "A", tcp)) == [
            ("dc1.school.test.", "A", "192.0.2.2")]
        assert rrs(ask(gw, "5.2.0.192.in-addr.arpa", "PTR", tcp)) == [
            ("5.2.0.192.in-addr.arpa.", "PTR", "dc1.school.test.")]
        # the longest zone wins
        assert rrs(ask(gw, "deep.lab.school.test", "A", tcp)) == [
            ("deep.lab.school.test.", "A", "192.0.2.99")]
        assert rrs(ask(gw, ub.ALLOWED, "A", tcp)) == [(ub.ALLOWED + ".", "A", ub.ALLOWED_A)]
    assert metric(gw, "safegate_upstream_queries_total", upstream=school.upstream) == 2
    assert metric(gw, "safegate_upstream_queries_total", upstream=lab.upstream) == 1
    assert metric(gw, "safegate_upstream_queries_total", upstream=unbound.upstream) == 1


def test_check_names_the_line_of_a_bad_record(tmp_path: Path) -> None:
    cfg = config(tmp_path, extra={"dns": {"local_records": [
        "192.0.2.50 moodle.school.test", "192.0.2.300 bad.school.test"]}})
    rc, out, err = check(cfg)
    lines = cfg.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if "192.0.2.300" in text)
    assert rc == 1 and "OK" not in out
    assert err.strip().startswith(f"{cfg}:{line}: dns.local_records: '192.0.2.300 "
                                  "bad.school.test': ")


@pytest.mark.parametrize(("records", "problem"), [
    (["cname www.school.test moodle.school.test", "192.0.2.1 www.school.test"],
     "www.school.test has a CNAME and other records"),
    (["moodle.school.test 192.0.2.1"], "expected 'ADDRESS NAME...'"),
    (["cname a.school.test"], "expected 'cname NAME TARGET'"),
    (["ptr 192.0.2.1 not_a..name"], "is not a host name"),
])
def test_check_rejects_bad_records(tmp_path: Path, records: list[str], problem: str) -> None:
    rc, _, err = check(config(tmp_path, extra={"dns": {"local_records": records}}))
    assert rc == 1 and problem in err


def test_check_rejects_a_bad_forward_zone(tmp_path: Path) -> None:
    rc, _, err = check(config(tmp_path, extra={"dns": {"forward_zones": [
        {"zone": "school.test", "servers": []}]}}))
    assert rc == 1 and "dns.forward_zones: school.test has no servers" in err
