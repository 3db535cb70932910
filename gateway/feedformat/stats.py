"""What a gateway may tell its publisher about traffic and probes, shared by both sides.

Per hour, per category and tier: how many queries and how many were blocked. Never a client
address or a name. The gateway writes these rows into acks; the publisher validates and stores
them (gateway/publisher/acks.py) and reports the probe counts and latencies it hears about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.feedformat.document import format_time, parse_time

# safegate_enforcement_latency_seconds (gateway) and the publisher's latency histogram.
LATENCY_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400,
                   172800)
PROBE_RESULTS = ("blocked", "not_blocked", "error")
HOUR = 3600
# Category and tier become metric label values at the publisher: bounded in length; their
# number is bounded by the gateway's policy. Not stricter: tier names are free-form policy keys.
_LABEL = re.compile(r"[^\x00-\x1f\x7f]{1,63}")


class StatFormatError(ValueError):
    """A stats row that does not have the shape of docs/feeds-contract.md."""


def hour_of(ts: float) -> int:
    return int(ts // HOUR * HOUR)


def iso(ts: float | None) -> str | None:
    """Unix seconds as the ISO 8601 UTC text used in acks and API answers (milliseconds:
    latencies are sub-second)."""
    if ts is None:
        return None
    return format_time(ts)


@dataclass(frozen=True)
class StatRow:
    """One hour's queries and blocks for one (category, tier)."""

    hour: int
    category: str
    tier: str
    queries: int
    blocked: int

    def to_json(self) -> dict[str, Any]:
        return {"hour": iso(self.hour), "category": self.category, "tier": self.tier,
                "queries": self.queries, "blocked": self.blocked}


def is_count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def parse_stat_row(raw: Any, where: str) -> StatRow:
    """A validated row (hour truncated to the hour); StatFormatError says what is wrong."""
    if not isinstance(raw, dict):
        raise StatFormatError(f"{where} must be an object")
    try:
        hour = None if raw.get("hour") is None else parse_time(raw["hour"]).timestamp()
    except ValueError:
        raise StatFormatError(f"{where}: hour must be an ISO 8601 time with timezone or null"
                              ) from None
    if hour is None:
        raise StatFormatError(f"{where}: hour is required")
    for key in ("category", "tier"):
        if not isinstance(raw.get(key), str) or not _LABEL.fullmatch(raw[key]):
            raise StatFormatError(f"{where}: {key} must be a name of 1-63 characters")
    for key in ("queries", "blocked"):
        if not is_count(raw.get(key)):
            raise StatFormatError(f"{where}: {key} must be a non-negative integer")
    return StatRow(hour_of(hour), raw["category"], raw["tier"], raw["queries"], raw["blocked"])
