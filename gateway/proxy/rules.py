"""The proxy's rule set and its pure decisions: what to decrypt, and what a request gets.

Built aside by gateway/proxy/sources.py and swapped whole; nothing here does I/O, so the
addon, `intercept_hosts` (the resolver's DNS steering) and the tests share one truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.policy.netindex import PrefixMap
from gateway.proxy.urls import UrlEntry, UrlIndex, host_key, request_key

if TYPE_CHECKING:
    from gateway.feedformat.document import FeedEntry

# Actions: the values of safegate_proxy_requests_total{action}.
ALLOWED, BLOCKED, LEGAL, RESTRICTED, REPLACED = (
    "allowed", "blocked", "legal", "restricted", "replaced")
ACTIONS = (ALLOWED, BLOCKED, LEGAL, RESTRICTED, REPLACED)
YOUTUBE, GOOGLE = "youtube", "google"
YOUTUBE_HEADER = "YouTube-Restrict"


@dataclass(frozen=True)
class ClientTier:
    """What the proxy needs of a client's tier: the categories it blocks, its SafeSearch."""

    name: str
    blocked: frozenset[str]
    safesearch: str = "off"        # off | moderate | strict


@dataclass(frozen=True)
class UrlVerdict:
    """What one request gets: `action` is a metric label; `entry` the URL entry that decided."""

    action: str
    entry: UrlEntry | None = None
    category: str = ""
    headers: tuple[tuple[str, str], ...] = ()       # set on the request (restricted modes)
    query: tuple[tuple[str, str], ...] = ()         # set in the query (restricted modes)


@dataclass
class Rules:
    """Everything the proxy enforces, for one generation of lists, feeds and policies."""

    urls: UrlIndex = field(default_factory=lambda: UrlIndex(()))
    clients: PrefixMap[ClientTier] = field(default_factory=lambda: PrefixMap(()))
    restrict: Mapping[str, str] = field(default_factory=dict)   # host -> youtube | google
    scan_hosts: frozenset[str] = frozenset()                   # image-hash scanned scopes
    hash_entries: tuple[FeedEntry, ...] = ()                       # sha256/pdq feed entries
    generation: int = 0

    def tier_of(self, address: str) -> ClientTier | None:
        """The tier of the client's network; None: in no network (refused, fail closed)."""
        return self.clients.lookup(address)

    def intercepts(self, sni: str, tier: ClientTier | None) -> bool:
        """Decrypt this TLS connection? Only for the intercept set, and restricted-mode hosts
        only for clients whose tier asks for SafeSearch (others pass through untouched)."""
        try:
            host = host_key(sni)
        except ValueError:
            return False
        name = sni.lower().rstrip(".")
        if self.urls.has_host(host) or _suffix_in(name, self.scan_hosts):
            return True
        return name in self.restrict and tier is not None and tier.safesearch != "off"

    def decide(self, tier: ClientTier, host: str, port: int | None,
               path_and_query: str) -> UrlVerdict:
        """URL entries first (mandatory, then the tier's categories), then restricted modes."""
        try:
            key = request_key(host, port, path_and_query)
        except ValueError:
            return UrlVerdict(ALLOWED)
        matches = self.urls.match(key)
        for entry in matches:
            if entry.mandatory:
                return UrlVerdict(LEGAL, entry, entry.categories[0])
        for entry in matches:
            for category in entry.categories:
                if category in tier.blocked:
                    return UrlVerdict(BLOCKED, entry, category)
        return restricted_mode(self.restrict.get(host.lower().rstrip(".")), tier.safesearch,
                               key.path)


def restricted_mode(service: str | None, mode: str, path: str) -> UrlVerdict:
    """YouTube's documented header, Google's `safe=active` on searches; else allowed."""
    if service is None or mode == "off":
        return UrlVerdict(ALLOWED)
    if service == YOUTUBE:
        return UrlVerdict(RESTRICTED, headers=((YOUTUBE_HEADER, mode.capitalize()),))
    if service == GOOGLE and path.startswith("/search"):
        return UrlVerdict(RESTRICTED, query=(("safe", "active"),))
    return UrlVerdict(ALLOWED)


def _suffix_in(host: str, names: frozenset[str]) -> bool:
    """`host` or one of its parent names (at a label boundary) is in `names`."""
    if not names:
        return False
    name = host
    while True:
        if name in names:
            return True
        dot = name.find(".")
        if dot < 0:
            return False
        name = name[dot + 1:]


def intercept_hosts(url_hosts: Iterable[str], restrict: Mapping[str, str],
                    scan_hosts: Iterable[str], tiers: Iterable[ClientTier]) -> list[str]:
    """The intercept set for DNS steering, sorted: lowercase names, no port.

    URL entries' hosts (and their `www.` twin: matching ignores it), image-scan scopes, and
    restricted-mode hosts when at least one tier asks for SafeSearch. The resolver answers the
    proxy's address for exactly these names (scan scopes: their subdomains too).
    """
    out: set[str] = set()
    for host in url_hosts:
        out.update((host, "www." + host))
    out.update(scan_hosts)
    if any(t.safesearch != "off" for t in tiers):
        out.update(restrict)
    return sorted(out)


def rules_intercept_hosts(rules: Rules, tiers: Iterable[ClientTier]) -> list[str]:
    """`intercept_hosts` of a built rule set."""
    return intercept_hosts(rules.urls.hosts(), rules.restrict, rules.scan_hosts, tiers)
