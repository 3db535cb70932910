"""gateway.yaml: listeners, upstreams, where policies and lists live. Shape is a contract."""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config.limits import Limits
from gateway.config.upstreams import UpstreamSpec, parse_host_port, parse_upstream
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
from gateway.dns.cache import CacheConfig
from gateway.dns.upstream import ForwarderConfig
from gateway.errors import ConfigError
from gateway.util.names import normalize_name
from gateway.util.readfile import file_problem

Address = tuple[str, int]

TOP_KEYS = ("dns", "web", "metrics", "policies", "blocklists", "state_dir", "reload", "gateway",
            "feeds", "feed_guard", "timezone", "subscribers", "proxy", "reports", "limits")
DNS_KEYS = ("listen", "upstreams", "block_ttl", "tcp_idle_timeout", "upstream_timeout",
            "query_timeout", "cache", "tls", "trusted_frontends", "proxy_protocol", "forward_ecs",
            "workers", "upstream_0x20", "upstream_ca")
TLS_KEYS = ("listen", "cert", "key")
CACHE_KEYS = ("size", "min_ttl", "max_ttl", "negative_max_ttl", "stale_ttl")
WEB_KEYS = ("listen", "public_address", "tls")
METRICS_KEYS = ("listen",)
RELOAD_KEYS = ("watch_interval",)
IDENTITY_KEYS = ("id", "token", "report_stats")
FEED_KEYS = ("name", "url", "type", "public_key", "interval", "category", "mandatory", "acks",
             "long_poll", "max_age")
FEED_TYPES = ("safegate", "hosts", "domains", "adblock", "rpz")
GUARD_KEYS = ("never_block", "max_change")
MAX_CHANGE_KEYS = ("ratio", "entries")
SUBSCRIBERS_KEYS = ("url", "interval", "token_file", "format")
PROXY_KEYS = ("enabled", "listen", "ca_dir", "intercept_listen", "origin_ports", "public_address",
              "metrics_listen", "max_image_bytes", "upstream_ca", "restrict_hosts", "scan_hosts")
PROXY_SCHEMES = ("http", "https")
RESTRICT_SERVICES = ("youtube", "google")
REPORTS_KEYS = ("forward_to",)
_FEED_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class FeedConfig:
    """One `feeds:` item; `public_keys` is empty for plain (unauthenticated) list feeds."""

    name: str
    url: str
    type: str
    public_keys: tuple[Path, ...] = ()
    interval: float = 60.0
    category: str | None = None
    mandatory: bool = False
    acks: bool = False
    long_poll: float = 30.0
    # Oldest a signed feed's newest verified document may be (by its signed generated_at)
    # before the feed counts as stale. Publishers re-sign every hour by default (heartbeat);
    # the client fetches a fresh copy at max_age / 2.
    max_age: float = 86400.0

    @property
    def signed(self) -> bool:
        return self.type == "safegate"


@dataclass(frozen=True)
class FeedGuardConfig:
    """Defence in depth against a wrong or hostile feed: names never blocked, change limits."""

    never_block: tuple[str, ...] = ()
    max_change_ratio: float = 0.10
    max_change_entries: int = 1000


@dataclass(frozen=True)
class TlsConfig:
    """A certificate and key (PEM), checked loadable at config time; DoT also has listeners."""

    cert: Path
    key: Path
    listen: tuple[Address, ...] = ()


@dataclass(frozen=True)
class SubscribersSource:
    """`subscribers: {url: ...}`: the ISP's provisioning system publishes the file."""

    url: str
    interval: float = 300.0
    token_file: Path | None = None   # a bearer token for the URL, read at each poll


@dataclass(frozen=True)
class ProxyConfig:
    """`proxy:` the optional HTTP(S) filtering proxy (issue 5), a process of its own."""

    enabled: bool = False
    listen: Address = ("127.0.0.1", 3128)   # explicit proxy; DNS-steered interception too
    ca_dir: Path = Path("var/ca")            # generated CA, served at the web listener's /ca
    # DNS-steered listeners by scheme ("http"/"https"); the resolver answers their address for
    # names in the intercept set. Connections are forwarded to origin_ports[scheme] of the name.
    intercept_listen: tuple[tuple[str, Address], ...] = ()
    origin_ports: tuple[tuple[str, int], ...] = (("http", 80), ("https", 443))
    public_address: str = ""                 # host clients reach `listen` at (the PAC file)
    metrics_listen: Address = ("127.0.0.1", 9154)
    max_image_bytes: int = 4 * 1024 * 1024   # larger images are not hash-checked
    upstream_ca: Path | None = None          # CA bundle for origin certificates (default: certifi)
    restrict_hosts: tuple[tuple[str, str], ...] = ()   # (service, host) beyond the built-in ones
    scan_hosts: tuple[str, ...] = ()         # names (and subdomains) whose images are hash-checked


@dataclass(frozen=True)
class ReportsConfig:
    """`reports:` where harmful-content and mistake reports are forwarded (issue 5)."""

    forward_to: tuple[str, ...] = ()         # a publisher's /v1/reports or any JSON webhook


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    dns_listen: tuple[Address, ...]
    upstreams: tuple[UpstreamSpec, ...]      # dns.upstreams: plain DNS or tls://
    web_listen: Address
    blockpage_addresses: tuple[str, ...]
    metrics_listen: Address
    policies: tuple[Path, ...]
    blocklists: Path
    state_dir: Path
    block_ttl: int = 30
    tcp_idle_timeout: float = 10.0
    watch_interval: float = 2.0
    # gateway.yaml's line naming each file ("policies[0]", "blocklists"): errors point there.
    path_lines: dict[str, int] = field(default_factory=dict, compare=False)
    cache: CacheConfig = field(default_factory=CacheConfig)
    forwarder: ForwarderConfig = field(default_factory=ForwarderConfig)
    gateway_id: str = ""
    gateway_token: str = ""
    report_stats: bool = False
    feeds: tuple[FeedConfig, ...] = ()
    feed_guard: FeedGuardConfig = field(default_factory=FeedGuardConfig)
    dot: TlsConfig | None = None             # dns.tls: DNS over TLS listeners
    web_tls: TlsConfig | None = None         # web.tls: the web listener (block page, DoH) on HTTPS
    # Front ends (reverse proxies) whose X-Forwarded-For (and later PROXY v2 / ECS) we believe.
    trusted_frontends: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    timezone: str = "Asia/Ho_Chi_Minh"       # schedule windows are wall times in this zone
    # PROXY protocol v2 headers (UDP and TCP) are read from trusted_frontends only.
    proxy_protocol: bool = False
    # Pass a trusted front end's EDNS Client Subnet upstream (default: stripped, for privacy).
    forward_ecs: bool = False
    workers: int = 1                         # resolver processes sharing the DNS sockets
    subscribers: Path | None = None          # ISP subscribers: prefix -> tier (policy/subscribers)
    # When subscribers come from a URL: where and how often; `subscribers` is then the local
    # last-known-good copy in state_dir (runtime/subscribers_poll.py).
    subscribers_source: SubscribersSource | None = None
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    limits: Limits = field(default_factory=Limits)


def parse_address(text: str, default_port: int) -> Address:
    """"127.0.0.1:5353", "[::1]:5353", "::1", "0.0.0.0" -> (host, port); ValueError if bad."""
    return parse_host_port(text, default_port)


def format_address(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def system_nameservers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[Address]:
    """Nameservers from resolv.conf, the default upstreams when gateway.yaml names none."""
    out: list[Address] = []
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(parse_address(parts[1], 53))
            except ValueError:
                continue
    return out


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

    dns = expect_mapping(doc.get("dns"), "dns", doc, "dns")
    check_keys(dns, DNS_KEYS, "dns")
    listen = tuple(_addresses(dns.get("listen", ["127.0.0.1:5353"]), "dns.listen", dns, "listen",
                              53))
    if "upstreams" in dns:
        upstreams = _upstreams(dns["upstreams"], dns)
        if not upstreams:
            raise error_at("dns.upstreams is empty", None, dns, "upstreams")
    else:
        upstreams = tuple(UpstreamSpec(*a) for a in system_nameservers() if a not in listen)
        if not upstreams:
            raise error_at("no dns.upstreams given and none found in /etc/resolv.conf",
                           dns, doc, "dns")

    web = expect_mapping(doc.get("web"), "web", doc, "web")
    check_keys(web, WEB_KEYS, "web")
    web_listen = _address(web.get("listen", "127.0.0.1:8080"), "web.listen", web, "listen", 80)
    public = [str(a) for a in expect_list(web.get("public_address", []), "web.public_address",
                                          web, "public_address")]
    for i, a in enumerate(public):
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise error_at(f"web.public_address: {a!r} is not an IP address", None,
                           web.get("public_address"), i) from None
    if not public:
        if ipaddress.ip_address(web_listen[0]).is_unspecified:
            raise error_at("web.listen is a wildcard address: set web.public_address to the "
                           "address clients reach the block page at", None, web, "listen")
        public = [web_listen[0]]

    metrics = expect_mapping(doc.get("metrics"), "metrics", doc, "metrics")
    check_keys(metrics, METRICS_KEYS, "metrics")
    metrics_listen = _address(metrics.get("listen", "127.0.0.1:9153"), "metrics.listen", metrics,
                              "listen", 9153)

    policy_entries = expect_list(doc.get("policies", ["policies/"]), "policies", doc, "policies")
    policies = tuple(rel(expect_str(p, "a policies entry", policy_entries, i))
                     for i, p in enumerate(policy_entries))
    if not policies:
        raise error_at("policies lists no file or directory", None, doc, "policies")
    blocklists = rel(expect_str(doc.get("blocklists", "blocklists/lists.yaml"), "blocklists",
                                doc, "blocklists"))
    # Where each file is named, for a "not found" said at that line (state.check_paths).
    path_lines = {f"policies[{i}]": where(None, policy_entries, i)[1] or 0
                  for i in range(len(policies))}
    path_lines["blocklists"] = where(None, doc, "blocklists")[1] or 0
    state_dir = rel(expect_str(doc.get("state_dir", "var/"), "state_dir", doc, "state_dir"))

    reload = expect_mapping(doc.get("reload"), "reload", doc, "reload")
    check_keys(reload, RELOAD_KEYS, "reload")

    cache = expect_mapping(dns.get("cache"), "dns.cache", dns, "cache")
    check_keys(cache, CACHE_KEYS, "dns.cache")
    cache_cfg = CacheConfig(**{k: _int(cache[k], f"dns.cache.{k}", cache, k, 0)
                               for k in CACHE_KEYS if k in cache})
    if cache_cfg.min_ttl > cache_cfg.max_ttl:
        raise error_at("dns.cache.min_ttl is larger than max_ttl", None, cache, "min_ttl")
    fwd = ForwarderConfig(
        attempt_timeout=_float(dns.get("upstream_timeout", 1.5), "dns.upstream_timeout", dns,
                               "upstream_timeout"),
        query_timeout=_float(dns.get("query_timeout", 4.0), "dns.query_timeout", dns,
                             "query_timeout"),
        qname_0x20=_bool(dns.get("upstream_0x20", False), "dns.upstream_0x20", dns,
                         "upstream_0x20"),
        tls_ca=_upstream_ca(dns, rel),
    )
    identity = expect_mapping(doc.get("gateway"), "gateway", doc, "gateway")
    check_keys(identity, IDENTITY_KEYS, "gateway")
    gateway_id = _opt_str(identity, "id", "gateway.id")
    gateway_token = _opt_str(identity, "token", "gateway.token")
    report_stats = _bool(identity.get("report_stats", False), "gateway.report_stats", identity,
                         "report_stats")
    feeds = _feeds(doc, rel, gateway_id, gateway_token)
    guard = _feed_guard(doc, feeds, upstreams)
    dot = _tls(dns, "tls", "dns.tls", rel, listeners=True)
    web_tls = _tls(web, "tls", "web.tls", rel, listeners=False)
    frontends = _networks(dns.get("trusted_frontends", []), "dns.trusted_frontends", dns,
                          "trusted_frontends")
    proxy_protocol = _bool(dns.get("proxy_protocol", False), "dns.proxy_protocol", dns,
                           "proxy_protocol")
    if proxy_protocol and not frontends:
        raise error_at("dns.proxy_protocol is on but dns.trusted_frontends is empty: list the "
                       "front ends (dnsdist) allowed to send PROXY v2 headers", None, dns,
                       "proxy_protocol")
    forward_ecs = _bool(dns.get("forward_ecs", False), "dns.forward_ecs", dns, "forward_ecs")
    workers = _int(dns.get("workers", 1), "dns.workers", dns, "workers", 1)
    if workers > 64:
        raise error_at(f"dns.workers must be at most 64, got {workers}", None, dns, "workers")
    subscribers, subscribers_source = _subscribers(doc, rel, state_dir)
    return GatewayConfig(
        path=path.resolve(),
        dns_listen=listen,
        upstreams=upstreams,
        web_listen=web_listen,
        blockpage_addresses=tuple(public),
        metrics_listen=metrics_listen,
        policies=policies,
        blocklists=blocklists,
        state_dir=state_dir,
        block_ttl=_int(dns.get("block_ttl", 30), "dns.block_ttl", dns, "block_ttl", 0),
        tcp_idle_timeout=_float(dns.get("tcp_idle_timeout", 10.0), "dns.tcp_idle_timeout", dns,
                                "tcp_idle_timeout"),
        watch_interval=_float(reload.get("watch_interval", 2.0), "reload.watch_interval", reload,
                              "watch_interval"),
        path_lines=path_lines,
        cache=cache_cfg,
        forwarder=fwd,
        gateway_id=gateway_id,
        gateway_token=gateway_token,
        report_stats=report_stats,
        feeds=feeds,
        feed_guard=guard,
        dot=dot,
        web_tls=web_tls,
        trusted_frontends=frontends,
        timezone=_timezone(doc),
        proxy_protocol=proxy_protocol,
        forward_ecs=forward_ecs,
        workers=workers,
        subscribers=subscribers,
        subscribers_source=subscribers_source,
        proxy=_proxy(doc, rel),
        reports=_reports(doc),
        limits=_limits(doc, dns),
    )


def _limits(doc: YDict, dns: YDict) -> Limits:
    """`limits:` one sub-mapping per part; each key is a field of gateway/config/limits.py.

    `dns.tcp_idle_timeout` (the older spelling) still sets limits.tcp/dot.idle_timeout.
    """
    section = expect_mapping(doc.get("limits"), "limits", doc, "limits")
    defaults = Limits()
    check_keys(section, [f.name for f in fields(Limits)], "limits")
    parts: dict[str, Any] = {}
    for part in fields(Limits):
        current = getattr(defaults, part.name)
        sub = expect_mapping(section.get(part.name), f"limits.{part.name}", section, part.name)
        check_keys(sub, [f.name for f in fields(current)], f"limits.{part.name}")
        values: dict[str, Any] = {}
        for f in fields(current):
            if f.name not in sub:
                continue
            what = f"limits.{part.name}.{f.name}"
            if f.type == "bool":
                values[f.name] = _bool(sub[f.name], what, sub, f.name)
            elif f.type == "int":
                values[f.name] = _int(sub[f.name], what, sub, f.name, 0)
            elif f.type == "float":
                values[f.name] = _float(sub[f.name], what, sub, f.name)
            else:  # tuple[str, ...]: networks
                values[f.name] = tuple(str(n) for n in _networks(sub[f.name], what, sub, f.name))
        parts[part.name] = replace(current, **values)
    if "tcp_idle_timeout" in dns:
        idle = _float(dns["tcp_idle_timeout"], "dns.tcp_idle_timeout", dns, "tcp_idle_timeout")
        for stream in ("tcp", "dot"):   # DoT followed this key before limits: existed
            given = expect_mapping(section.get(stream), f"limits.{stream}", section, stream)
            if "idle_timeout" not in given:
                parts[stream] = replace(parts[stream], idle_timeout=idle)
    return Limits(**parts)


def _subscribers(doc: YDict, rel: Callable[[str], Path], state_dir: Path
                 ) -> tuple[Path | None, SubscribersSource | None]:
    """`subscribers: FILE` or `subscribers: {url, interval, token_file, format}`."""
    if "subscribers" not in doc:
        return None, None
    raw = doc["subscribers"]
    if isinstance(raw, str):
        path = rel(raw)
        problem = file_problem(path, sys.maxsize, "")   # its size is checked when it is read
        if problem is not None:
            raise error_at(f"subscribers: file {path} {problem}", None, doc, "subscribers")
        return path, None
    item = expect_mapping(raw, "subscribers (a file name, or {url: ...})", doc, "subscribers")
    check_keys(item, SUBSCRIBERS_KEYS, "subscribers")
    url = expect_str(item.get("url"), "subscribers.url", item, "url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise error_at(f"subscribers.url must be an http(s) URL, got {url!r}", None, item, "url")
    fmt = expect_str(item.get("format", "yaml" if parts.path.endswith((".yaml", ".yml"))
                              else "csv"), "subscribers.format", item, "format")
    if fmt not in ("csv", "yaml"):
        raise error_at(f"subscribers.format must be csv or yaml, got {fmt!r}", None, item,
                       "format")
    token_file = None
    if "token_file" in item:
        token_file = rel(expect_str(item["token_file"], "subscribers.token_file", item,
                                    "token_file"))
        if not token_file.is_file():
            raise error_at(f"subscribers.token_file {token_file} not found", None, item,
                           "token_file")
    interval = _float(item.get("interval", 300), "subscribers.interval", item, "interval")
    return state_dir / f"subscribers.{fmt}", SubscribersSource(url, interval, token_file)


def _proxy(doc: YDict, rel: Callable[[str], Path]) -> ProxyConfig:
    """`proxy:`; off unless `enabled: true`."""
    proxy = expect_mapping(doc.get("proxy"), "proxy", doc, "proxy")
    check_keys(proxy, PROXY_KEYS, "proxy")
    listen = _address(proxy.get("listen", "127.0.0.1:3128"), "proxy.listen", proxy, "listen",
                      3128)
    steer = expect_mapping(proxy.get("intercept_listen"), "proxy.intercept_listen", proxy,
                           "intercept_listen")
    check_keys(steer, PROXY_SCHEMES, "proxy.intercept_listen")
    ports = expect_mapping(proxy.get("origin_ports"), "proxy.origin_ports", proxy,
                           "origin_ports")
    check_keys(ports, PROXY_SCHEMES, "proxy.origin_ports")
    origin = {"http": 80, "https": 443}
    for scheme in PROXY_SCHEMES:
        if scheme in ports:
            origin[scheme] = _int(ports[scheme], f"proxy.origin_ports.{scheme}", ports, scheme, 1)
            if origin[scheme] > 65535:
                raise error_at(f"proxy.origin_ports.{scheme} must be a port (1-65535)", None,
                               ports, scheme)
    public = _opt_str(proxy, "public_address", "proxy.public_address")
    if not public and ipaddress.ip_address(listen[0]).is_unspecified:
        raise error_at("proxy.listen is a wildcard address: set proxy.public_address to the "
                       "address clients reach the proxy at (it goes in the PAC file)", None,
                       proxy, "listen")
    upstream_ca = None
    if "upstream_ca" in proxy:
        upstream_ca = rel(expect_str(proxy["upstream_ca"], "proxy.upstream_ca", proxy,
                                     "upstream_ca"))
        if not upstream_ca.is_file():
            raise error_at(f"proxy.upstream_ca: file {upstream_ca} not found", None, proxy,
                           "upstream_ca")
    services = expect_mapping(proxy.get("restrict_hosts"), "proxy.restrict_hosts", proxy,
                              "restrict_hosts")
    check_keys(services, RESTRICT_SERVICES, "proxy.restrict_hosts")
    restrict: list[tuple[str, str]] = []
    for service, raw in services.items():
        items = expect_list(raw, f"proxy.restrict_hosts.{service}", services, service)
        for i, item in enumerate(items):
            text = expect_str(item, f"an entry of proxy.restrict_hosts.{service}", items, i)
            try:
                restrict.append((str(service), normalize_name(text).decode("ascii")))
            except ValueError as exc:
                raise error_at(f"proxy.restrict_hosts.{service}: {text!r}: {exc}", item, items,
                               i) from None
    scan = expect_list(proxy.get("scan_hosts", []), "proxy.scan_hosts", proxy, "scan_hosts")
    scan_hosts: list[str] = []
    for i, item in enumerate(scan):
        text = expect_str(item, "an entry of proxy.scan_hosts", scan, i)
        try:
            scan_hosts.append(normalize_name(text).decode("ascii"))
        except ValueError as exc:
            raise error_at(f"proxy.scan_hosts: {text!r}: {exc}", item, scan, i) from None
    return ProxyConfig(
        enabled=_bool(proxy.get("enabled", False), "proxy.enabled", proxy, "enabled"),
        listen=listen,
        ca_dir=rel(expect_str(proxy.get("ca_dir", "var/ca"), "proxy.ca_dir", proxy, "ca_dir")),
        intercept_listen=tuple(
            (scheme, _address(steer[scheme], f"proxy.intercept_listen.{scheme}", steer, scheme,
                              origin[scheme]))
            for scheme in PROXY_SCHEMES if scheme in steer),
        origin_ports=tuple(origin.items()),
        public_address=public or listen[0],
        metrics_listen=_address(proxy.get("metrics_listen", "127.0.0.1:9154"),
                                "proxy.metrics_listen", proxy, "metrics_listen", 9154),
        max_image_bytes=_int(proxy.get("max_image_bytes", 4 * 1024 * 1024),
                             "proxy.max_image_bytes", proxy, "max_image_bytes", 0),
        upstream_ca=upstream_ca,
        restrict_hosts=tuple(restrict),
        scan_hosts=tuple(scan_hosts),
    )


def _reports(doc: YDict) -> ReportsConfig:
    """`reports:`; each forward_to is an http(s) URL."""
    reports = expect_mapping(doc.get("reports"), "reports", doc, "reports")
    check_keys(reports, REPORTS_KEYS, "reports")
    items = expect_list(reports.get("forward_to", []), "reports.forward_to", reports,
                        "forward_to")
    urls: list[str] = []
    for i, item in enumerate(items):
        url = expect_str(item, "a reports.forward_to entry", items, i)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise error_at(f"reports.forward_to: {url!r} is not an http(s) URL", None, items, i)
        urls.append(url)
    return ReportsConfig(tuple(urls))


def _timezone(doc: YDict) -> str:
    """`timezone:` an IANA zone name (zoneinfo), checked here so a typo is a file:line error."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = expect_str(doc.get("timezone", "Asia/Ho_Chi_Minh"), "timezone", doc, "timezone")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise error_at(f"timezone {name!r} is not a known IANA time zone (e.g. "
                       "Asia/Ho_Chi_Minh)", None, doc, "timezone") from None
    return name


def _tls(parent: YDict, key: str, what: str, rel: Callable[[str], Path], *, listeners: bool
         ) -> TlsConfig | None:
    """`dns.tls` / `web.tls`; a cert or key that does not load is an error here, not at bind."""
    if key not in parent:
        return None
    from gateway.dns.dot import server_context

    tls = expect_mapping(parent[key], what, parent, key)
    check_keys(tls, TLS_KEYS if listeners else ("cert", "key"), what)
    for required in ("cert", "key", *(("listen",) if listeners else ())):
        if required not in tls:
            raise error_at(f"{what} is missing {required!r}", tls, parent, key)
    cert = rel(expect_str(tls["cert"], f"{what}.cert", tls, "cert"))
    pkey = rel(expect_str(tls["key"], f"{what}.key", tls, "key"))
    listen: tuple[Address, ...] = ()
    if listeners:
        listen = tuple(_addresses(tls["listen"], f"{what}.listen", tls, "listen", 853))
        if not listen:
            raise error_at(f"{what}.listen is empty", None, tls, "listen")
    try:
        server_context(cert, pkey)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise error_at(f"{what}: cannot load certificate {cert} with key {pkey}: {exc}", None,
                       tls, "cert") from None
    return TlsConfig(cert, pkey, listen)


def _networks(value: Any, what: str, parent: YDict, key: str
              ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    items = expect_list(value, what, parent, key)
    out = []
    for i, item in enumerate(items):
        text = expect_str(item, f"an entry of {what}", items, i)
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise error_at(f"{what}: {text!r}: {exc}", item, items, i) from None
    return tuple(out)


def _opt_str(parent: YDict, key: str, what: str) -> str:
    if key not in parent:
        return ""
    return expect_str(parent[key], what, parent, key).strip()


def _bool(value: Any, what: str, parent: YDict, key: str) -> bool:
    if not isinstance(value, bool):
        raise error_at(f"{what} must be true or false, got {value!r}", None, parent, key)
    return value


def _feeds(doc: YDict, rel: Callable[[str], Path], gateway_id: str, gateway_token: str
           ) -> tuple[FeedConfig, ...]:
    """The `feeds:` list; every mistake is reported at its file:line."""
    items = expect_list(doc.get("feeds", []), "feeds", doc, "feeds")
    out: list[FeedConfig] = []
    for i, raw in enumerate(items):
        item = expect_mapping(raw, "a feeds item", items, i)
        check_keys(item, FEED_KEYS, "a feeds item")
        name = expect_str(item.get("name"), "feeds[].name", item, "name")
        if not _FEED_NAME.fullmatch(name):
            raise error_at(f"feed name {name!r}: use lowercase letters, digits, '-' and '_'",
                           None, item, "name")
        if any(f.name == name for f in out):
            raise error_at(f"feed name {name!r} is used twice", None, item, "name")
        what = f"feed {name!r}"
        url = expect_str(item.get("url"), f"{what}: url", item, "url")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise error_at(f"{what}: url must be an http(s) URL, got {url!r}", None, item, "url")
        ftype = expect_str(item.get("type", "safegate"), f"{what}: type", item, "type")
        if ftype not in FEED_TYPES:
            raise error_at(f"{what}: type must be one of {', '.join(FEED_TYPES)}, got {ftype!r}",
                           None, item, "type")
        keys: list[Path] = []
        if "public_key" in item:
            if ftype != "safegate":
                raise error_at(f"{what}: public_key is only for type safegate (plain lists are "
                               "not signed)", None, item, "public_key")
            key_items = expect_list(item["public_key"], f"{what}: public_key", item, "public_key")
            for k, p in enumerate(key_items):
                path = rel(expect_str(p, f"{what}: public_key", key_items, k))
                if not path.is_file():
                    raise error_at(f"{what}: public key file {path} not found", None,
                                   key_items, k)
                keys.append(path)
        if ftype == "safegate" and not keys:
            raise error_at(f"{what}: a safegate feed needs public_key (its documents are "
                           "signed)", item, items, i)
        category: str | None = None
        if "category" in item:
            category = expect_str(item["category"], f"{what}: category", item, "category")
            if ftype == "safegate":
                raise error_at(f"{what}: category is only for plain list feeds (a safegate feed "
                               "names categories per entry)", None, item, "category")
        elif ftype != "safegate":
            raise error_at(f"{what}: a {ftype} feed needs category (where its names go)", item,
                           items, i)
        mandatory = _bool(item.get("mandatory", False), f"{what}: mandatory", item, "mandatory")
        if mandatory and ftype == "safegate":
            raise error_at(f"{what}: mandatory is set per entry by a safegate feed", None, item,
                           "mandatory")
        acks = _bool(item.get("acks", ftype == "safegate"), f"{what}: acks", item, "acks")
        if acks and ftype != "safegate":
            raise error_at(f"{what}: acks are only sent for safegate feeds", None, item, "acks")
        if acks and not (gateway_id and gateway_token):
            raise error_at(f"{what}: acks need gateway.id and gateway.token (or set acks: "
                           "false)", item, items, i)
        interval = _float(item.get("interval", 60), f"{what}: interval", item, "interval")
        long_poll = item.get("long_poll", 30)
        if isinstance(long_poll, bool) or not isinstance(long_poll, int | float) \
                or not 0 <= long_poll <= 60:
            raise error_at(f"{what}: long_poll must be 0 (off) to 60 seconds, got {long_poll!r}",
                           None, item, "long_poll")
        max_age = FeedConfig.max_age
        if "max_age" in item:
            if ftype != "safegate":
                raise error_at(f"{what}: max_age is only for type safegate (a plain list carries "
                               "no signed time)", None, item, "max_age")
            max_age = _float(item["max_age"], f"{what}: max_age", item, "max_age")
        out.append(FeedConfig(name, url, ftype, tuple(keys), interval, category, mandatory,
                              acks, float(long_poll), max_age))
    return tuple(out)


def _feed_guard(doc: YDict, feeds: tuple[FeedConfig, ...],
                upstreams: tuple[UpstreamSpec, ...]) -> FeedGuardConfig:
    """`feed_guard:`, plus the names a feed must never cut us off from (publishers, upstreams)."""
    guard = expect_mapping(doc.get("feed_guard"), "feed_guard", doc, "feed_guard")
    check_keys(guard, GUARD_KEYS, "feed_guard")
    names: list[str] = []
    items = expect_list(guard.get("never_block", []), "feed_guard.never_block", guard,
                        "never_block")
    for i, item in enumerate(items):
        text = expect_str(item, "a feed_guard.never_block entry", items, i)
        try:
            names.append(normalize_name(text).decode("ascii"))
        except ValueError as exc:
            raise error_at(f"feed_guard.never_block: {text!r}: {exc}", item, items, i) from None
    hosts = [urlsplit(f.url).hostname or "" for f in feeds] + [u.host for u in upstreams]
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            continue
        except ValueError:
            pass
        try:
            names.append(normalize_name(host).decode("ascii"))
        except ValueError:
            continue
    change = expect_mapping(guard.get("max_change"), "feed_guard.max_change", guard, "max_change")
    check_keys(change, MAX_CHANGE_KEYS, "feed_guard.max_change")
    ratio = change.get("ratio", 0.10)
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
        raise error_at(f"feed_guard.max_change.ratio must be above 0 and at most 1, got "
                       f"{ratio!r}", None, change, "ratio")
    entries = _int(change.get("entries", 1000), "feed_guard.max_change.entries", change,
                   "entries", 0)
    return FeedGuardConfig(tuple(dict.fromkeys(names)), float(ratio), entries)


def _address(value: Any, what: str, parent: YDict, key: str, default_port: int) -> Address:
    text = expect_str(value, what, parent, key)
    try:
        return parse_address(text, default_port)
    except ValueError as exc:
        raise error_at(f"{what}: {text!r}: {exc}", value, parent, key) from None


def _addresses(value: Any, what: str, parent: YDict, key: str, default_port: int) -> list[Address]:
    items = expect_list(value, what, parent, key)
    out = []
    for i, item in enumerate(items):
        text = expect_str(item, what, items, i)
        try:
            out.append(parse_address(text, default_port))
        except ValueError as exc:
            raise error_at(f"{what}: {text!r}: {exc}", item, items, i) from None
    return out


def _upstreams(value: Any, parent: YDict) -> tuple[UpstreamSpec, ...]:
    items = expect_list(value, "dns.upstreams", parent, "upstreams")
    out = []
    for i, item in enumerate(items):
        text = expect_str(item, "dns.upstreams", items, i)
        try:
            out.append(parse_upstream(text))
        except ValueError as exc:
            raise error_at(f"dns.upstreams: {text!r}: {exc}", item, items, i) from None
    return tuple(out)


def _upstream_ca(dns: YDict, rel: Callable[[str], Path]) -> str | None:
    """`dns.upstream_ca`: a PEM bundle that replaces the system store for tls:// upstreams."""
    if "upstream_ca" not in dns:
        return None
    path = rel(expect_str(dns["upstream_ca"], "dns.upstream_ca", dns, "upstream_ca"))
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ValueError) as exc:   # ssl.SSLError is an OSError
        raise error_at(f"dns.upstream_ca: {path}: not a readable PEM CA bundle ({exc})", None,
                       dns, "upstream_ca") from None
    return str(path)


def _int(value: Any, what: str, parent: YDict, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise error_at(f"{what} must be a whole number >= {minimum}, got {value!r}", None,
                       parent, key)
    return value


def _float(value: Any, what: str, parent: YDict, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise error_at(f"{what} must be a positive number of seconds, got {value!r}", None,
                       parent, key)
    return float(value)


__all__ = ["Address", "ConfigError", "FeedConfig", "FeedGuardConfig", "GatewayConfig",
           "ProxyConfig", "ReportsConfig", "TlsConfig",
           "format_address", "load_config", "parse_address"]
