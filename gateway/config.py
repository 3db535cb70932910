"""gateway.yaml: listeners, upstreams, where policies and lists live. Shape is a contract."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.dns.cache import CacheConfig
from gateway.dns.upstream import ForwarderConfig
from gateway.errors import ConfigError
from gateway.yamlconf import (
    YDict,
    check_keys,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
    load_yaml,
)

Address = tuple[str, int]

TOP_KEYS = ("dns", "web", "metrics", "policies", "blocklists", "state_dir", "reload")
DNS_KEYS = ("listen", "upstreams", "block_ttl", "tcp_idle_timeout", "upstream_timeout",
            "query_timeout", "cache")
CACHE_KEYS = ("size", "min_ttl", "max_ttl", "negative_max_ttl", "stale_ttl")
WEB_KEYS = ("listen", "public_address")
METRICS_KEYS = ("listen",)
RELOAD_KEYS = ("watch_interval",)


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    dns_listen: tuple[Address, ...]
    upstreams: tuple[Address, ...]
    web_listen: Address
    blockpage_addresses: tuple[str, ...]
    metrics_listen: Address
    policies: tuple[Path, ...]
    blocklists: Path
    state_dir: Path
    block_ttl: int = 30
    tcp_idle_timeout: float = 10.0
    watch_interval: float = 2.0
    cache: CacheConfig = field(default_factory=CacheConfig)
    forwarder: ForwarderConfig = field(default_factory=ForwarderConfig)


def parse_address(text: str, default_port: int) -> Address:
    """"127.0.0.1:5353", "[::1]:5353", "::1", "0.0.0.0" -> (host, port); ValueError if bad."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("missing ']' after an IPv6 address")
        port = default_port
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected ':PORT' after ']'")
            port = _port(rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text)
    else:
        host, port = text, default_port
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{host!r} is not an IP address") from None
        host = "127.0.0.1"
    return host, port


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text!r}")
    return int(text)


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
    doc = expect_mapping(load_yaml(path), "gateway.yaml")
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
        upstreams = tuple(_addresses(dns["upstreams"], "dns.upstreams", dns, "upstreams", 53))
        if not upstreams:
            raise error_at("dns.upstreams is empty", None, dns, "upstreams")
    else:
        upstreams = tuple(a for a in system_nameservers() if a not in listen)
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
    blocklists = rel(expect_str(doc.get("blocklists", "blocklists/lists.yaml"), "blocklists",
                                doc, "blocklists"))
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
    )
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
        cache=cache_cfg,
        forwarder=fwd,
    )


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


__all__ = ["Address", "ConfigError", "GatewayConfig", "format_address", "load_config",
           "parse_address"]
