"""policy/identify.py: the one statement of who a query is from (the chain, `safegate explain`,
the block page and the self-probe all ask it)."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.dns.answers import BlockAnswers
from gateway.dns.view import View
from gateway.lists.index import ListIndex
from gateway.lists.index_builder import IndexBuilder
from gateway.policy import identify as ident
from gateway.policy.decide import Profile, ProfileId
from gateway.policy.netindex import PrefixMap

INDEX = ListIndex.from_bytes(IndexBuilder().to_bytes())


def _profile(kind: str, i: int) -> Profile:
    return Profile(ProfileId(kind, i), kind, f"tier-{kind}-{i}", frozenset(),  # type: ignore[arg-type]
                   "nxdomain", frozenset(), frozenset(), False, INDEX)


SCHOOL = _profile("network", 0)       # 192.0.2.0/24
FRONTEND_NET = _profile("network", 1)  # 127.0.0.53/32: the front end's own network
SUBSCRIBER = _profile("network", 2)   # 198.51.100.0/24: a client behind the front end
PHONE = _profile("token", 0)


def view(*, proxy_protocol: bool = True) -> View:
    """The query path's own View (its identity part is what identify reads)."""
    net = ipaddress.ip_network
    return View(PrefixMap([(net("192.0.2.0/24"), SCHOOL), (net("127.0.0.53/32"), FRONTEND_NET),
                           (net("198.51.100.0/24"), SUBSCRIBER)]),
                BlockAnswers.for_addresses(30, ["127.0.0.1"]), 1, {"t0ken": PHONE},
                PrefixMap([(net("127.0.0.53/32"), True)]), proxy_protocol)


@pytest.mark.parametrize(("client", "proxy", "ecs", "token", "expected"), [
    ("192.0.2.7", None, None, None, (SCHOOL, "192.0.2.7", ident.CLIENT, None)),
    ("203.0.113.1", None, None, None, (None, "203.0.113.1", ident.CLIENT, None)),
    ("203.0.113.1", None, None, "t0ken", (PHONE, "", ident.TOKEN, None)),
    ("192.0.2.7", None, None, "wrong", (None, "", ident.TOKEN, None)),
    # a client that is not a trusted front end claims another identity: ignored
    ("192.0.2.7", "198.51.100.9", None, None,
     (SCHOOL, "192.0.2.7", ident.CLIENT, ident.UNTRUSTED)),
    ("192.0.2.7", None, "198.51.100.0", None,
     (SCHOOL, "192.0.2.7", ident.CLIENT, ident.UNTRUSTED)),
    # the trusted front end: its PROXY v2 header first, else its ECS
    ("127.0.0.53", "198.51.100.9", "192.0.2.0", None,
     (SUBSCRIBER, "198.51.100.9", ident.PROXY, None)),
    ("127.0.0.53", None, "198.51.100.0", None, (SUBSCRIBER, "198.51.100.0", ident.ECS, None)),
    ("127.0.0.53", None, "", None, (FRONTEND_NET, "127.0.0.53", ident.CLIENT, ident.NOBODY)),
])
def test_identity_rules(client: str, proxy: str | None, ecs: str | None, token: str | None,
                        expected: tuple[object, ...]) -> None:
    assert tuple(ident.identify(view(), client, proxy, ecs, token)) == expected


def test_proxy_header_is_not_read_when_proxy_protocol_is_off() -> None:
    found = ident.identify(view(proxy_protocol=False), "127.0.0.53", "198.51.100.9")
    assert tuple(found) == (FRONTEND_NET, "127.0.0.53", ident.CLIENT, ident.NOT_READ)
