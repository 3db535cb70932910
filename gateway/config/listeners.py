"""Two listeners of gateway.yaml on one TCP address: `check` names both, where `run` would
otherwise die with a bind traceback (say `admin:` turned on with its default port in a file
whose block page already uses 8081)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any, Protocol

from gateway.config.addresses import Address
from gateway.config.admin import AdminConfig
from gateway.config.proxy import ProxyConfig
from gateway.config.tls import TlsConfig
from gateway.config.yamlconf import YDict, error_at


class Listening(Protocol):
    """What this module reads of config.gateway.GatewayConfig (which imports it)."""

    @property
    def dns_listen(self) -> tuple[Address, ...]: ...
    @property
    def dot(self) -> TlsConfig | None: ...
    @property
    def web_listen(self) -> tuple[Address, ...]: ...
    @property
    def metrics_listen(self) -> tuple[Address, ...]: ...
    @property
    def admin(self) -> AdminConfig | None: ...
    @property
    def proxy(self) -> ProxyConfig: ...


def check_listeners(doc: YDict, config: Listening) -> None:
    """Refuse two listeners (DNS, DoT, web, metrics, admin, proxy) whose TCP addresses
    overlap; the error points at the second one's line."""
    seen: list[tuple[Address, str]] = []
    for label, parent, key, addresses in _listeners(doc, config):
        for address in addresses:
            for other, other_label in seen:
                if _overlap(address, other):
                    raise error_at(f"{label} {_show(address)} is also {other_label} "
                                   f"({_show(other)}): give each listener its own port",
                                   None, parent, key)
            seen.append((address, label))


def _listeners(doc: YDict, config: Listening
               ) -> Iterator[tuple[str, Any, str, tuple[Address, ...]]]:
    """(its key, the mapping and key that locate it in the file, addresses); of two that
    clash, the later one is reported."""
    dns = _section(doc, "dns")
    yield "dns.listen", *_at(doc, dns, "dns", "listen"), config.dns_listen
    if config.dot is not None:
        tls = _section(dns, "tls")
        yield "dns.tls.listen", *_at(dns, tls, "tls", "listen"), config.dot.listen
    yield "web.listen", *_at(doc, _section(doc, "web"), "web", "listen"), config.web_listen
    yield ("metrics.listen", *_at(doc, _section(doc, "metrics"), "metrics", "listen"),
           config.metrics_listen)
    if config.admin is not None:
        yield ("admin.listen", *_at(doc, _section(doc, "admin"), "admin", "listen"),
               config.admin.listen)
    if config.proxy.enabled:
        proxy = _section(doc, "proxy")
        yield "proxy.listen", *_at(doc, proxy, "proxy", "listen"), (config.proxy.listen,)
        yield ("proxy.metrics_listen", *_at(doc, proxy, "proxy", "metrics_listen"),
               (config.proxy.metrics_listen,))
        steer = _section(proxy, "intercept_listen")
        for scheme, address in config.proxy.intercept_listen:
            yield (f"proxy.intercept_listen.{scheme}",
                   *_at(proxy, steer, "intercept_listen", scheme), (address,))


def _at(doc: Any, section: Any, name: str, key: str) -> tuple[Any, str]:
    """Where to point: the written key, else the section's own line (a default listen)."""
    if isinstance(section, dict) and key in section:
        return section, key
    return doc, name


def _section(doc: Any, key: str) -> Any:
    """The written mapping (for its line numbers), or the parent when it is left out."""
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, dict) else doc


def _overlap(a: Address, b: Address) -> bool:
    """One bind would fail because of the other: same port, and the same host or a wildcard
    of the same family ([::] is IPv6-only here, so it never overlaps 0.0.0.0). Port 0 (the
    kernel picks one) never clashes."""
    if a[1] != b[1] or a[1] == 0:
        return False
    if a[0] == b[0]:
        return True
    try:
        x, y = ipaddress.ip_address(a[0]), ipaddress.ip_address(b[0])
    except ValueError:
        return False
    return x.version == y.version and (x.is_unspecified or y.is_unspecified or x == y)


def _show(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
