"""SafeSearch: the shipped host data, the rewrite verdict's place in the order, the reply."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from gateway.dns import wire
from gateway.dns.rewrite import cname_only, splice
from gateway.lists import SCOPE_BOTH, Action, Rule
from gateway.lists.index import ListIndex
from gateway.lists.index_builder import IndexBuilder
from gateway.policy.decide import Profile
from gateway.policy.safesearch import load_rewrites
from tests.support.builders import make_profile

REWRITES = load_rewrites()


@pytest.mark.parametrize(("mode", "host", "target"), [
    ("strict", b"www.google.com", b"forcesafesearch.google.com"),
    ("strict", b"www.google.com.vn", b"forcesafesearch.google.com"),
    ("strict", b"www.google.co.uk", b"forcesafesearch.google.com"),
    ("strict", b"www.google.no", b"forcesafesearch.google.com"),     # YAML `no` is not false
    ("moderate", b"www.google.de", b"forcesafesearch.google.com"),
    ("strict", b"www.youtube.com", b"restrict.youtube.com"),
    ("strict", b"m.youtube.com", b"restrict.youtube.com"),
    ("strict", b"youtubei.googleapis.com", b"restrict.youtube.com"),
    ("strict", b"youtube.googleapis.com", b"restrict.youtube.com"),
    ("strict", b"www.youtube-nocookie.com", b"restrict.youtube.com"),
    ("moderate", b"www.youtube.com", b"restrictmoderate.youtube.com"),
    ("strict", b"www.bing.com", b"strict.bing.com"),
    ("moderate", b"edgeservices.bing.com", b"strict.bing.com"),
    ("strict", b"duckduckgo.com", b"safe.duckduckgo.com"),
    ("strict", b"www.duckduckgo.com", b"safe.duckduckgo.com"),
    ("strict", b"start.duckduckgo.com", b"safe.duckduckgo.com"),
    ("strict", b"mail.google.com", None),
    ("strict", b"google.com", None),
    ("strict", b"forcesafesearch.google.com", None),
    ("off", b"www.google.com", None),
])
def test_shipped_data(mode: str, host: bytes, target: bytes | None) -> None:
    assert REWRITES.for_mode(mode).get(host) == target


def test_shipped_data_covers_many_google_domains() -> None:
    google = [h for h, e in REWRITES.engine.items() if e == "google"]
    assert len(google) > 180


def index() -> ListIndex:
    b = IndexBuilder()
    b.add(b"google.com", Rule("search", SCOPE_BOTH, Action.DEFAULT, False))
    return ListIndex.from_bytes(b.to_bytes())


def profile(mode: str, blocked: frozenset[str] = frozenset(), deny: frozenset[bytes] = frozenset(),
            allow: frozenset[bytes] = frozenset(), default_block: bool = False) -> Profile:
    return make_profile(blocked, answer="blockpage", allow=allow, deny=deny,
                        default_block=default_block, index=index(),
                        rewrites=REWRITES.for_mode(mode))


@pytest.mark.parametrize(("prof", "name", "want"), [
    (profile("strict"), b"www.google.com", (False, "safesearch", b"forcesafesearch.google.com")),
    (profile("moderate"), b"www.youtube.com",
     (False, "safesearch", b"restrictmoderate.youtube.com")),
    (profile("off"), b"www.google.com", (False, "none", b"")),
    # a blocked google stays blocked (category, deny, allowlist-only)
    (profile("strict", blocked=frozenset({"search"})), b"www.google.com", (True, "policy", b"")),
    (profile("strict", deny=frozenset({b"google.com"})), b"www.google.com", (True, "deny", b"")),
    (profile("strict", default_block=True), b"www.google.com", (True, "allowlist-only", b"")),
    # an allowed google is still rewritten
    (profile("strict", allow=frozenset({b"google.com"}), default_block=True), b"www.google.com",
     (False, "safesearch", b"forcesafesearch.google.com")),
])
def test_rewrite_verdict_order(prof: Profile, name: bytes, want: tuple[bool, str, bytes]) -> None:
    v = prof.decide(name)
    assert (v.blocked, v.reason, v.rewrite) == want
    assert v.ede == 0 or v.blocked


def _query(name: str, rdtype: str, edns: bool = True) -> tuple[dns.message.Message, wire.Query]:
    m = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, payload=1232)
    q = wire.parse_query(m.to_wire())
    assert q is not None
    return m, q


def _target_reply(rdtype: str, *records: tuple[str, int, str]) -> bytes:
    m = dns.message.make_query("forcesafesearch.google.com", rdtype)
    r = dns.message.make_response(m)
    for rd, ttl, text in records:
        r.answer.append(dns.rrset.from_text("forcesafesearch.google.com.", ttl, "IN", rd, text))
    return r.to_wire()


def test_splice_cname_then_addresses() -> None:
    m, q = _query("WWW.Google.com", "A")
    target = _target_reply("A", ("A", 300, "216.239.38.120"))
    out = dns.message.from_wire(splice(q, b"forcesafesearch.google.com", target, 1232, 30))
    assert out.id == m.id and out.rcode() == dns.rcode.NOERROR
    assert out.question[0].name.to_text() == "WWW.Google.com."          # case preserved
    cname, a = out.answer
    assert (cname.name.to_text(), cname.rdtype, cname.ttl) == ("WWW.Google.com.", 5, 300)
    assert cname[0].target.to_text() == "forcesafesearch.google.com."
    assert (a.name.to_text(), a.ttl, a[0].address) == ("forcesafesearch.google.com.", 300,
                                                       "216.239.38.120")
    assert out.edns == 0 and out.flags & dns.flags.RA


def test_splice_no_edns_negative_and_truncation() -> None:
    _m, q = _query("www.google.com", "AAAA", edns=False)
    empty = _target_reply("AAAA")
    out = dns.message.from_wire(splice(q, b"forcesafesearch.google.com", empty, 512, 30))
    assert len(out.answer) == 1 and out.answer[0].ttl == 30 and out.edns == -1
    many = _target_reply("A", *[("A", 60, f"192.0.2.{i}") for i in range(1, 60)])
    small = dns.message.from_wire(splice(q, b"forcesafesearch.google.com", many, 512, 30))
    assert small.flags & dns.flags.TC and not small.answer


def test_cname_query_gets_the_cname_only() -> None:
    _m, q = _query("www.bing.com", "CNAME")
    out = dns.message.from_wire(cname_only(q, b"strict.bing.com", 30))
    assert [(rr.rdtype, rr[0].target.to_text()) for rr in out.answer] == [(5, "strict.bing.com.")]
