"""Who is asking: client address, PROXY v2 source, EDNS Client Subnet or DoH token -> profile.

The one statement of the identity rules, used by the query path (dns/chain.py), `safegate
explain`, the block page and the self-probe, so that they cannot disagree:

  - a DoH path token names its profile directly (an unknown token names none);
  - otherwise the client address decides, unless the client is one of dns.trusted_frontends:
    then a PROXY v2 header (when dns.proxy_protocol is on) names the real client, or else the
    query's EDNS Client Subnet does. From anyone else both are ignored: a client could claim
    any identity with them.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from gateway.policy.decide import Profile
from gateway.policy.netindex import PrefixMap

CLIENT = "client address"
PROXY = "PROXY v2"
ECS = "ECS"
TOKEN = "DoH path token"
# Why a header was not believed (Identity.ignored)
UNTRUSTED = "untrusted"            # the sender is not in dns.trusted_frontends
NOT_READ = "proxy_protocol off"    # dns.proxy_protocol is off: PROXY v2 headers are not read
NOBODY = "ecs names nobody"        # an ECS of source prefix 0 (or malformed)


class Clients(Protocol):
    """The identity part of the running View (dns/chain.py): who is who."""

    @property
    def clients(self) -> PrefixMap[Profile]: ...
    @property
    def tokens(self) -> dict[str, Profile]: ...
    @property
    def frontends(self) -> PrefixMap[bool] | None: ...
    @property
    def proxy_protocol(self) -> bool: ...


class Identity(NamedTuple):
    """A profile (None: nobody we serve) and how it was found.

    `address` is the address that decided ("" for a token); `source` is one of CLIENT, PROXY,
    ECS, TOKEN; `ignored` says why a PROXY v2 header or ECS was not believed (None if none
    was given or it was believed).
    """

    profile: Profile | None
    address: str
    source: str
    ignored: str | None = None


def identify(view: Clients, client: str, proxy_source: str | None = None,
             ecs: str | None = None, token: str | None = None) -> Identity:
    """The profile a query from `client` gets.

    `proxy_source`: the client a PROXY v2 header names; `ecs`: the address the query's EDNS
    Client Subnet names ("" when it names nobody: source prefix 0 or malformed), None when
    there is none; `token`: a DoH path token.
    """
    if token is not None:
        return Identity(view.tokens.get(token), "", TOKEN)
    if proxy_source is None and ecs is None:
        return Identity(view.clients.lookup(client), client, CLIENT)
    frontends = view.frontends
    if frontends is None or not frontends.lookup(client):
        return Identity(view.clients.lookup(client), client, CLIENT, UNTRUSTED)
    if proxy_source is not None:
        if not view.proxy_protocol:
            return Identity(view.clients.lookup(client), client, CLIENT, NOT_READ)
        return Identity(view.clients.lookup(proxy_source), proxy_source, PROXY)
    if not ecs:
        return Identity(view.clients.lookup(client), client, CLIENT, NOBODY)
    return Identity(view.clients.lookup(ecs), ecs, ECS)
