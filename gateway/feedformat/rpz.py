"""Feed entries as an RPZ zone, for resolvers (BIND, Unbound, Knot) that cannot run SafeGate."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.feedformat.document import FeedEntry
from gateway.util.names import normalize_name

RPZ_TTL = 300
_MAX_NAME = 253


def to_rpz(entries: Iterable[FeedEntry], origin: str = "rpz.safegate.invalid",
           serial: int = 0) -> str:
    """A zone file: `name CNAME .` (NXDOMAIN), plus `*.name` for `domain` entries.

    Only `block` entries of type domain/domain-exact have an RPZ form; others are skipped, as is
    a name too long to fit under `origin` (with a comment saying so). `serial` becomes the SOA
    serial, so resolvers transferring the zone see each feed change.
    """
    zone = normalize_name(origin).decode("ascii")
    lines = [
        f"$TTL {RPZ_TTL}",
        f"$ORIGIN {zone}.",
        f"@ IN SOA localhost. hostmaster.{zone}. ({serial % 2**32} 3600 600 604800 {RPZ_TTL})",
        "@ IN NS localhost.",
    ]
    for e in sorted(entries, key=lambda x: (x.value, x.id)):
        if e.action != "block" or e.type not in ("domain", "domain-exact"):
            continue
        # Values are validated when entries are made; re-check: this text goes into a zone.
        name = normalize_name(e.value).decode("ascii")
        wildcard = e.type == "domain"
        longest = ("*." if wildcard else "") + name + "." + zone
        if len(longest) > _MAX_NAME:
            lines.append(f"; {e.id}: {name} skipped, too long to fit under {zone}")
            continue
        lines.append(f"; {e.id} {','.join(e.categories)}")
        lines.append(f"{name} CNAME .")
        if wildcard:
            lines.append(f"*.{name} CNAME .")
    return "\n".join(lines) + "\n"
