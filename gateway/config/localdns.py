"""`dns.local_records` and `dns.forward_zones`: the school LAN's own names (issue 14).

local_records, one string per record, hosts-file style:

    "192.168.1.10 moodle.truong.local lms.truong.local"   A (or AAAA for an IPv6 address) for
                                                          each name; the address's PTR names
                                                          the first name
    "cname www.truong.local moodle.truong.local"          CNAME: alias, then target
    "ptr 192.168.1.2 dc1.truong.local"                    PTR for an address (or for an
                                                          in-addr.arpa / ip6.arpa name); when
                                                          an address has any `ptr` line, only
                                                          those lines answer for it

forward_zones: [{zone: truong.local, servers: ["192.168.1.2", ...]}]: names at or under the
zone go to those servers (dns.upstreams syntax) instead of dns.upstreams; the longest zone
wins; reverse zones (1.168.192.in-addr.arpa) work the same way.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from gateway.config.spec import STR, STRINGS, Key, Shape
from gateway.config.upstreams import UpstreamSpec, parse_upstream
from gateway.config.yamlconf import (
    YDict,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
    where,
)

FORWARD_ZONE = Shape("dns.forward_zones entry", (
    Key("zone", STR, "a zone (reverse zones too): names at or under it go to its servers",
        required=True),
    Key("servers", STRINGS, "the zone's servers, written like dns.upstreams", required=True),
), nullable=False)
A, AAAA, CNAME, PTR = "A", "AAAA", "CNAME", "PTR"


@dataclass(frozen=True)
class LocalRecord:
    """One record SafeGate answers itself (gateway/dns/local.py)."""

    name: str    # lowercase, no trailing dot
    rtype: str   # A, AAAA, CNAME or PTR
    value: str   # the address (A/AAAA) or the target name (CNAME/PTR), normalized
    line: int = field(default=0, compare=False)  # its gateway.yaml line (for errors)


@dataclass(frozen=True)
class ForwardZone:
    """`dns.forward_zones` entry: a zone and the servers its names are forwarded to."""

    zone: str                          # lowercase, no trailing dot
    servers: tuple[UpstreamSpec, ...]


def normal_name(text: str) -> str:
    """A host name lowercased without the trailing dot; ValueError when it is not one."""
    name = text.strip().rstrip(".").lower()
    labels = name.split(".")
    if not name or len(name) > 253 or not all(
            0 < len(x) <= 63 and x.isascii() and all(c.isalnum() or c in "-_" for c in x)
            for x in labels):
        raise ValueError(f"{text!r} is not a host name")
    return name


def reverse_name(text: str) -> str:
    """The PTR owner for an address, or a name already under in-addr.arpa / ip6.arpa."""
    try:
        return ipaddress.ip_address(text).reverse_pointer
    except ValueError:
        name = normal_name(text)
        if not name.endswith((".in-addr.arpa", ".ip6.arpa")):
            raise ValueError(f"{text!r} is neither an address nor a reverse (.arpa) name"
                             ) from None
        return name


def parse_local_records(dns: YDict) -> tuple[LocalRecord, ...]:
    """`dns.local_records`; each error names the entry's line in gateway.yaml."""
    if "local_records" not in dns:
        return ()
    items = expect_list(dns["local_records"], "dns.local_records", dns, "local_records")
    out: list[LocalRecord] = []
    auto_ptr: dict[str, LocalRecord] = {}   # reverse name -> PTR from the first address line
    for i, item in enumerate(items):
        text = expect_str(item, "a dns.local_records entry", items, i)
        line = where(item, items, i)[1] or 0
        try:
            records, ptr = _record_line(text, line)
        except ValueError as exc:
            raise error_at(f"dns.local_records: {text!r}: {exc}", item, items, i) from None
        out.extend(records)
        if ptr is not None:
            auto_ptr.setdefault(ptr.name, ptr)
    explicit = {r.name for r in out if r.rtype == PTR}
    out.extend(r for name, r in auto_ptr.items() if name not in explicit)
    _check_cnames(out, items)
    return tuple(out)


def _record_line(text: str, line: int) -> tuple[list[LocalRecord], LocalRecord | None]:
    """The records one entry writes, and the PTR an address line implies."""
    words = text.split()
    if not words:
        raise ValueError("empty entry")
    kind = words[0].lower()
    if kind in ("cname", "ptr"):
        if len(words) != 3:
            raise ValueError(f"expected '{kind} NAME TARGET'")
        target = normal_name(words[2])
        if kind == "cname":
            alias = normal_name(words[1])
            if alias == target:
                raise ValueError("a CNAME cannot point at itself")
            return [LocalRecord(alias, CNAME, target, line)], None
        return [LocalRecord(reverse_name(words[1]), PTR, target, line)], None
    try:
        address = ipaddress.ip_address(words[0])
    except ValueError:
        raise ValueError("expected 'ADDRESS NAME...', 'cname ALIAS TARGET' or "
                         "'ptr ADDRESS NAME'") from None
    if len(words) < 2:
        raise ValueError("an address needs at least one name")
    names = [normal_name(w) for w in words[1:]]
    rtype = A if address.version == 4 else AAAA
    records = [LocalRecord(n, rtype, str(address), line) for n in names]
    return records, LocalRecord(address.reverse_pointer, PTR, names[0], line)


def _check_cnames(records: list[LocalRecord], items: Any) -> None:
    """RFC 1034 3.6.2: a CNAME owner has no other data (and only one CNAME)."""
    owners: dict[str, LocalRecord] = {}
    for r in records:
        if r.rtype == CNAME:
            if r.name in owners:
                raise _at_line(f"dns.local_records: {r.name} has a CNAME and other records",
                               items, r.line)
            owners[r.name] = r
    for r in records:
        if r.rtype != CNAME and r.name in owners:
            raise _at_line(f"dns.local_records: {r.name} has a CNAME and other records",
                           items, owners[r.name].line)


def _at_line(message: str, items: Any, line: int) -> Exception:
    for i, item in enumerate(items):
        if where(item, items, i)[1] == line:
            return error_at(message, item, items, i)
    return error_at(message, items)


def parse_forward_zones(dns: YDict) -> tuple[ForwardZone, ...]:
    """`dns.forward_zones`: a list of {zone, servers}."""
    if "forward_zones" not in dns:
        return ()
    items = expect_list(dns["forward_zones"], "dns.forward_zones", dns, "forward_zones")
    out: list[ForwardZone] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        entry = expect_mapping(item, "a dns.forward_zones entry", items, i)
        FORWARD_ZONE.check(entry)
        if "zone" not in entry or "servers" not in entry:
            raise error_at("a dns.forward_zones entry needs 'zone' and 'servers'", item, items, i)
        text = expect_str(entry["zone"], "dns.forward_zones zone", entry, "zone")
        try:
            zone = normal_name(text)
        except ValueError as exc:
            raise error_at(f"dns.forward_zones: {exc}", None, entry, "zone") from None
        if zone in seen:
            raise error_at(f"dns.forward_zones: {zone} is listed twice", None, entry, "zone")
        seen.add(zone)
        servers = expect_list(entry["servers"], "dns.forward_zones servers", entry, "servers")
        if not servers:
            raise error_at(f"dns.forward_zones: {zone} has no servers", None, entry, "servers")
        specs = []
        for j, server in enumerate(servers):
            s = expect_str(server, "a dns.forward_zones server", servers, j)
            try:
                specs.append(parse_upstream(s))
            except ValueError as exc:
                raise error_at(f"dns.forward_zones: {s!r}: {exc}", server, servers, j) from None
        out.append(ForwardZone(zone, tuple(specs)))
    return tuple(out)
