"""`web:` (block page, DoH, reports, /ca) and `metrics:` listeners."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config.addresses import Address
from gateway.config.spec import STRINGS, Key, Shape, addresses
from gateway.config.tls import WEB_TLS, TlsConfig, parse_tls
from gateway.config.values import FileRefs, default, read_address, read_addresses
from gateway.config.yamlconf import YDict, error_at, expect_list, expect_mapping


@dataclass(frozen=True)
class WebConfig:
    """`web:`; `public_address` is where clients reach the block page (default: every
    non-wildcard `listen` address, so A answers carry the IPv4 ones and AAAA the IPv6 ones)."""

    listen: tuple[Address, ...] = (("127.0.0.1", 8080),)
    public_address: tuple[str, ...] = ()
    tls: TlsConfig | None = None             # web.tls: the web listener on HTTPS


@dataclass(frozen=True)
class MetricsConfig:
    """`metrics:` the Prometheus listener(s)."""

    listen: tuple[Address, ...] = (("127.0.0.1", 9153),)


WEB = Shape("web", (
    Key("listen", STRINGS, "the block page, DoH, report form and /ca: one host:port or a list "
        "(dual stack: each is bound)", addresses(default(WebConfig, "listen"))),
    Key("public_address", STRINGS, "the addresses blocked answers carry (A: the IPv4 ones, "
        "AAAA: the IPv6 ones); default: every listen address. Needed when a listen address is "
        "0.0.0.0 or [::]"),
    Key("tls", WEB_TLS, "certificate and key: serve the web listener on HTTPS"),
), "the web listener: block page, DNS over HTTPS, reports")
METRICS = Shape("metrics", (
    Key("listen", STRINGS, "/metrics, /healthz and /readyz: one host:port or a list",
        addresses(default(MetricsConfig, "listen"))),
), "the Prometheus listener")


def parse_web(doc: YDict, rel: Callable[[str], Path], refs: FileRefs) -> WebConfig:
    web = expect_mapping(doc.get("web"), "web", doc, "web")
    WEB.check(web)
    listen = default(WebConfig, "listen")
    if "listen" in web:
        listen = read_listen(web["listen"], "web.listen", web, "listen", 80)
    public = [str(a) for a in expect_list(web.get("public_address", []), "web.public_address",
                                          web, "public_address")]
    for i, a in enumerate(public):
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise error_at(f"web.public_address: {a!r} is not an IP address", None,
                           web.get("public_address"), i) from None
    if not public:
        if any(ipaddress.ip_address(host).is_unspecified for host, _ in listen):
            raise error_at("web.listen is a wildcard address: set web.public_address to the "
                           "address clients reach the block page at", None, web, "listen")
        public = list(dict.fromkeys(host for host, _ in listen))
    tls = parse_tls(web, "tls", "web.tls", rel, refs, listeners=False)
    return WebConfig(listen, tuple(public), tls)


def parse_metrics(doc: YDict) -> MetricsConfig:
    metrics = expect_mapping(doc.get("metrics"), "metrics", doc, "metrics")
    METRICS.check(metrics)
    if "listen" not in metrics:
        return MetricsConfig()
    return MetricsConfig(read_listen(metrics["listen"], "metrics.listen", metrics, "listen",
                                     9153))


def read_listen(value: object, what: str, parent: YDict, key: str, default_port: int
                ) -> tuple[Address, ...]:
    """One address (the form written before dual stack) or a non-empty list of them."""
    if isinstance(value, str):
        return (read_address(value, what, parent, key, default_port),)
    listen = read_addresses(value, what, parent, key, default_port)
    if not listen:
        raise error_at(f"{what} is empty", None, parent, key)
    return tuple(dict.fromkeys(listen))
