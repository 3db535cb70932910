"""Client address -> profile by longest-prefix match, built once per reload."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

_MEMO_LIMIT = 65_536


class PrefixMap(Generic[T]):
    """Longest-prefix match over IPv4 and IPv6 prefixes.

    One dict per prefix length in use, probed from the longest length down: the cost depends on
    how many distinct lengths are configured (a handful), not on how many prefixes. Lookups by
    address string are memoized, since the same clients ask again and again.
    """

    def __init__(self, items: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, T]]
                 ) -> None:
        tables: dict[tuple[int, int], dict[int, T]] = {}
        for net, value in items:
            bits = net.max_prefixlen
            table = tables.setdefault((net.version, net.prefixlen), {})
            table[int(net.network_address) >> (bits - net.prefixlen)] = value
        self._v4 = sorted(((plen, t) for (v, plen), t in tables.items() if v == 4), reverse=True,
                          key=lambda x: x[0])
        self._v6 = sorted(((plen, t) for (v, plen), t in tables.items() if v == 6), reverse=True,
                          key=lambda x: x[0])
        self._memo: OrderedDict[str, T | None] = OrderedDict()

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

    def _lookup(self, address: str) -> T | None:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None  # fail closed: an address we cannot read belongs to no network
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d
        n = int(ip)
        if ip.version == 4:
            tables, bits = self._v4, 32
        else:
            tables, bits = self._v6, 128
        for plen, table in tables:
            value = table.get(n >> (bits - plen))
            if value is not None:
                return value
        return None
