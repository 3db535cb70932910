"""`dns.forward_zones`: which Forwarder a name goes to (the school's own DNS for its zones).

Only a cache miss asks: the walk is one dict probe per label of the name, from the whole name
down, so the longest configured zone wins.
"""

from __future__ import annotations

from gateway.dns.upstream import Forwarder


class ZoneForwarders:
    """Zone (lowercase dotted bytes) -> the Forwarder of its servers."""

    def __init__(self, zones: dict[bytes, Forwarder]) -> None:
        self.zones = zones

    def pick(self, key: bytes, default: Forwarder) -> Forwarder:
        """The forwarder of the longest zone `key` is at or under, else `default`."""
        zones = self.zones
        if not zones:
            return default
        pos = 0
        while True:
            found = zones.get(key[pos:])
            if found is not None:
                return found
            pos = key.find(b".", pos) + 1
            if not pos:
                return default

    def labels(self) -> list[str]:
        """Every zone server's metrics label (for the upstream counters to start at 0)."""
        return [u.label for f in self.zones.values() for u in f.upstreams]

    def close(self) -> None:
        for forwarder in self.zones.values():
            forwarder.close()
