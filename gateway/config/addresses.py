"""Listener and upstream addresses as written in YAML: "127.0.0.1:5353", "[::1]:53", "::1".

Imports nothing else of the gateway, so the publisher (which may use only this, yamlconf and
limits of the config package) parses its listeners the same way.
"""

from __future__ import annotations

import ipaddress

Address = tuple[str, int]


def parse_address(text: str, default_port: int) -> Address:
    """"127.0.0.1:5353", "[::1]:5353", "::1", "localhost" -> (ip, port); ValueError if bad."""
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


def format_address(addr: Address) -> str:
    """(host, port) -> "host:port", IPv6 in brackets."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text!r}")
    return int(text)
