"""Feed entries as an RPZ zone, for resolvers (BIND, Unbound, Knot) that cannot run SafeGate.

One source of truth for how an entry becomes RPZ records: the zone file (`safegate export
rpz`, GET /v1/rpz) and the zone transfer (gateway/publisher/xfr*.py) both use rpz_owners().
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.feedformat.document import FeedEntry
from gateway.util.names import normalize_name

RPZ_TTL = 300
_MAX_NAME = 253
# SOA timers: refresh 1 h (NOTIFY makes changes arrive sooner), retry 10 min, expire 7 days.
SOA_TIMERS = (3600, 600, 604800, RPZ_TTL)
APEX_NS = "localhost."


def soa_rdata(zone: str, serial: int) -> str:
    """The SOA's RDATA text for `zone` (normalised, no trailing dot) at feed `serial`."""
    refresh, retry, expire, minimum = SOA_TIMERS
    return (f"localhost. hostmaster.{zone}. {serial % 2**32} {refresh} {retry} {expire} "
            f"{minimum}")


def rpz_owners(entry: FeedEntry, zone: str) -> tuple[str, ...] | None:
    """The owner names (relative to `zone`) of the `CNAME .` records `entry` becomes: () for an
    entry with no RPZ form, None for a name too long to fit under `zone`.

    Only `block` entries of type domain/domain-exact have an RPZ form; `domain` also covers
    subdomains (`*.name`).
    """
    if entry.action != "block" or entry.type not in ("domain", "domain-exact"):
        return ()
    # Values are validated when entries are made; re-check: this text goes into a zone.
    name = normalize_name(entry.value).decode("ascii")
    wildcard = entry.type == "domain"
    longest = ("*." if wildcard else "") + name + "." + zone
    if len(longest) > _MAX_NAME:
        return None
    return (name, "*." + name) if wildcard else (name,)


def to_rpz(entries: Iterable[FeedEntry], origin: str = "rpz.safegate.invalid",
           serial: int = 0) -> str:
    """A zone file: `name CNAME .` (NXDOMAIN), plus `*.name` for `domain` entries.

    Entries without an RPZ form are skipped, as is a name too long to fit under `origin`
    (with a comment saying so). `serial` becomes the SOA serial, so resolvers transferring
    the zone see each feed change.
    """
    zone = normalize_name(origin).decode("ascii")
    lines = [
        f"$TTL {RPZ_TTL}",
        f"$ORIGIN {zone}.",
        f"@ IN SOA ({soa_rdata(zone, serial)})",
        f"@ IN NS {APEX_NS}",
    ]
    for e in sorted(entries, key=lambda x: (x.value, x.id)):
        owners = rpz_owners(e, zone)
        if owners is None:
            name = normalize_name(e.value).decode("ascii")
            lines.append(f"; {e.id}: {name} skipped, too long to fit under {zone}")
            continue
        if owners:
            lines.append(f"; {e.id} {','.join(e.categories)}")
            lines.extend(f"{o} CNAME ." for o in owners)
    return "\n".join(lines) + "\n"
