"""gateway.yaml: listeners, upstreams, where policies and lists live. Shape is a contract.

One parser per section, each next to its dataclass (dns.py, web.py, feeds.py, subscribers.py,
proxy.py, reports.py, limitsconf.py); this module reads the top-level keys and puts the
sections together. A default is written once, in the dataclass that holds the setting.
Parsing reads only gateway.yaml: the files it names are opened by checks.check_files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.config.addresses import Address
from gateway.config.admin import AdminConfig, parse_admin
from gateway.config.dns import CacheConfig, ForwarderConfig, parse_dns
from gateway.config.feeds import (
    FeedConfig,
    FeedGuardConfig,
    parse_feed_guard,
    parse_feeds,
    parse_identity,
)
from gateway.config.limits import Limits
from gateway.config.limitsconf import parse_limits
from gateway.config.localdns import ForwardZone, LocalRecord
from gateway.config.proxy import ProxyConfig, parse_proxy
from gateway.config.reports import ReportsConfig, parse_reports
from gateway.config.subscribers import SubscribersSource, parse_subscribers
from gateway.config.tls import TlsConfig
from gateway.config.upstreams import UpstreamSpec
from gateway.config.values import FileRefs, Network, default, read_seconds
from gateway.config.web import parse_metrics, parse_web
from gateway.config.yamlconf import (
    YDict,
    check_keys,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
    load_yaml,
    where,
)
from gateway.errors import ConfigError

TOP_KEYS = ("dns", "web", "metrics", "policies", "blocklists", "state_dir", "reload", "gateway",
            "feeds", "feed_guard", "timezone", "subscribers", "proxy", "reports", "limits", "admin")
RELOAD_KEYS = ("watch_interval",)


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """The whole file, flat. Section settings come from their dataclasses (DnsConfig,
    WebConfig, ...) which hold their defaults; the top-level keys' defaults are here."""

    path: Path
    # dns: (config/dns.py DnsConfig)
    dns_listen: tuple[Address, ...]
    upstreams: tuple[UpstreamSpec, ...]      # dns.upstreams: plain DNS or tls://
    block_ttl: int
    tcp_idle_timeout: float
    cache: CacheConfig
    forwarder: ForwarderConfig
    dot: TlsConfig | None                    # dns.tls: DNS over TLS listeners
    trusted_frontends: tuple[Network, ...]
    proxy_protocol: bool
    forward_ecs: bool
    workers: int
    local_records: tuple[LocalRecord, ...]   # dns.local_records (config/localdns.py)
    forward_zones: tuple[ForwardZone, ...]   # dns.forward_zones
    # web: and metrics: (config/web.py)
    web_listen: tuple[Address, ...]          # web.listen: one or more (dual stack)
    blockpage_addresses: tuple[str, ...]
    web_tls: TlsConfig | None                # web.tls: the web listener (block page, DoH) on HTTPS
    metrics_listen: tuple[Address, ...]
    # gateway: feeds: feed_guard: (config/feeds.py)
    gateway_id: str
    gateway_token: str
    report_stats: bool
    feeds: tuple[FeedConfig, ...]
    feed_guard: FeedGuardConfig
    # subscribers: (config/subscribers.py): ISP subscribers, prefix -> tier. From a URL,
    # `subscribers` is the local last-known-good copy in state_dir.
    subscribers: Path | None
    subscribers_source: SubscribersSource | None
    proxy: ProxyConfig
    reports: ReportsConfig
    limits: Limits
    admin: AdminConfig | None = None         # admin: the admin page (config/admin.py); off if unset
    # Top-level keys (relative paths are relative to gateway.yaml).
    policies: tuple[Path, ...] = (Path("policies"),)
    blocklists: Path = Path("blocklists/lists.yaml")
    state_dir: Path = Path("var")
    watch_interval: float = 2.0              # reload.watch_interval
    timezone: str = "Asia/Ho_Chi_Minh"       # schedule windows are wall times in this zone
    # gateway.yaml's line naming each file ("policies[0]", "blocklists"): errors point there.
    path_lines: dict[str, int] = field(default_factory=dict, compare=False)
    # Where the other files check_files opens are named (certificates, keys, CA bundles).
    file_refs: FileRefs = field(default_factory=dict, compare=False)


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate gateway.yaml; paths in it are relative to the file."""
    path = Path(path)
    # Read before its own limits are known: the default bound applies to gateway.yaml itself.
    raw = load_yaml(path)
    if raw is None:
        # An empty file (a truncated copy, a failed redirect) must not start a default gateway;
        # `{}` written on purpose still means "all defaults".
        raise ConfigError("gateway.yaml is empty; see deploy/example/gateway.yaml", str(path))
    doc = expect_mapping(raw, "gateway.yaml")
    if not doc.path:
        doc.path = str(path)
    check_keys(doc, TOP_KEYS, "gateway.yaml")
    base = path.resolve().parent

    def rel(p: str) -> Path:
        return Path(os.path.normpath(base / p))

    refs: FileRefs = {}
    dns = parse_dns(doc, rel, refs)
    web = parse_web(doc, rel, refs)
    metrics = parse_metrics(doc)
    policies, path_lines = _policies(doc, rel)
    blocklists = rel(expect_str(doc.get("blocklists", str(default(GatewayConfig, "blocklists"))),
                                "blocklists", doc, "blocklists"))
    path_lines["blocklists"] = where(None, doc, "blocklists")[1] or 0
    state_dir = rel(expect_str(doc.get("state_dir", str(default(GatewayConfig, "state_dir"))),
                               "state_dir", doc, "state_dir"))
    identity = parse_identity(doc)
    feeds = parse_feeds(doc, rel, identity, refs)
    subscribers, subscribers_source = parse_subscribers(doc, rel, state_dir, refs)
    written_dns = doc.get("dns") or {}
    return GatewayConfig(
        path=path.resolve(),
        dns_listen=dns.listen,
        upstreams=dns.upstreams,
        block_ttl=dns.block_ttl,
        tcp_idle_timeout=dns.tcp_idle_timeout,
        cache=dns.cache,
        forwarder=dns.forwarder,
        dot=dns.dot,
        trusted_frontends=dns.trusted_frontends,
        proxy_protocol=dns.proxy_protocol,
        forward_ecs=dns.forward_ecs,
        workers=dns.workers,
        local_records=dns.local_records,
        forward_zones=dns.forward_zones,
        web_listen=web.listen,
        blockpage_addresses=web.public_address,
        web_tls=web.tls,
        metrics_listen=metrics.listen,
        gateway_id=identity.id,
        gateway_token=identity.token,
        report_stats=identity.report_stats,
        feeds=feeds,
        feed_guard=parse_feed_guard(doc, feeds, dns.upstreams),
        subscribers=subscribers,
        subscribers_source=subscribers_source,
        proxy=parse_proxy(doc, rel, refs),
        reports=parse_reports(doc),
        admin=parse_admin(doc, rel, state_dir),
        limits=parse_limits(doc, dns.tcp_idle_timeout if "tcp_idle_timeout" in written_dns
                            else None),
        policies=policies,
        blocklists=blocklists,
        state_dir=state_dir,
        watch_interval=_watch_interval(doc),
        timezone=_timezone(doc),
        path_lines=path_lines,
        file_refs=refs,
    )


def _policies(doc: YDict, rel: Callable[[str], Path]) -> tuple[tuple[Path, ...], dict[str, int]]:
    """`policies:` files or directories, and the line naming each (for "not found" there)."""
    written = doc.get("policies", [str(p) for p in default(GatewayConfig, "policies")])
    entries = expect_list(written, "policies", doc, "policies")
    policies = tuple(rel(expect_str(p, "a policies entry", entries, i))
                     for i, p in enumerate(entries))
    if not policies:
        raise error_at("policies lists no file or directory", None, doc, "policies")
    lines = {f"policies[{i}]": where(None, entries, i)[1] or 0 for i in range(len(policies))}
    return policies, lines


def _watch_interval(doc: YDict) -> float:
    """`reload: {watch_interval}`: how often the named files are checked for changes."""
    reload = expect_mapping(doc.get("reload"), "reload", doc, "reload")
    check_keys(reload, RELOAD_KEYS, "reload")
    if "watch_interval" not in reload:
        return float(default(GatewayConfig, "watch_interval"))
    return read_seconds(reload["watch_interval"], "reload.watch_interval", reload,
                        "watch_interval")


def _timezone(doc: YDict) -> str:
    """`timezone:` an IANA zone name (zoneinfo), checked here so a typo is a file:line error."""
    name = expect_str(doc.get("timezone", default(GatewayConfig, "timezone")), "timezone", doc,
                      "timezone")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise error_at(f"timezone {name!r} is not a known IANA time zone (e.g. "
                       "Asia/Ho_Chi_Minh)", None, doc, "timezone") from None
    return name
