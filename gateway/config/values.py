"""Typed readers for gateway.yaml values, shared by the section parsers.

Each reader turns a YAML value into the type its dataclass field has, or raises a ConfigError
at the value's file:line. `default` reads a field's default from its dataclass, so a parser
never writes a default a second time.
"""

from __future__ import annotations

import ipaddress
from dataclasses import MISSING, fields
from typing import Any
from urllib.parse import urlsplit

from gateway.config.addresses import Address, parse_address
from gateway.config.yamlconf import YDict, error_at, expect_list, expect_str

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Where gateway.yaml names a file that checks.check_files opens: key -> (file, line).
FileRefs = dict[str, tuple[str | None, int | None]]


def default(cls: type, name: str) -> Any:
    """The default of field `name` of dataclass `cls` (its default_factory called)."""
    for f in fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            break
    raise AssertionError(f"{cls.__name__}.{name} has no default")


def http_url(url: str) -> bool:
    """An http(s) URL with a host: what feeds, subscribers and report forwarding can fetch."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def read_int(value: Any, what: str, parent: YDict, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise error_at(f"{what} must be a whole number >= {minimum}, got {value!r}", None,
                       parent, key)
    return value


def read_seconds(value: Any, what: str, parent: YDict, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise error_at(f"{what} must be a positive number of seconds, got {value!r}", None,
                       parent, key)
    return float(value)


def read_bool(value: Any, what: str, parent: YDict, key: str) -> bool:
    if not isinstance(value, bool):
        raise error_at(f"{what} must be true or false, got {value!r}", None, parent, key)
    return value


def read_opt_str(parent: YDict, key: str, what: str, absent: str) -> str:
    """A stripped string, or `absent` when the key is not written."""
    if key not in parent:
        return absent
    return expect_str(parent[key], what, parent, key).strip()


def read_address(value: Any, what: str, parent: YDict, key: str, default_port: int) -> Address:
    text = expect_str(value, what, parent, key)
    try:
        return parse_address(text, default_port)
    except ValueError as exc:
        raise error_at(f"{what}: {text!r}: {exc}", value, parent, key) from None


def read_addresses(value: Any, what: str, parent: YDict, key: str, default_port: int
                   ) -> tuple[Address, ...]:
    items = expect_list(value, what, parent, key)
    out = []
    for i, item in enumerate(items):
        text = expect_str(item, what, items, i)
        try:
            out.append(parse_address(text, default_port))
        except ValueError as exc:
            raise error_at(f"{what}: {text!r}: {exc}", item, items, i) from None
    return tuple(out)


def read_networks(value: Any, what: str, parent: YDict, key: str) -> tuple[Network, ...]:
    items = expect_list(value, what, parent, key)
    out = []
    for i, item in enumerate(items):
        text = expect_str(item, f"an entry of {what}", items, i)
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise error_at(f"{what}: {text!r}: {exc}", item, items, i) from None
    return tuple(out)
