"""`safegate export rpz`: the mandatory list as an RPZ zone, for an ISP's own resolvers.

What a gateway must enforce whatever a profile says: the mandatory `block` entries its feeds
delivered (read from the ledger, minus removed and guard-refused ones) plus the mandatory
sources of blocklists/lists.yaml (csam always is). Zone text comes from gateway.feedformat.rpz.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.errors import ConfigError
from gateway.feedformat.document import FeedEntry
from gateway.feedformat.rpz import to_rpz
from gateway.feeds.ledger import DNS_TYPES, Ledger
from gateway.lists import SCOPE_BOTH, SCOPE_SELF, SCOPE_SUBS, Action, ParsedRule
from gateway.lists.catalog import LIST_BYTES_KEY, Catalog, load_catalog
from gateway.lists.parsers import parse
from gateway.util.readfile import read_capped
from gateway.util.sqlite import open_db

LEDGER_FILE = "ledger.sqlite3"


@dataclass(frozen=True)
class Export:
    """The zone text and what went into it (for the message on stderr)."""

    zone: str
    from_ledger: int
    from_lists: int
    warnings: tuple[str, ...] = ()


def open_readonly(path: Path) -> sqlite3.Connection:
    """Read-only so an export (or report) can never change the ledger under the gateway."""
    if not path.is_file():
        raise ConfigError("database not found", str(path))
    return open_db(path, readonly=True, timeout=5.0, named_rows=False)


def open_ledger(path: Path) -> Ledger:
    """The gateway's ledger, read-only (an export or report never changes it)."""
    if not path.is_file():
        raise ConfigError("database not found", str(path))
    return Ledger(path, readonly=True)


def ledger_entries(ledger: Ledger) -> list[FeedEntry]:
    """Mandatory DNS entries the gateway holds: not removed and not refused by the guard."""
    return [FeedEntry(e.entry_id, e.type, e.value, e.categories, "block", True)
            for e in ledger.mandatory_in_force() if e.type in DNS_TYPES]


def _merged_rules(rules: Iterable[ParsedRule]) -> Iterator[tuple[str, int, int]]:
    """(name, scope bits, first line) per name: RPZ lists give `name` and `*.name` apart."""
    scopes: dict[bytes, list[int]] = {}
    for r in rules:
        if r.action == Action.PASSTHRU:
            continue
        seen = scopes.setdefault(r.key, [0, r.line])
        seen[0] |= r.scope
    for key, (scope, line) in scopes.items():
        yield key.decode("ascii"), scope, line


def catalog_entries(catalog: Catalog) -> tuple[list[FeedEntry], list[str]]:
    """Domain rules of the mandatory sources as entries with id FILE:LINE, plus warnings.

    A rule for subdomains only (`*.name` without `name`) has no feed-entry form; it is exported
    as `domain` (the name too): for a mandatory list, blocking a bit more is the safe side.
    """
    out: list[FeedEntry] = []
    warnings: list[str] = []
    base = catalog.path.parent
    for source in catalog.sources():
        if not source.mandatory:
            continue
        try:
            label = str(source.path.relative_to(base))
        except ValueError:
            label = str(source.path)
        text = read_capped(source.path, catalog.list_bytes, LIST_BYTES_KEY).decode(
            "utf-8", "replace")
        rules = (r for r in parse(source.format, text.splitlines())
                 if isinstance(r, ParsedRule))
        for name, scope, line in _merged_rules(rules):
            if source.match == "exact" and scope == SCOPE_BOTH:
                scope = SCOPE_SELF
            if scope == SCOPE_SUBS:
                warnings.append(f"{label}:{line}: *.{name} (subdomains only) exported as "
                                f"{name} and its subdomains")
            etype = "domain-exact" if scope == SCOPE_SELF else "domain"
            out.append(FeedEntry(f"{label}:{line}", etype, name, (source.category,), "block", True))
    return out, warnings


def merge(entries: Iterable[FeedEntry]) -> list[FeedEntry]:
    """One entry per name (first id wins); `domain` wins over `domain-exact` (covers more)."""
    by_value: dict[str, FeedEntry] = {}
    for e in entries:
        have = by_value.get(e.value)
        if have is None:
            by_value[e.value] = e
        elif have.type == "domain-exact" and e.type == "domain":
            by_value[e.value] = replace(have, type="domain")
    return list(by_value.values())


def build_export(ledger: Path | None, lists_yaml: Path | None, serial: int,
                 origin: str = "rpz.safegate.invalid", state_dir: Path | None = None) -> Export:
    """The zone for a gateway: ledger entries (if the ledger exists) + mandatory list rules
    (lists.yaml `url:` sources from their copies in `state_dir`)."""
    from_ledger: list[FeedEntry] = []
    if ledger is not None and ledger.is_file():
        led = open_ledger(ledger)
        try:
            from_ledger = ledger_entries(led)
        finally:
            led.close()
    from_lists: list[FeedEntry] = []
    warnings: list[str] = []
    if lists_yaml is not None:
        from_lists, warnings = catalog_entries(load_catalog(lists_yaml, state_dir=state_dir))
    entries = merge([*from_ledger, *from_lists])
    return Export(to_rpz(entries, origin=origin, serial=serial), len(from_ledger),
                  len(from_lists), tuple(warnings))
