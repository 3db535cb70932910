"""`dns:` listeners, upstreams, the answer cache, forwarding timeouts, DoT, front ends."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.addresses import Address, parse_address
from gateway.config.localdns import (
    FORWARD_ZONE,
    ForwardZone,
    LocalRecord,
    parse_forward_zones,
    parse_local_records,
)
from gateway.config.spec import (
    BOOL,
    SECONDS,
    STR,
    STRINGS,
    Key,
    Shape,
    addresses,
    integer,
    list_of,
)
from gateway.config.tls import DOT_TLS, TlsConfig, parse_tls
from gateway.config.upstreams import UpstreamSpec, parse_upstream
from gateway.config.values import (
    FileRefs,
    Network,
    default,
    read_addresses,
    read_bool,
    read_int,
    read_networks,
    read_seconds,
)
from gateway.config.yamlconf import (
    YDict,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
    where,
)

MAX_WORKERS = 64


@dataclass(frozen=True)
class CacheConfig:
    """`dns.cache`: the answer cache (gateway/dns/cache.py)."""

    size: int = 20_000  # ~0.25 KB an entry (dns/cache.py Entry), ~5 MB full
    min_ttl: int = 0
    max_ttl: int = 86_400
    negative_max_ttl: int = 3_600
    stale_ttl: int = 86_400  # how long past expiry an answer may still be served stale


@dataclass(frozen=True)
class ForwarderConfig:
    """Forwarding to upstreams (gateway/dns/upstream.py)."""

    attempt_timeout: float = 1.5     # dns.upstream_timeout: one try at one upstream
    query_timeout: float = 4.0       # dns.query_timeout: the whole resolution, all upstreams
    fail_threshold: int = 3          # consecutive failures before an upstream is benched
    bench_seconds: float = 30.0      # how long a benched upstream is skipped
    qname_0x20: bool = False         # dns.upstream_0x20: random-case query names (UDP)
    tls_ca: str | None = None        # dns.upstream_ca: CA bundle for tls:// (else the system's)


@dataclass(frozen=True)
class DnsConfig:
    """The `dns:` section; GatewayConfig carries each field under its historical flat name."""

    listen: tuple[Address, ...] = (("127.0.0.1", 5353),)
    upstreams: tuple[UpstreamSpec, ...] = ()   # none written: resolv.conf's nameservers
    block_ttl: int = 30
    tcp_idle_timeout: float = 10.0
    cache: CacheConfig = field(default_factory=CacheConfig)
    forwarder: ForwarderConfig = field(default_factory=ForwarderConfig)
    dot: TlsConfig | None = None             # dns.tls: DNS over TLS listeners
    # Front ends (reverse proxies) whose X-Forwarded-For (and later PROXY v2 / ECS) we believe.
    trusted_frontends: tuple[Network, ...] = ()
    # PROXY protocol v2 headers (UDP and TCP) are read from trusted_frontends only.
    proxy_protocol: bool = False
    # Pass a trusted front end's EDNS Client Subnet upstream (default: stripped, for privacy).
    forward_ecs: bool = False
    workers: int = 1                         # resolver processes sharing the DNS sockets
    local_records: tuple[LocalRecord, ...] = ()  # answered by SafeGate (config/localdns.py)
    forward_zones: tuple[ForwardZone, ...] = ()  # zone -> its own upstreams


CACHE = Shape("dns.cache", (
    Key("size", integer(), "entries (least recently used are evicted)",
        default(CacheConfig, "size")),
    Key("min_ttl", integer(), "upstream TTLs are raised to at least this",
        default(CacheConfig, "min_ttl")),
    Key("max_ttl", integer(), "upstream TTLs are cut to at most this",
        default(CacheConfig, "max_ttl")),
    Key("negative_max_ttl", integer(), "cap for NXDOMAIN/NODATA caching (RFC 2308)",
        default(CacheConfig, "negative_max_ttl")),
    Key("stale_ttl", integer(), "seconds past expiry an answer may be served stale when every "
        "upstream fails (RFC 8767)", default(CacheConfig, "stale_ttl")),
), "the answer cache")
DNS = Shape("dns", (
    Key("listen", STRINGS, "host:port addresses (IPv6 in brackets); UDP and TCP on each",
        addresses(default(DnsConfig, "listen"))),
    Key("upstreams", STRINGS, "address[:port], tls://address#name (DNS over TLS), "
        "https://host/dns-query (DNS over HTTPS); default: "
        "the nameservers of /etc/resolv.conf"),
    Key("block_ttl", integer(), "TTL of blocked answers (and of their negative-cache SOA)",
        default(DnsConfig, "block_ttl")),
    Key("tcp_idle_timeout", SECONDS, "seconds an idle client TCP connection is kept "
        "(RFC 7766); limits.tcp.idle_timeout is the newer spelling",
        default(DnsConfig, "tcp_idle_timeout")),
    Key("upstream_timeout", SECONDS, "seconds for one try at one upstream",
        default(ForwarderConfig, "attempt_timeout")),
    Key("query_timeout", SECONDS, "seconds for the whole resolution, every upstream included",
        default(ForwarderConfig, "query_timeout")),
    Key("cache", CACHE, "the answer cache"),
    Key("tls", DOT_TLS, "DNS over TLS listeners with their certificate and key"),
    Key("trusted_frontends", STRINGS, "networks of front ends (dnsdist, reverse proxies) whose "
        "PROXY v2 header, ECS or X-Forwarded-For is believed"),
    Key("proxy_protocol", BOOL, "read PROXY v2 headers (UDP and TCP) from trusted_frontends",
        default(DnsConfig, "proxy_protocol")),
    Key("forward_ecs", BOOL, "pass a trusted front end's EDNS Client Subnet upstream (cut to "
        "/24 or /56); default: stripped, for privacy", default(DnsConfig, "forward_ecs")),
    Key("workers", integer(1, MAX_WORKERS), "resolver processes sharing the DNS sockets "
        "(SO_REUSEPORT); the first also runs reloads, feeds, web and DoT",
        default(DnsConfig, "workers")),
    Key("upstream_0x20", BOOL, "random-case query names to plain-DNS upstreams (anti-spoofing)",
        default(ForwarderConfig, "qname_0x20")),
    Key("upstream_ca", STR, "PEM CA bundle that verifies tls:// upstreams instead of the "
        "system's"),
    Key("local_records", STRINGS, "names answered here, one hosts-file line each: "
        "\"ADDRESS NAME [NAME...]\", \"cname ALIAS TARGET\" or \"ptr ADDRESS NAME\""),
    Key("forward_zones", list_of(FORWARD_ZONE), "zones whose names go to their own servers "
        "instead of dns.upstreams (the longest zone wins)"),
), "listeners, upstreams, cache")


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


def parse_dns(doc: YDict, rel: Callable[[str], Path], refs: FileRefs) -> DnsConfig:
    """`dns:`; a key not written keeps its DnsConfig default."""
    dns = expect_mapping(doc.get("dns"), "dns", doc, "dns")
    DNS.check(dns)
    values: dict[str, Any] = {}
    if "listen" in dns:
        values["listen"] = read_addresses(dns["listen"], "dns.listen", dns, "listen", 53)
    listen = values.get("listen", default(DnsConfig, "listen"))
    if "upstreams" in dns:
        values["upstreams"] = _upstreams(dns["upstreams"], dns)
        if not values["upstreams"]:
            raise error_at("dns.upstreams is empty", None, dns, "upstreams")
    else:
        values["upstreams"] = tuple(UpstreamSpec(*a) for a in system_nameservers()
                                    if a not in listen)
        if not values["upstreams"]:
            raise error_at("no dns.upstreams given and none found in /etc/resolv.conf",
                           dns, doc, "dns")
    values["cache"] = _cache(dns)
    values["forwarder"] = _forwarder(dns, rel, refs)
    values["dot"] = parse_tls(dns, "tls", "dns.tls", rel, refs, listeners=True)
    if "trusted_frontends" in dns:
        values["trusted_frontends"] = read_networks(dns["trusted_frontends"],
                                                    "dns.trusted_frontends", dns,
                                                    "trusted_frontends")
    for key in ("proxy_protocol", "forward_ecs"):
        if key in dns:
            values[key] = read_bool(dns[key], f"dns.{key}", dns, key)
    for key, minimum in (("workers", 1), ("block_ttl", 0)):
        if key in dns:
            values[key] = read_int(dns[key], f"dns.{key}", dns, key, minimum)
    if "tcp_idle_timeout" in dns:
        values["tcp_idle_timeout"] = read_seconds(dns["tcp_idle_timeout"], "dns.tcp_idle_timeout",
                                                  dns, "tcp_idle_timeout")
    values["local_records"] = parse_local_records(dns)
    values["forward_zones"] = parse_forward_zones(dns)
    out = DnsConfig(**values)
    if out.proxy_protocol and not out.trusted_frontends:
        raise error_at("dns.proxy_protocol is on but dns.trusted_frontends is empty: list the "
                       "front ends (dnsdist) allowed to send PROXY v2 headers", None, dns,
                       "proxy_protocol")
    if out.workers > MAX_WORKERS:
        raise error_at(f"dns.workers must be at most {MAX_WORKERS}, got {out.workers}", None, dns,
                       "workers")
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


def _cache(dns: YDict) -> CacheConfig:
    cache = expect_mapping(dns.get("cache"), "dns.cache", dns, "cache")
    CACHE.check(cache)
    out = CacheConfig(**{k: read_int(cache[k], f"dns.cache.{k}", cache, k, 0)
                         for k in CACHE.names() if k in cache})
    if out.min_ttl > out.max_ttl:
        raise error_at("dns.cache.min_ttl is larger than max_ttl", None, cache, "min_ttl")
    return out


def _forwarder(dns: YDict, rel: Callable[[str], Path], refs: FileRefs) -> ForwarderConfig:
    """dns.upstream_timeout, query_timeout, upstream_0x20 and upstream_ca."""
    values: dict[str, Any] = {}
    for key, name in (("upstream_timeout", "attempt_timeout"), ("query_timeout", "query_timeout")):
        if key in dns:
            values[name] = read_seconds(dns[key], f"dns.{key}", dns, key)
    if "upstream_0x20" in dns:
        values["qname_0x20"] = read_bool(dns["upstream_0x20"], "dns.upstream_0x20", dns,
                                         "upstream_0x20")
    if "upstream_ca" in dns:
        # A PEM bundle that replaces the system store for tls:// upstreams (check_files loads it).
        path = rel(expect_str(dns["upstream_ca"], "dns.upstream_ca", dns, "upstream_ca"))
        refs["dns.upstream_ca"] = where(None, dns, "upstream_ca")
        values["tls_ca"] = str(path)
    return ForwarderConfig(**values)
