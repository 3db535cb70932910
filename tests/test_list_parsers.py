"""The list parsers, line by line (tables) and on real published lists (counts)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from gateway.lists import ParsedRule, Skipped
from gateway.lists.parsers import (
    FORMATS,
    SCOPE_BOTH,
    SCOPE_SELF,
    SCOPE_SUBS,
    Action,
    parse,
)


def _shared_data() -> Path:
    """The workplace's shared data: $SAFEGATE_SHARED_DATA, else ../shared/data next to the
    checkout, else /work/shared/data (a checkout elsewhere, e.g. CI's clean clone)."""
    env = os.environ.get("SAFEGATE_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "data",
                   Path("/work/shared/data")]
    return next((p for p in candidates if p.is_dir()), candidates[0])


DATA = _shared_data()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared test data) missing")

B, S, U = SCOPE_BOTH, SCOPE_SELF, SCOPE_SUBS
D, NX, ND, PT = Action.DEFAULT, Action.NXDOMAIN, Action.NODATA, Action.PASSTHRU


def one(fmt: str, line: str) -> list[tuple[bytes, int, Action] | str]:
    """What a single line yields: (key, scope, action) per rule, the reason per skip."""
    out: list[tuple[bytes, int, Action] | str] = []
    for item in parse(fmt, [line]):
        if isinstance(item, ParsedRule):
            assert item.line == 1
            out.append((item.key, item.scope, item.action))
        else:
            assert item.line == 1
            out.append(item.reason)
    return out


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0.0.0.0 bad.example", [(b"bad.example", B, D)]),
        ("127.0.0.1\tBad.Example.", [(b"bad.example", B, D)]),
        (":: bad.example", [(b"bad.example", B, D)]),
        ("::1 bad.example", [(b"bad.example", B, D)]),
        ("192.0.2.7 a.example b.example", [(b"a.example", B, D), (b"b.example", B, D)]),
        ("0.0.0.0 bad.example # inline comment", [(b"bad.example", B, D)]),
        ("0.0.0.0 bad.example#glued", [(b"bad.example", B, D)]),
        ("# 0.0.0.0 commented.example", []),
        ("#[group]", []),
        ("", []),
        ("   ", []),
        ("127.0.0.1 localhost", []),  # the localhost preamble is silent
        ("127.0.0.1 localhost.localdomain", []),
        ("255.255.255.255 broadcasthost", []),
        ("::1 ip6-localhost ip6-loopback", []),
        ("ff02::1 ip6-allnodes", []),
        ("0.0.0.0 0.0.0.0", []),
        ("0.0.0.0 local", []),
        ("0.0.0.0 ip6-ok.example", [(b"ip6-ok.example", B, D)]),  # only single-label ip6-*
        ("bad.example", ["first field is not an IP address"]),
        ("0.0.0.0", ["no host name after the address"]),
        ("0.0.0.0 bad..example", ["empty label"]),
        ("0.0.0.0 1.2.3.4", ["is an IP address, not a domain name"]),
        ("0.0.0.0 ok.example b@d.example", [(b"ok.example", B, D), "invalid character '@'"]),
    ],
)
def test_hosts(line: str, expected: list[object]) -> None:
    assert one("hosts", line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("bad.example", [(b"bad.example", B, D)]),
        ("  Bad.Example.  ", [(b"bad.example", B, D)]),
        ("*.bad.example", [(b"bad.example", U, D)]),
        (".bad.example", [(b"bad.example", B, D)]),
        ("bad.example # why", [(b"bad.example", B, D)]),
        ("# comment", []),
        ("! comment", []),
        ("", []),
        ("ví-dụ.test", [(b"xn--v-d-rma6749a.test", B, D)]),
        ("146.145.203.221", ["is an IP address, not a domain name"]),
        ("0.0.0.0 bad.example", ["more than one field"]),
        ("bad.example/path", ["invalid character '/'"]),
        ("a*.bad.example", ["invalid character '*'"]),
        ("*.", ["empty name"]),
    ],
)
def test_domains(line: str, expected: list[object]) -> None:
    assert one("domains", line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("||bad.example^", [(b"bad.example", B, D)]),
        ("||Bad.Example^|", [(b"bad.example", B, D)]),
        ("||bad.example^$important", [(b"bad.example", B, D)]),
        ("||*.bad.example^", [(b"bad.example", U, D)]),
        ("@@||good.example^", [(b"good.example", B, PT)]),
        ("@@||good.example^$important", [(b"good.example", B, PT)]),
        ("! comment", []),
        ("[Adblock Plus 2.0]", []),
        ("# hosts-style comment", []),
        ("", []),
        ("example.com##.ad-banner", ["cosmetic rule"]),
        ("##.ad-banner", ["cosmetic rule"]),
        ("example.com#@#.ad", ["cosmetic rule"]),
        ("example.com#?#div:has(> a)", ["cosmetic rule"]),
        ("example.com#$#body { color: red }", ["cosmetic rule"]),
        ("example.com#%#//scriptlet('abort')", ["cosmetic rule"]),
        ("example.com$$script[data-ad]", ["cosmetic rule"]),
        ("||a.example/x", ["URL path rule"]),
        ("||a.example/ads/$script", ["URL path rule"]),
        ("||a.example^*.gif$image", ["URL path rule"]),
        ("||a.example^$third-party", ["unsupported option $third-party"]),
        ("||a.example^$domain=b.example|c.example", ["unsupported option $domain"]),
        ("@@||a.example^$generichide", ["unsupported option $generichide"]),
        ("||a.example^$important,script", ["unsupported option $script"]),
        ("/banner[0-9]+/", ["regex rule"]),
        ("/^https:\\/\\/[a-z]+\\.com\\/$/$xmlhttprequest", ["regex rule"]),
        ("|http://a.example/", ["URL rule"]),
        ("/ads/*.gif", ["not a ||domain^ rule"]),
        ("banner", ["not a ||domain^ rule"]),
        ("||ads*.a.example^", ["wildcard pattern rule"]),
        ("||ads*.a.example", ["wildcard pattern rule"]),
        ("||a.example", ["prefix rule without ^ separator"]),
        ("||1.2.3.4^", ["is an IP address, not a domain name"]),
    ],
)
def test_adblock(line: str, expected: list[object]) -> None:
    assert one("adblock", line) == expected


def rpz(text: str) -> list[tuple[bytes, int, Action] | tuple[int, str]]:
    out: list[tuple[bytes, int, Action] | tuple[int, str]] = []
    for item in parse("rpz", text.splitlines()):
        if isinstance(item, ParsedRule):
            out.append((item.key, item.scope, item.action))
        else:
            out.append((item.line, item.reason))
    return out


HEAD = "$TTL 300\n@ SOA localhost. root.localhost. 1 3600 600 86400 300\n  NS localhost.\n"


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ("bad.example CNAME .", [(b"bad.example", S, NX)]),
        ("*.bad.example CNAME .", [(b"bad.example", U, NX)]),
        ("bad.example CNAME *.", [(b"bad.example", S, ND)]),
        ("good.example CNAME rpz-passthru.", [(b"good.example", S, PT)]),
        ("bad.example CNAME rpz-drop.", [(b"bad.example", S, NX)]),  # drop answered NXDOMAIN
        ("Bad.Example 300 IN CNAME .", [(b"bad.example", S, NX)]),
        ("bad.example IN 300 cname .", [(b"bad.example", S, NX)]),
        ("bad.example 1h CNAME . ; why", [(b"bad.example", S, NX)]),
        ("bad.example CNAME rpz-tcp-only.", [(4, "rpz-tcp-only is not supported")]),
        ("bad.example A 192.0.2.1", [(4, "local data (A) is not supported")]),
        ("bad.example AAAA 2001:db8::1", [(4, "local data (AAAA) is not supported")]),
        ('bad.example TXT "a ; (b"', [(4, "local data (TXT) is not supported")]),
        ("bad.example CNAME walled.example.", [(4, "CNAME to another name (local data) "
                                                   "is not supported")]),
        ("32.1.2.0.192.rpz-ip CNAME .", [(4, "unsupported trigger rpz-ip")]),
        ("ns.bad.example.rpz-nsdname CNAME .", [(4, "unsupported trigger rpz-nsdname")]),
        ("32.1.2.0.192.rpz-nsip CNAME .", [(4, "unsupported trigger rpz-nsip")]),
        ("32.1.2.0.192.rpz-client-ip CNAME .", [(4, "unsupported trigger rpz-client-ip")]),
        ("* CNAME .", [(4, "wildcard for the whole zone is not supported")]),
        ("bad.example", [(4, "record without a type")]),
        ("bad.example CNAME .\n  TXT \"note\"",
         [(b"bad.example", S, NX), (5, "local data (TXT) is not supported")]),
        ("bad.example CNAME .\n\t300 CNAME *.",  # owner inherited by the indented line
         [(b"bad.example", S, NX), (b"bad.example", S, ND)]),
        ("$INCLUDE other.zone", [(4, "unsupported directive $INCLUDE")]),
        ("@ A 192.0.2.1", [(4, "A record at the zone apex")]),
        ("bad.example NS ns.example.", [(4, "local data (NS) is not supported")]),
        ("bad.example.absolute. CNAME .",
         [(4, "absolute owner but the zone name is unknown (no $ORIGIN)")]),
    ],
)
def test_rpz_records(records: str, expected: list[object]) -> None:
    assert rpz(HEAD + records) == expected


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        # $ORIGIN names the zone; relative and absolute owners give the same trigger
        ("$ORIGIN rpz.local.\n@ SOA ns. h. 1 2 3 4 5\nbad.example CNAME .\n"
         "bad2.example.rpz.local. CNAME .\nelse.example.org. CNAME .",
         [(b"bad.example", S, NX), (b"bad2.example", S, NX),
          (5, "owner outside the zone rpz.local.")]),
        # no $ORIGIN: the SOA owner is the apex
        ("rpz.local. 300 IN SOA ns. h. (\n 1 ; serial\n 2 3 4 5 )\n  NS ns.\n"
         "bad.example.rpz.local. CNAME .\n*.bad.example.rpz.local. CNAME .",
         [(b"bad.example", S, NX), (b"bad.example", U, NX)]),
        # a later $ORIGIN inside the zone shifts relative owners but not the apex
        ("$ORIGIN rpz.local.\n@ SOA ns. h. 1 2 3 4 5\n$ORIGIN example.rpz.local.\n"
         "www CNAME .\n@ CNAME *.",
         [(b"www.example", S, NX), (b"example", S, ND)]),
        # a relative $ORIGIN is relative to the current one
        ("$ORIGIN rpz.local.\n@ SOA ns. h. 1 2 3 4 5\n$ORIGIN sub\nwww CNAME .",
         [(b"www.sub", S, NX)]),
        ("$ORIGIN rpz.local.\n@ SOA ns. h. (1 2 3\n 4 5", [(2, "unbalanced parentheses")]),
    ],
)
def test_rpz_zones(zone: str, expected: list[object]) -> None:
    assert rpz(zone) == expected


def test_line_numbers_and_skipped_text() -> None:
    items = list(parse("domains", ["# head", "", "ok.example", "1.2.3.4  ", "*.sub.example"]))
    assert items == [
        ParsedRule(b"ok.example", B, D, 3),
        Skipped(4, "1.2.3.4", "is an IP address, not a domain name"),
        ParsedRule(b"sub.example", U, D, 5),
    ]


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown list format 'csv'"):
        parse("csv", [])
    assert FORMATS == ("hosts", "domains", "adblock", "rpz")


def tally(fmt: str, path: Path) -> tuple[Counter[tuple[int, Action]], Counter[str]]:
    rules: Counter[tuple[int, Action]] = Counter()
    skipped: Counter[str] = Counter()
    lines = path.read_text(encoding="utf-8").split("\n")
    for item in parse(fmt, lines):
        if isinstance(item, ParsedRule):
            rules[(item.scope, item.action)] += 1
        else:
            skipped[item.reason] += 1
    return rules, skipped


# Expected counts agree with each list's own "Number of entries" header (and the data README);
# where we skip, the reasons say why.
@needs_data
@pytest.mark.parametrize(
    ("fmt", "name", "rules", "skipped"),
    [
        ("adblock", "hagezi/light.adblock.txt", {(B, D): 40961}, {}),
        ("adblock", "hagezi/social.adblock.txt", {(B, D): 898}, {}),
        ("adblock", "vn/hostsVN-adservers-all.adblock.txt", {(B, D): 8572, (B, PT): 1},
         {"wildcard pattern rule": 55}),
        ("rpz", "rpz/hagezi-light.rpz", {(S, NX): 40961, (U, NX): 40961}, {}),
        ("rpz", "rpz/hagezi-doh.rpz", {(S, NX): 3353, (U, NX): 3353}, {}),
        ("hosts", "hagezi/light.hosts", {(B, D): 86359}, {}),
        ("hosts", "vn/hostsVN.hosts", {(B, D): 18298}, {}),
        ("hosts", "vn/hostsVN-gambling-VN-only.hosts", {(B, D): 3747}, {}),
        ("domains", "hagezi/light.domains.txt", {(B, D): 86359}, {}),
        ("domains", "stevenblack/unified.domains.txt", {(B, D): 83808}, {}),
        ("domains", "ut1/games.domains",
         {(B, D): 33715}, {"is an IP address, not a domain name": 26}),
    ],
)
def test_real_lists(fmt: str, name: str, rules: dict[tuple[int, Action], int],
                    skipped: dict[str, int]) -> None:
    got_rules, got_skipped = tally(fmt, DATA / name)
    assert dict(got_rules) == rules
    assert dict(got_skipped) == skipped


@needs_data
def test_abpvn_browser_list_keeps_only_what_dns_can_enforce() -> None:
    # ABPVN is a browser list: 92 `||` rules, 59 `@@` exceptions, 668 cosmetic rules. Only the
    # 59 bare `||name^` rules block a whole host; the rest carry URL paths or request-type
    # options ($script, $third-party, $domain=...) that would overblock if applied to the host,
    # and all 59 exceptions are likewise scoped. Nothing may be silently lost: every
    # non-comment line is either a rule or a reasoned skip.
    rules, skipped = tally("adblock", DATA / "vn/abpvn.adblock.txt")
    assert dict(rules) == {(B, D): 59}
    assert skipped["cosmetic rule"] == 668
    assert skipped["URL path rule"] == 210
    assert skipped["regex rule"] == 2
    assert skipped["unsupported option $generichide"] == 26
    assert sum(rules.values()) + sum(skipped.values()) == 1077
