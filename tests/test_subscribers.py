"""Subscribers files (CSV/YAML), their longest-prefix match with networks, and EDE 17."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gateway.dns import proxyproto, wire
from gateway.errors import ConfigErrors
from gateway.lists import Action, Rule
from gateway.policy.decide import EDE_BLOCKED, EDE_CENSORED, EDE_FILTERED, Profile
from gateway.policy.netindex import PrefixMap, parse_prefix
from gateway.policy.subscribers import SubscriberProfile, load_subscribers
from tests.support.builders import make_profile


def write(tmp_path: Path, text: str, name: str = "subscribers.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_with_header_comments_and_shared_profiles(tmp_path: Path) -> None:
    subs = load_subscribers(write(tmp_path, """\
# exported 2026-11-23
prefix,tier,filtered,allow,deny
2001:db8:1200::/56,thcs
2001:db8:1300::/56,thcs

203.0.113.7,tieu-hoc,yes,,games.example social.example
198.51.100.0/24,tieu-hoc,yes,,games.example;social.example
2001:db8:ff00::/48,thpt,no,school.example,
"""))
    assert subs.count == 5
    assert subs.profiles == [
        SubscriberProfile("thcs"),
        SubscriberProfile("tieu-hoc", True, (), (b"games.example", b"social.example")),
        SubscriberProfile("thpt", False, (b"school.example",), ()),
    ]
    assert subs.uses == [2, 2, 1]
    assert subs.first_line == [3, 6, 8]
    m: PrefixMap[str] = PrefixMap([], [(subs.tables, ["A", "B", "C"])])
    assert m.lookup("2001:db8:1200:ff:1::9") == "A"     # inside the delegated /56
    assert m.lookup("2001:db8:1201::1") is None          # the next /56 is someone else's
    assert m.lookup("203.0.113.7") == "B"
    assert m.lookup("203.0.113.8") is None
    assert m.lookup("198.51.100.200") == "B"
    assert m.lookup("::ffff:198.51.100.1") == "B"        # dual-stack socket form
    assert m.lookup("2001:db8:ff00:1234::1") == "C"


def test_positional_columns_without_header(tmp_path: Path) -> None:
    subs = load_subscribers(write(tmp_path, "10.0.0.0/8,thpt\n10.1.0.0/16,thcs,yes\n"))
    m: PrefixMap[SubscriberProfile] = PrefixMap([], [(subs.tables, subs.profiles)])
    assert m.lookup("10.1.2.3") == SubscriberProfile("thcs", True)   # longest prefix wins
    assert m.lookup("10.2.0.1") == SubscriberProfile("thpt")


def test_errors_name_file_and_line_and_keep_going(tmp_path: Path) -> None:
    path = write(tmp_path, """\
prefix,tier,filtered
10.0.0.1,thcs
10.0.0.300,thcs
2001:db8::/129,thcs
10.0.0.2,
10.0.0.3,thcs,maybe
10.0.0.1,thpt
10.0.0.4,thcs,no,extra
""")
    with pytest.raises(ConfigErrors) as err:
        load_subscribers(path)
    lines = str(err.value).splitlines()
    assert lines == [
        f"{path}:3: '10.0.0.300' is not an IPv4 address",
        f"{path}:4: bad prefix length '129' (IPv6: 0-128)",
        f"{path}:5: 10.0.0.2: missing tier",
        f"{path}:6: filtered must be yes or no, got 'maybe'",
        f"{path}:7: 10.0.0.1: this prefix is already listed at line 2 with different settings",
        f"{path}:8: more columns than the header names (prefix, tier, filtered)",
    ]


def test_unknown_header_column_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "prefix,tier,filterd\n10.0.0.1,thcs,yes\n")
    with pytest.raises(ConfigErrors, match=r"subscribers.csv:1: header: unknown or repeated "
                                           r"column\(s\) filterd"):
        load_subscribers(path)


def test_unknown_tier_is_reported_at_its_first_line(tmp_path: Path) -> None:
    path = write(tmp_path, "10.0.0.1,thcs\n10.0.0.2,grade-9\n10.0.0.3,grade-9\n")
    subs = load_subscribers(path)
    with pytest.raises(ConfigErrors) as err:
        subs.check_tiers(["thcs", "thpt"])
    assert str(err.value) == (f"{path}:2: tier 'grade-9' is not defined in the policies "
                              "(used by 2 subscriber prefixes)")


def test_yaml_form(tmp_path: Path) -> None:
    path = write(tmp_path, """\
- {prefix: "2001:db8:1200::/56", tier: thcs, filtered: true, deny: [games.example]}
- {prefix: 203.0.113.9, tier: thpt}
""", "subs.yaml")
    subs = load_subscribers(path)
    assert subs.profiles == [SubscriberProfile("thcs", True, (), (b"games.example",)),
                             SubscriberProfile("thpt")]
    bad = write(tmp_path, "- {prefix: 203.0.113.9, tier: thpt, color: red}\n", "bad.yaml")
    with pytest.raises(Exception, match=r"bad.yaml:1: .*color"):
        load_subscribers(bad)


def test_subscriber_prefix_beats_its_network_and_a_longer_network_beats_it(tmp_path: Path
                                                                         ) -> None:
    subs = load_subscribers(write(tmp_path, "10.1.0.0/16,sub\n"))
    nets = [(ipaddress.ip_network("10.0.0.0/8"), "isp"), (ipaddress.ip_network("10.1.2.0/24"),
                                                           "lab"),
            (ipaddress.ip_network("10.1.0.0/16"), "same-length-network")]
    m: PrefixMap[str] = PrefixMap(nets, [(subs.tables, ["subscriber"])])
    assert m.lookup("10.9.0.1") == "isp"
    assert m.lookup("10.1.9.1") == "subscriber"      # equal length: the subscriber entry wins
    assert m.lookup("10.1.2.3") == "lab"
    assert m.match("10.1.9.1") == ("10.1.0.0/16", "subscriber")


def test_parse_prefix_masks_host_bits() -> None:
    assert parse_prefix("2001:db8:1200::1/56") == parse_prefix("2001:db8:1200::/56")
    assert parse_prefix("192.0.2.1") == (4, 32, 0xC0000201)


class _Index:
    def __init__(self, rules: dict[bytes, list[Rule]]) -> None:
        self.rules = rules

    def match(self, key: bytes) -> list[tuple[int, list[Rule]]]:
        return [(0, self.rules[key])] if key in self.rules else []


def _profile(filtered: bool) -> Profile:
    index = _Index({b"games.example": [Rule("games", 0, Action.DEFAULT, False)],
                    b"csam.invalid": [Rule("csam", 0, Action.DEFAULT, True)]})
    return make_profile({"games"}, network="subscribers", tier="thcs",
                        deny={b"deny.example"}, index=index, filtered=filtered)


def test_filtered_subscribers_get_ede_17_but_legal_blocks_stay_censored() -> None:
    chosen, plain = _profile(True), _profile(False)
    assert chosen.decide(b"games.example").ede == EDE_FILTERED
    assert chosen.decide(b"deny.example").ede == EDE_FILTERED
    assert chosen.decide(b"csam.invalid").ede == EDE_CENSORED
    assert plain.decide(b"games.example").ede == EDE_BLOCKED


def test_proxy_v2_header_round_trip_and_errors() -> None:
    hdr = proxyproto.build("2001:db8:1200::5", "::1", 40000, 53)
    assert proxyproto.parse(hdr + b"dns") == ("2001:db8:1200::5", len(hdr))
    hdr4 = proxyproto.build("203.0.113.7", "127.0.0.1", 1, 53, tlvs=b"\x04\x00\x01x")
    assert proxyproto.parse(hdr4) == ("203.0.113.7", 16 + 12 + 4)
    local = proxyproto.SIGNATURE + bytes([0x20, 0x00, 0, 0])
    assert proxyproto.parse(local) == (None, 16)
    for bad, message in [
        (hdr[:20], "truncated"),
        (proxyproto.SIGNATURE + bytes([0x11, 0x11, 0, 0]), "version 1"),
        (proxyproto.SIGNATURE + bytes([0x23, 0x11, 0, 0]), "command 3"),
        (proxyproto.SIGNATURE + bytes([0x21, 0x21, 0, 4]) + b"\0" * 4, "too short"),
        (b"\0" * 16, "signature"),
    ]:
        with pytest.raises(proxyproto.ProxyHeaderError, match=message):
            proxyproto.parse(bad)


def test_ecs_address_and_truncation() -> None:
    v6 = bytes.fromhex("0002 38 00 20010db81200ab".replace(" ", ""))   # 2001:db8:1200:ab00::/56
    assert wire.ecs_address(v6) == "2001:db8:1200:ab00::"
    v4 = bytes.fromhex("0001 20 00 cb007107".replace(" ", ""))         # 203.0.113.7/32
    assert wire.ecs_address(v4) == "203.0.113.7"
    assert wire.ecs_truncate(v4) == bytes.fromhex("0001180 0cb0071".replace(" ", ""))
    assert wire.ecs_truncate(bytes.fromhex("00011700cb0071")) == bytes.fromhex("00011700cb0070")
    assert wire.ecs_address(bytes.fromhex("00010000")) is None           # /0 names nobody
    assert wire.ecs_address(bytes.fromhex("00012000cb00")) is None       # address too short
    assert wire.ecs_address(b"\x00") is None
