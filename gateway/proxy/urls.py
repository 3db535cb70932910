"""URL-level entries: normalisation and an index from (host, path, query) to the entries.

Matching rules (docs/proxy.md "URL matching"): the scheme does not matter; the host is
lowercased, IDNA-encoded, a leading `www.` is dropped; an entry without a port (or with 80 or
443) matches the host on any port, one with another port only on that port; an entry
whose path ends in `*` is a prefix (string prefix of the path), any other is exact. An entry
without a query matches the path whatever the query; an entry with a query matches when every
one of its `key=value` pairs is in the request's query (order and extra pairs do not matter).
The fragment never reaches a server and is ignored. Hosts match exactly: an entry for
`forum.test` says nothing about `img.forum.test`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from gateway.feedformat.document import normalize_value
from gateway.util.names import normalize_name

_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")


@dataclass(frozen=True)
class LegalOrder:
    """Why a mandatory entry exists: the authority's decision (shown on the 451 page)."""

    authority: str
    decision: str
    date: str


@dataclass(frozen=True)
class UrlEntry:
    """One URL-level entry; `origin` says where it came from (feed name or file:line)."""

    id: str
    url: str                                  # as written in the feed or list, normalised
    categories: tuple[str, ...]
    mandatory: bool = False
    legal: LegalOrder | None = None
    origin: str = ""


@dataclass(frozen=True)
class UrlKey:
    """The parts of a URL that matching compares."""

    host: str
    path: str
    query: frozenset[tuple[str, str]]
    prefix: bool = False
    port: int | None = None          # None: any port (the entry named none, or a default one)


def _path(path: str) -> str:
    """Percent-escapes with uppercase hex so `%2f` and `%2F` compare equal."""
    return _ESCAPE.sub(lambda m: m.group(0).upper(), path or "/")


def host_key(host: str) -> str:
    """Lowercase IDNA host without `www.`; ValueError if it is not a host name."""
    name = normalize_name(host).decode("ascii")
    return name[4:] if name.startswith("www.") else name


def _port(port: int | None) -> int | None:
    return None if port in (None, 80, 443) else port


def parse_entry_url(text: str) -> UrlKey:
    """An entry's URL as a key; ValueError (with the reason) if it is not an http(s) URL."""
    parts = urlsplit(normalize_value("url", text))
    path = parts.path
    prefix = path.endswith("*")
    if prefix:
        path = path[:-1]
    if "*" in path:
        raise ValueError(f"{text!r}: '*' is only allowed at the end of the path (a prefix)")
    assert parts.hostname is not None  # normalize_value checked it
    return UrlKey(host_key(parts.hostname), _path(path),
                  frozenset(parse_qsl(parts.query, keep_blank_values=True)), prefix,
                  _port(parts.port))


def request_key(host: str, port: int | None, path_and_query: str) -> UrlKey:
    """A request's key (host from the Host header or SNI, path with query from the request)."""
    path, _, query = path_and_query.partition("?")
    path = path.partition("#")[0]
    return UrlKey(host_key(host), _path(path),
                  frozenset(parse_qsl(query.partition("#")[0], keep_blank_values=True)),
                  port=_port(port))


@dataclass
class _HostRules:
    exact: dict[str, list[tuple[UrlKey, UrlEntry]]] = field(default_factory=dict)
    prefix: list[tuple[UrlKey, UrlEntry]] = field(default_factory=list)


class UrlIndex:
    """Entries by host; a lookup is one dict probe, then the few entries of that host."""

    def __init__(self, entries: Iterable[tuple[UrlKey, UrlEntry]]) -> None:
        self._hosts: dict[str, _HostRules] = {}
        self.size = 0
        for key, entry in entries:
            rules = self._hosts.setdefault(key.host, _HostRules())
            if key.prefix:
                rules.prefix.append((key, entry))
            else:
                rules.exact.setdefault(key.path, []).append((key, entry))
            self.size += 1
        for rules in self._hosts.values():
            rules.prefix.sort(key=lambda item: -len(item[0].path))  # longest prefix first

    def hosts(self) -> set[str]:
        """Host keys (no `www.`, no port) with entries."""
        return set(self._hosts)

    def has_host(self, host: str) -> bool:
        return host in self._hosts

    def match(self, key: UrlKey) -> list[UrlEntry]:
        """Every entry matching `key`: exact ones first, then prefixes, longest first."""
        rules = self._hosts.get(key.host)
        if rules is None:
            return []
        found = [e for k, e in rules.exact.get(key.path, ()) if _fits(k, key)]
        found.extend(e for k, e in rules.prefix if key.path.startswith(k.path) and _fits(k, key))
        return found


def _fits(entry: UrlKey, request: UrlKey) -> bool:
    """Port and query conditions of an entry whose host and path matched."""
    return (entry.port is None or entry.port == request.port) and entry.query <= request.query
