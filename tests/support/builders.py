"""Builders for the objects unit tests assemble by hand: a Profile, a list index, a Resolver.

Each takes only what a test varies; the rest are the plain defaults the gateway would use, so
a change to a constructor is made here once instead of in every test file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from gateway.config.dns import CacheConfig, ForwarderConfig
from gateway.dns.answers import BlockAnswers
from gateway.dns.cache import AnswerCache
from gateway.dns.chain import Resolver
from gateway.dns.stats import DnsStats
from gateway.dns.upstream import Forwarder
from gateway.dns.upstream_base import Upstream
from gateway.dns.view import View
from gateway.errors import ConfigError, ConfigErrors
from gateway.lists import SCOPE_BOTH, Action, Rule
from gateway.lists.index import ListIndex
from gateway.lists.index_builder import IndexBuilder
from gateway.policy.decide import Profile, ProfileId
from gateway.policy.netindex import PrefixMap
from gateway.policy.policyfile import load_policy

# An upstream nothing answers on (the discard port): unit tests never reach it.
NOWHERE = Upstream("127.0.0.1", 9)


def list_index(rules: dict[bytes, str] | None = None) -> ListIndex:
    """A compiled index with `name -> category` rules (both scopes, default action)."""
    b = IndexBuilder()
    for name, category in (rules or {}).items():
        b.add(name, Rule(category, SCOPE_BOTH, Action.DEFAULT, False))
    return ListIndex.from_bytes(b.to_bytes())


def make_profile(blocked: Iterable[str] = (), *, id: int = 0, network: str = "net",
                 tier: str = "tier", answer: str = "nxdomain", allow: Iterable[bytes] = (),
                 deny: Iterable[bytes] = (), default_block: bool = False,
                 index: Any = None, **options: Any) -> Profile:
    """A Profile blocking `blocked` categories; `index` defaults to an empty list index and
    `options` are Profile's keyword options (rewrites, bypass, filtered, memo sizes...)."""
    return Profile(ProfileId("network", id), network, tier, frozenset(blocked), answer,
                   frozenset(allow), frozenset(deny), default_block,
                   list_index() if index is None else index, **options)


def make_resolver(clients: Profile | list[tuple[str, Profile]], *,
                  answers: BlockAnswers | None = None, cache: AnswerCache | None = None,
                  forwarder: Forwarder | None = None,
                  clock: Callable[[], float] | None = None) -> Resolver:
    """A Resolver (cache + forwarder + chain) over a view. `clients` is one profile for
    127.0.0.1 or (cidr, profile) pairs; the forwarder points nowhere unless one is given."""
    pairs = [("127.0.0.1/32", clients)] if isinstance(clients, Profile) else clients
    view = View(PrefixMap([(ipaddress.ip_network(cidr), p) for cidr, p in pairs]),
                answers or BlockAnswers.for_addresses(30, []), 1)
    fwd = forwarder or Forwarder([NOWHERE], ForwarderConfig())
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    return Resolver(view, cache or AnswerCache(CacheConfig()), fwd, DnsStats(), **extra)


def policy_error(directory: Path, text: str, categories: Iterable[str]) -> tuple[Path, str]:
    """(the file, its error): `text` written as a policy file that load_policy must refuse."""
    path = directory / "p.yaml"
    path.write_text(text)
    with pytest.raises((ConfigError, ConfigErrors)) as exc:
        load_policy([path], list(categories))
    return path, str(exc.value)
