"""Client address -> profile by longest-prefix match, built once per reload."""

from __future__ import annotations

import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

_MEMO_LIMIT = 65_536

# (version, prefix length) -> {network bits as int: value}. The key is the address shifted right
# by (bits - prefix length), so a lookup is one shift and one dict probe per length in use.
Tables = dict[tuple[int, int], dict[int, int]]


def parse_prefix(text: str) -> tuple[int, int, int]:
    """"2001:db8:1200::/56" -> (6, 56, network bits); host bits are ignored. ValueError if bad.

    Hand-rolled on inet_pton because ipaddress objects cost ~1 KB and ~5 µs each: a million
    subscribers would take seconds and hundreds of MB just to be read.
    """
    addr, slash, plen_text = text.strip().partition("/")
    if ":" in addr:
        version, bits, family = 6, 128, socket.AF_INET6
    else:
        version, bits, family = 4, 32, socket.AF_INET
    try:
        n = int.from_bytes(socket.inet_pton(family, addr), "big")
    except OSError:
        raise ValueError(f"{addr!r} is not an IPv{version} address") from None
    if not slash:
        return version, bits, n
    if not plen_text.isdigit() or not 0 <= int(plen_text) <= bits:
        raise ValueError(f"bad prefix length {plen_text!r} (IPv{version}: 0-{bits})")
    plen = int(plen_text)
    return version, plen, n >> (bits - plen)


class PrefixMap(Generic[T]):
    """Longest-prefix match over IPv4 and IPv6 prefixes.

    One dict per prefix length in use, probed from the longest length down: the cost depends on
    how many distinct lengths are configured (a handful), not on how many prefixes. Lookups by
    address string are memoized, since the same clients ask again and again.

    `layers` are big tables built once (ISP subscribers: a million prefixes) whose dict values
    are indexes into a values list; a reload that only rebuilds profiles passes the same tables
    with new values, so it costs nothing per subscriber. At equal prefix length a layer wins
    over `items` (a subscriber's own entry is more specific intent than its network's).
    """

    def __init__(self, items: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, T]],
                 layers: Sequence[tuple[Tables, Sequence[T]]] = ()) -> None:
        tables: Tables = {}
        values: list[T] = []
        for net, value in items:
            bits = net.max_prefixlen
            table = tables.setdefault((net.version, net.prefixlen), {})
            table[int(net.network_address) >> (bits - net.prefixlen)] = len(values)
            values.append(value)
        probes: list[tuple[int, int, int, dict[int, int], Sequence[T]]] = []
        for rank, (layer, layer_values) in enumerate([*layers, (tables, values)]):
            probes.extend((version, plen, rank, table, layer_values)
                          for (version, plen), table in layer.items() if table)
        probes.sort(key=lambda p: (-p[1], p[2]))
        self._v4 = [(plen, t, v) for version, plen, _, t, v in probes if version == 4]
        self._v6 = [(plen, t, v) for version, plen, _, t, v in probes if version == 6]
        self._memo: OrderedDict[str, T | None] = OrderedDict()

    def values(self) -> list[T]:
        """Every distinct value (the profiles of a view), each once."""
        seen = {id(v): v for _, _, values in (*self._v4, *self._v6) for v in values}
        return list(seen.values())

    def lookup(self, address: str) -> T | None:
        """The value of the longest prefix holding `address`, or None (also for junk input)."""
        memo = self._memo
        try:
            return memo[address]
        except KeyError:
            pass
        value = self._lookup(address)
        if len(memo) >= _MEMO_LIMIT:
            memo.popitem(last=False)  # oldest first (see decide.Profile.decide)
        memo[address] = value
        return value

    def match(self, address: str) -> tuple[str, T] | None:
        """The longest prefix holding `address` as text, with its value (for explain)."""
        try:
            ip = _parse(address)
        except ValueError:
            return None
        n, bits = int(ip), ip.max_prefixlen
        for plen, table, values in (self._v4 if ip.version == 4 else self._v6):
            slot = table.get(n >> (bits - plen))
            if slot is not None:
                net = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
                return str(net), values[slot]
        return None

    def _lookup(self, address: str) -> T | None:
        if "%" in address:
            address = address.split("%", 1)[0]
        try:
            if ":" in address:
                n = int.from_bytes(socket.inet_pton(socket.AF_INET6, address), "big")
                if n >> 32 == 0xFFFF:  # ::ffff:a.b.c.d, how dual-stack sockets show IPv4
                    tables, bits, n = self._v4, 32, n & 0xFFFFFFFF
                else:
                    tables, bits = self._v6, 128
            else:
                n = int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")
                tables, bits = self._v4, 32
        except OSError:
            return None  # fail closed: an address we cannot read belongs to no network
        for plen, table, values in tables:
            slot = table.get(n >> (bits - plen))
            if slot is not None:
                return values[slot]
        return None


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d
    return ip
