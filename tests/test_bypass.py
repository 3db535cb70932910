"""Bypass prevention: DoH canary, iCloud Private Relay, DDR names, ECH stripping (wire level)."""

from __future__ import annotations

import struct

import dns.message
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from gateway.dns import wire
from gateway.dns.svcb import strip_ech, strip_params
from gateway.policy.decide import EDE_BLOCKED, Profile
from tests.support.builders import make_profile


def profile(bypass: bool, allow: frozenset[bytes] = frozenset()) -> Profile:
    return make_profile(answer="blockpage", allow=allow, bypass=bypass)


@pytest.mark.parametrize(("name", "answer", "rule"), [
    (b"use-application-dns.net", "nxdomain", b"use-application-dns.net"),
    (b"mask.icloud.com", "nxdomain", b"mask.icloud.com"),
    (b"mask-h2.icloud.com", "nxdomain", b"mask-h2.icloud.com"),
    (b"resolver.arpa", "nodata", b"resolver.arpa"),
    (b"_dns.resolver.arpa", "nodata", b"resolver.arpa"),
])
def test_bypass_names(name: bytes, answer: str, rule: bytes) -> None:
    v = profile(True).decide(name)
    assert (v.blocked, v.reason, v.category, v.answer, v.ede, v.rule) == (
        True, "bypass", "bypass", answer, EDE_BLOCKED, rule)
    assert name[v.offset:] == v.rule
    assert v.ede_text() == f"bypass: {rule.decode()}"
    assert not profile(False).decide(name).blocked       # bypass_protection: false


@pytest.mark.parametrize("name", [b"icloud.com", b"www.icloud.com", b"x.mask.icloud.com",
                                  b"application-dns.net", b"arpa", b"notresolver.arpa"])
def test_neighbours_are_not_bypass_names(name: bytes) -> None:
    assert not profile(True).decide(name).blocked


def test_an_allow_entry_does_not_lift_bypass_protection() -> None:
    assert profile(True, frozenset({b"icloud.com"})).decide(b"mask.icloud.com").blocked


def _https(text: str) -> bytes:
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.HTTPS, text)
    return rd.to_wire()


@pytest.mark.parametrize(("before", "after"), [
    ('1 . alpn="h2,h3" ech="AAT+DQAA" ipv4hint=192.0.2.1', '1 . alpn="h2,h3" ipv4hint=192.0.2.1'),
    ('1 . ech="AAT+DQAA"', "1 ."),
    ('1 . mandatory=ech,alpn alpn=h2 ech="AAT+DQAA"', "1 . mandatory=alpn alpn=h2"),
    ('1 . mandatory=ech ech="AAT+DQAA" port=8443', "1 . port=8443"),
    ('1 svc.example. alpn=h2', "1 svc.example. alpn=h2"),           # nothing to strip
    ("0 alias.example.", "0 alias.example."),                        # AliasMode
])
def test_strip_params(before: str, after: str) -> None:
    assert strip_params(_https(before)) == _https(after)


@pytest.mark.parametrize("bad", [b"\x00", b"\x00\x01\x00\x00\x05",
                                 b"\x00\x01\x00\x00\x05\x00\x09ab"])
def test_strip_params_rejects_malformed_rdata(bad: bytes) -> None:
    with pytest.raises(wire.WireError):
        strip_params(bad)


def test_strip_ech_rewrites_the_message_and_keeps_other_records() -> None:
    q = dns.message.make_query("Www.Example.com", "HTTPS", use_edns=0)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "HTTPS",
                                        '1 . alpn=h2 ech="AAT+DQAA"', '2 . alpn=h3'))
    r.additional.append(dns.rrset.from_text("www.example.com.", 300, "IN", "A", "192.0.2.7"))
    raw = r.to_wire()
    out = dns.message.from_wire(strip_ech(raw))
    assert sorted(rd.to_text() for rd in out.answer[0]) == ['1 . alpn="h2"', '2 . alpn="h3"']
    assert out.answer[0].ttl == 300
    assert out.additional[0][0].address == "192.0.2.7"
    assert out.question[0].name.to_text() == "Www.Example.com."   # question bytes untouched
    assert out.id == q.id and out.edns == 0
    # Nothing to strip: the very same bytes come back.
    r2 = dns.message.make_response(q)
    r2.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "HTTPS", "1 . alpn=h2"))
    assert strip_ech(r2.to_wire()) == r2.to_wire()


def test_strip_ech_rejects_truncated_messages() -> None:
    q = dns.message.make_query("example.com", "HTTPS")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "HTTPS", '1 . ech="AAT+DQAA"'))
    raw = r.to_wire()
    with pytest.raises((wire.WireError, struct.error)):
        strip_ech(raw[:-3])
