"""`proxy:` the optional HTTP(S) filtering proxy (issue 5), a process of its own."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.addresses import Address
from gateway.config.spec import BOOL, STR, STRINGS, Key, Schema, Shape, addresses, integer
from gateway.config.values import FileRefs, default, read_address, read_bool, read_int, read_opt_str
from gateway.config.yamlconf import (
    YDict,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
    where,
)
from gateway.util.names import normalize_name

PROXY_SCHEMES = ("http", "https")
RESTRICT_SERVICES = ("youtube", "google")


@dataclass(frozen=True)
class ProxyConfig:
    """`proxy:`; off unless `enabled: true`."""

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


def _by_scheme(what: str, value: Schema, doc: str) -> Shape:
    return Shape(what, tuple(Key(s, value, f"{doc} ({s})") for s in PROXY_SCHEMES))


INTERCEPT_LISTEN = _by_scheme("proxy.intercept_listen", STR,
                              "listener DNS steers intercepted names to")
ORIGIN_PORTS = _by_scheme("proxy.origin_ports", integer(1, 65535),
                          "the origin port intercepted connections go to")
RESTRICT_HOSTS = Shape("proxy.restrict_hosts", tuple(
    Key(s, STRINGS, f"more {s} hosts to restrict, beyond the built-in ones")
    for s in RESTRICT_SERVICES))
PROXY = Shape("proxy", (
    Key("enabled", BOOL, "run the HTTP(S) filtering proxy (a process of its own)",
        default(ProxyConfig, "enabled")),
    Key("listen", STR, "the explicit proxy's host:port (DNS-steered interception too)",
        addresses((default(ProxyConfig, "listen"),))[0]),
    Key("ca_dir", STR, "where the generated CA is kept (served at the web listener's /ca)",
        str(default(ProxyConfig, "ca_dir"))),
    Key("intercept_listen", INTERCEPT_LISTEN, "DNS-steered listeners by scheme"),
    Key("origin_ports", ORIGIN_PORTS, "origin ports by scheme",
        dict(default(ProxyConfig, "origin_ports"))),
    Key("public_address", STR, "host clients reach the proxy at (the PAC file); default: the "
        "listen host"),
    Key("metrics_listen", STR, "the proxy's /metrics host:port",
        addresses((default(ProxyConfig, "metrics_listen"),))[0]),
    Key("max_image_bytes", integer(), "larger images are not hash-checked",
        default(ProxyConfig, "max_image_bytes")),
    Key("upstream_ca", STR, "CA bundle for origin certificates (default: certifi)"),
    Key("restrict_hosts", RESTRICT_HOSTS, "restricted-mode hosts by service"),
    Key("scan_hosts", STRINGS, "names (and subdomains) whose images are hash-checked"),
), "the optional HTTP(S) filtering proxy (docs/proxy.md)")


def parse_proxy(doc: YDict, rel: Callable[[str], Path], refs: FileRefs) -> ProxyConfig:
    """`proxy:`; a key not written keeps its ProxyConfig default (ca_dir: relative to the file)."""
    proxy = expect_mapping(doc.get("proxy"), "proxy", doc, "proxy")
    PROXY.check(proxy)
    values: dict[str, Any] = {}
    listen = default(ProxyConfig, "listen")
    if "listen" in proxy:
        listen = read_address(proxy["listen"], "proxy.listen", proxy, "listen", listen[1])
    origin = dict(default(ProxyConfig, "origin_ports"))
    ports = expect_mapping(proxy.get("origin_ports"), "proxy.origin_ports", proxy,
                           "origin_ports")
    ORIGIN_PORTS.check(ports)
    for scheme in PROXY_SCHEMES:
        if scheme in ports:
            origin[scheme] = read_int(ports[scheme], f"proxy.origin_ports.{scheme}", ports,
                                      scheme, 1)
            if origin[scheme] > 65535:
                raise error_at(f"proxy.origin_ports.{scheme} must be a port (1-65535)", None,
                               ports, scheme)
    steer = expect_mapping(proxy.get("intercept_listen"), "proxy.intercept_listen", proxy,
                           "intercept_listen")
    INTERCEPT_LISTEN.check(steer)
    values["intercept_listen"] = tuple(
        (scheme, read_address(steer[scheme], f"proxy.intercept_listen.{scheme}", steer, scheme,
                              origin[scheme]))
        for scheme in PROXY_SCHEMES if scheme in steer)
    public = read_opt_str(proxy, "public_address", "proxy.public_address",
                          default(ProxyConfig, "public_address"))
    if not public and ipaddress.ip_address(listen[0]).is_unspecified:
        raise error_at("proxy.listen is a wildcard address: set proxy.public_address to the "
                       "address clients reach the proxy at (it goes in the PAC file)", None,
                       proxy, "listen")
    if "upstream_ca" in proxy:
        values["upstream_ca"] = rel(expect_str(proxy["upstream_ca"], "proxy.upstream_ca", proxy,
                                               "upstream_ca"))
        refs["proxy.upstream_ca"] = where(None, proxy, "upstream_ca")
    values["restrict_hosts"] = _restrict_hosts(proxy)
    values["scan_hosts"] = _scan_hosts(proxy)
    if "enabled" in proxy:
        values["enabled"] = read_bool(proxy["enabled"], "proxy.enabled", proxy, "enabled")
    ca_dir = str(default(ProxyConfig, "ca_dir"))
    if "ca_dir" in proxy:
        ca_dir = expect_str(proxy["ca_dir"], "proxy.ca_dir", proxy, "ca_dir")
    if "metrics_listen" in proxy:
        values["metrics_listen"] = read_address(proxy["metrics_listen"], "proxy.metrics_listen",
                                                proxy, "metrics_listen",
                                                default(ProxyConfig, "metrics_listen")[1])
    if "max_image_bytes" in proxy:
        values["max_image_bytes"] = read_int(proxy["max_image_bytes"], "proxy.max_image_bytes",
                                             proxy, "max_image_bytes", 0)
    return ProxyConfig(listen=listen, ca_dir=rel(ca_dir), origin_ports=tuple(origin.items()),
                       public_address=public or listen[0], **values)


def _restrict_hosts(proxy: YDict) -> tuple[tuple[str, str], ...]:
    services = expect_mapping(proxy.get("restrict_hosts"), "proxy.restrict_hosts", proxy,
                              "restrict_hosts")
    RESTRICT_HOSTS.check(services)
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
    return tuple(restrict)


def _scan_hosts(proxy: YDict) -> tuple[str, ...]:
    scan = expect_list(proxy.get("scan_hosts", []), "proxy.scan_hosts", proxy, "scan_hosts")
    scan_hosts: list[str] = []
    for i, item in enumerate(scan):
        text = expect_str(item, "an entry of proxy.scan_hosts", scan, i)
        try:
            scan_hosts.append(normalize_name(text).decode("ascii"))
        except ValueError as exc:
            raise error_at(f"proxy.scan_hosts: {text!r}: {exc}", item, scan, i) from None
    return tuple(scan_hosts)
