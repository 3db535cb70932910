"""Build the proxy's Rules from disk: URL lists, feeds' verified copies, policies, SafeSearch.

Runs in a worker thread of the proxy process (and may be called by the gateway process): it
reads files only. A feed's entries come from its last-known-good copy, re-verified by the feed
client's own loading (signatures and diff chain), never from unverified bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.config.checks import check_files
from gateway.config.gateway import GatewayConfig, load_config
from gateway.config.limits import FileLimits
from gateway.feedformat.document import FeedEntry
from gateway.lists.catalog import LIST_BYTES_KEY, Catalog, Source, load_catalog
from gateway.lists.overlay import Overlay
from gateway.policy.netindex import PrefixMap
from gateway.policy.policyfile import Policy, load_policy, policy_files
from gateway.policy.safesearch import load_rewrites
from gateway.proxy.rules import GOOGLE, YOUTUBE, ClientTier, Rules, rules_intercept_hosts
from gateway.proxy.urls import LegalOrder, UrlEntry, UrlIndex, UrlKey, parse_entry_url
from gateway.util.fingerprint import Fingerprint, fingerprint
from gateway.util.readfile import read_capped

log = logging.getLogger(__name__)

HASH_TYPES = ("sha256", "pdq")
MAX_SKIPPED_LOGGED = 20


@dataclass
class ProxyState:
    """A built rule set and what it was built from (to know when to rebuild)."""

    config: GatewayConfig
    rules: Rules
    tiers: list[ClientTier]
    watched: list[Path] = field(default_factory=list)
    skipped: int = 0
    # Per signed feed: the serial in force and its block entries (the self-probe's input).
    feeds: dict[str, tuple[int, list[FeedEntry]]] = field(default_factory=dict)


class _NoTarget:
    """The feed client's overlay target: the proxy only reads entries, DNS is not its job."""

    def set_overlay(self, name: str, overlay: Overlay | None) -> int:
        return 0


def feed_entries(config: GatewayConfig) -> dict[str, list[FeedEntry]]:
    """Per signed feed, the entries of its verified last-known-good copy (block actions only)."""
    return {name: entries for name, (_, entries) in feed_sets(config).items()}


def feed_sets(config: GatewayConfig) -> dict[str, tuple[int, list[FeedEntry]]]:
    """Per signed feed, (serial, block entries) of its verified last-known-good copy (held
    changes left out, as the gateway leaves them out: gateway/feeds/hold.py).

    A throwaway FeedClient (in-memory ledger, private metrics) does the loading, so the
    signature and diff-chain checks are exactly the gateway's; nothing is written to disk.
    """
    from gateway.feeds.client import FeedClient
    from gateway.feeds.ledger import Ledger
    from gateway.feeds.stats import FeedMetrics

    out: dict[str, tuple[int, list[FeedEntry]]] = {}
    ledger = Ledger(Path(":memory:"))
    try:
        for cfg in config.feeds:
            if not cfg.signed:
                continue  # plain list feeds carry names only
            client = FeedClient(cfg, config.feed_guard, _NoTarget(), None, ledger,
                                FeedMetrics(CollectorRegistry()), config.state_dir)
            if client.load_local() and client.applied is not None:
                out[cfg.name] = (client.applied.serial,
                                 [e for e in client.applied.entries.values()
                                  if e.action == "block"])
    finally:
        ledger.close()
    return out


def feed_files(config: GatewayConfig) -> list[Path]:
    """A signed feed's stored snapshot, signature and diff directory, and its held changes
    (a confirm releases them without a new document), to notice updates."""
    d = config.state_dir / "feeds"
    return [p for cfg in config.feeds if cfg.signed
            for p in (d / f"{cfg.name}.json", d / f"{cfg.name}.sig", d / f"{cfg.name}.d",
                      d / f"{cfg.name}.held.json")]


def url_list_entries(source: Source, max_bytes: int = FileLimits.list_bytes
                     ) -> tuple[list[tuple[UrlKey, UrlEntry]], int]:
    """A `format: urls` file: one URL per line, `#` comments; bad lines are skipped (logged
    with file:line, like the DNS lists' skipped lines). At most `max_bytes` are read."""
    out: list[tuple[UrlKey, UrlEntry]] = []
    skipped = 0
    text = read_capped(source.path, max_bytes, LIST_BYTES_KEY).decode("utf-8", "replace")
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = parse_entry_url(line)
        except ValueError as exc:
            skipped += 1
            if skipped <= MAX_SKIPPED_LOGGED:
                log.warning("%s:%d: skipped: %s", source.path, n, exc)
            continue
        origin = f"{source.path.name}:{n}"
        out.append((key, UrlEntry(origin, line, (source.category,), source.mandatory,
                                  None, origin)))
    return out, skipped


def url_feed_entries(feed: str, entries: Iterable[FeedEntry]) -> list[tuple[UrlKey, UrlEntry]]:
    """A feed's `url` entries as index items (values were validated by the feed parser)."""
    out: list[tuple[UrlKey, UrlEntry]] = []
    for e in entries:
        if e.type != "url":
            continue
        try:
            key = parse_entry_url(e.value)
        except ValueError as exc:
            log.warning("feed %s: entry %s not usable by the proxy: %s", feed, e.id, exc)
            continue
        legal = (LegalOrder(e.legal_basis.authority, e.legal_basis.decision, e.legal_basis.date)
                 if e.legal_basis is not None else None)
        out.append((key, UrlEntry(e.id, e.value, e.categories, e.mandatory, legal,
                                  f"feed {feed}")))
    return out


def client_tiers(policy: Policy) -> tuple[PrefixMap[ClientTier], list[ClientTier]]:
    """Client address -> its network's tier (the network's own deny lists are names: DNS's)."""
    tiers = {name: ClientTier(name, frozenset(t.block), t.safesearch)
             for name, t in policy.tiers.items()}
    items = [(cidr, tiers[n.tier]) for n in policy.networks for cidr in n.cidrs
             if n.tier in tiers]
    return PrefixMap(items), list(tiers.values())


def restrict_hosts(config: GatewayConfig) -> dict[str, str]:
    """YouTube and Google hosts from the SafeSearch data file, plus proxy.restrict_hosts."""
    rewrites = load_rewrites()
    out = {host.decode("ascii"): engine for host, engine in rewrites.engine.items()
           if engine in (YOUTUBE, GOOGLE)}
    out.update((host, service) for service, host in config.proxy.restrict_hosts)
    return out


def build(config_path: Path, generation: int = 0) -> ProxyState:
    """Load everything and build the Rules; raises ConfigError (file:line) on a bad file."""
    config = load_config(config_path)
    check_files(config)
    files = config.limits.files
    catalog: Catalog = load_catalog(config.blocklists, files.config_bytes, files.list_bytes,
                                    config.state_dir)
    policy = load_policy(config.policies, catalog.categories.keys(), files.config_bytes)
    items: list[tuple[UrlKey, UrlEntry]] = []
    skipped = 0
    for source in catalog.url_sources():
        found, bad = url_list_entries(source, catalog.list_bytes)
        items.extend(found)
        skipped += bad
    hashes: list[FeedEntry] = []
    feeds = feed_sets(config)
    for feed, (_, entries) in feeds.items():
        items.extend(url_feed_entries(feed, entries))
        hashes.extend(e for e in entries if e.type in HASH_TYPES)
    clients, tiers = client_tiers(policy)
    rules = Rules(UrlIndex(items), clients, restrict_hosts(config),
                  frozenset(config.proxy.scan_hosts), tuple(hashes), generation)
    watched = [config.path, *config.policies, *policy_files(config.policies), *catalog.files(),
               *feed_files(config)]
    return ProxyState(config, rules, tiers, watched, skipped, feeds)


def watch_state(loaded: ProxyState) -> Fingerprint:
    """What a rebuild depends on; feed directories included (a new diff changes their mtime)."""
    return fingerprint(loaded.watched)


def intercept_set(loaded: ProxyState) -> list[str]:
    return rules_intercept_hosts(loaded.rules, loaded.tiers)


__all__ = ["ProxyState", "build", "feed_entries", "intercept_set"]
