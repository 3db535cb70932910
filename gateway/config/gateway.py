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
from gateway.config.admin import ADMIN, AdminConfig, parse_admin
from gateway.config.dns import DNS, CacheConfig, ForwarderConfig, parse_dns
from gateway.config.feeds import (
    FEED,
    GUARD,
    IDENTITY,
    FeedConfig,
    FeedGuardConfig,
    parse_feed_guard,
    parse_feeds,
    parse_identity,
    with_enrollment,
)
from gateway.config.limits import Limits
from gateway.config.limitsconf import LIMITS, parse_limits
from gateway.config.listeners import check_listeners
from gateway.config.localdns import ForwardZone, LocalRecord
from gateway.config.proxy import PROXY, ProxyConfig, parse_proxy
from gateway.config.reports import REPORTS, ReportsConfig, parse_reports
from gateway.config.spec import SECONDS, STR, STRINGS, Key, Shape, list_of
from gateway.config.subscribers import SOURCE as SUBSCRIBERS
from gateway.config.subscribers import SubscribersSource, parse_subscribers
from gateway.config.tls import TlsConfig
from gateway.config.upstreams import UpstreamSpec
from gateway.config.values import FileRefs, Network, default, read_seconds
from gateway.config.web import METRICS, WEB, parse_metrics, parse_web
from gateway.config.yamlconf import (
    YDict,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
    load_yaml,
    where,
)
from gateway.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """The whole file, flat. Shape settings come from their dataclasses (DnsConfig,
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


RELOAD = Shape("reload", (
    Key("watch_interval", SECONDS, "seconds between checks of the config, policy and list files",
        default(GatewayConfig, "watch_interval")),
), "when changed files are reloaded")
# The whole file: `safegate schema gateway` is this; a new section adds its Key here.
GATEWAY = Shape("gateway.yaml", (
    Key("dns", DNS, DNS.doc),
    Key("web", WEB, WEB.doc),
    Key("metrics", METRICS, METRICS.doc),
    Key("policies", STRINGS, "policy files, or directories of *.yaml / *.yml",
        [str(p) for p in default(GatewayConfig, "policies")]),
    Key("blocklists", STR, "the lists.yaml naming the list files",
        str(default(GatewayConfig, "blocklists"))),
    Key("state_dir", STR, "compiled list index, downloaded lists, feeds' last-known-good "
        "copies and ledger", str(default(GatewayConfig, "state_dir"))),
    Key("reload", RELOAD, RELOAD.doc),
    Key("gateway", IDENTITY, IDENTITY.doc),
    Key("feeds", list_of(FEED), "signed feeds and plain list feeds, polled"),
    Key("feed_guard", GUARD, GUARD.doc),
    Key("timezone", STR, "IANA time zone of every schedule window",
        default(GatewayConfig, "timezone")),
    Key("subscribers", SUBSCRIBERS, "an ISP's prefix -> tier file (csv or yaml), or {url: ...} "
        "to poll it", alt=STR),
    Key("proxy", PROXY, PROXY.doc),
    Key("reports", REPORTS, REPORTS.doc),
    Key("limits", LIMITS, LIMITS.doc),
    Key("admin", ADMIN, ADMIN.doc),
), nullable=False)


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
    GATEWAY.check(doc)
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
    identity = with_enrollment(parse_identity(doc), state_dir, doc)
    feeds = parse_feeds(doc, rel, identity, refs)
    subscribers, subscribers_source = parse_subscribers(doc, rel, state_dir, refs)
    written_dns = doc.get("dns") or {}
    config = GatewayConfig(
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
    check_listeners(doc, config)
    return config


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
    RELOAD.check(reload)
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
