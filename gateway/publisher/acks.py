"""Validating a gateway's ack (docs/feeds-contract.md) before anything is stored."""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import SafeGateError
from gateway.feedformat.document import parse_time
from gateway.feedformat.stats import (
    PROBE_RESULTS,
    StatFormatError,
    StatRow,
    is_count,
    parse_stat_row,
)
from gateway.publisher.store import Ack, AckEntry, Store

# safegate_publisher_acks_rejected_total{reason}
REJECT_REASONS = ("malformed", "too_large", "future_serial", "unknown_entries")
# not_applicable: the gateway has no part that enforces the entry's type (a URL or image hash
# without the proxy; ip/cidr): shown as such, never overdue, counted in reports.
OUTCOMES = ("received", "verified", "applied", "failed", "refused", "removed", "not_applicable")


class AckError(SafeGateError):
    """An ack refused whole: `status` is the HTTP answer, `reason` a metric label."""

    def __init__(self, message: str, status: int = 400, reason: str = "malformed") -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)


def parse_ack(body: bytes) -> Ack:
    """The validated ack; AckError says what is wrong."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AckError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise AckError("an ack must be a JSON object")
    gateway = doc.get("gateway")
    if not isinstance(gateway, str) or not gateway:
        raise AckError("gateway must be a string")
    if not isinstance(doc.get("feed", ""), str):
        raise AckError("feed must be a string")
    serial = doc.get("serial")
    if not isinstance(serial, int) or not is_count(serial):
        raise AckError("serial must be a non-negative integer")
    entries = tuple(_entry(i, e) for i, e in enumerate(_list(doc, "entries")))
    stats = tuple(_stat(i, s) for i, s in enumerate(_list(doc, "stats")))
    probes_raw = doc.get("probes") or {}
    if not isinstance(probes_raw, dict):
        raise AckError("probes must be an object")
    probes: dict[str, int] = {}
    for key, n in probes_raw.items():
        if key not in PROBE_RESULTS or not is_count(n):
            raise AckError(f"probes: {key!r} must be one of {', '.join(PROBE_RESULTS)} with a "
                           "non-negative count")
        probes[key] = n
    return Ack(gateway, serial, entries, stats, probes)


def check_ack(ack: Ack, store: Store) -> None:
    """Refuse an ack that claims what cannot be: a serial the feed never had, or entries it
    never listed. Stored, such an ack would pin the gateway's applied serial above every
    future one (the lag alert could never fire again) or fill the acks table with junk ids.
    Both only grow at the publisher, so checking outside the write transaction is safe."""
    current = store.serial()
    if ack.serial > current:
        raise AckError(f"serial {ack.serial} is newer than the feed (serial {current}); "
                       "nothing was recorded", 409, "future_serial")
    unknown = store.unknown_ids([e.entry_id for e in ack.entries])
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise AckError(f"{len(unknown)} entry id(s) are not in this feed: {shown}{more}; "
                       "nothing was recorded", 422, "unknown_entries")


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key) or []
    if not isinstance(value, list):
        raise AckError(f"{key} must be a list")
    return value


def _time(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value).timestamp()
    except ValueError:
        raise AckError(f"{what} must be an ISO 8601 time with timezone or null") from None


def _entry(i: int, raw: Any) -> AckEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
        raise AckError(f"entries[{i}] must be an object with an id")
    where = f"entries[{i}] ({raw['id']!r})"
    outcome = raw.get("outcome")
    if outcome not in OUTCOMES:
        raise AckError(f"{where}: outcome must be one of {', '.join(OUTCOMES)}")
    return AckEntry(raw["id"], _time(raw.get("received_at"), f"{where}: received_at"),
                    _time(raw.get("applied_at"), f"{where}: applied_at"),
                    _time(raw.get("verified_at"), f"{where}: verified_at"), outcome)


def _stat(i: int, raw: Any) -> StatRow:
    try:
        return parse_stat_row(raw, f"stats[{i}]")
    except StatFormatError as exc:   # a 400 stalls the gateway's outbox on this ack: say why
        raise AckError(str(exc)) from None
