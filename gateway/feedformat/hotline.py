"""A hotline report as the gateway stores and forwards it and the publisher receives it (the JSON
contract is docs/hotline.md); shared by both sides, so it lives in feedformat.

Pure: parsing a submitted form into a HotlineReport raises ReportError naming the field; no I/O.
A report never carries the client's address.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.errors import SafeGateError

KINDS = ("mistake", "harmful", "match")   # match: an automatic hash match (the proxy)
FORM_KINDS = ("mistake", "harmful")       # what a person can submit
MAX_TARGET = 2048
MAX_CATEGORY = 64
MAX_ENTRY_ID = 128
MAX_COMMENT = 1000
MAX_CONTACT = 200
MAX_GATEWAY = 128


class ReportError(SafeGateError):
    """A submitted report that cannot be accepted; the message names the field."""


@dataclass(frozen=True)
class HotlineReport:
    id: str              # uuid4: the idempotency key every receiver dedups on
    kind: str            # mistake | harmful | match
    target: str          # the URL or host the person was shown
    category: str
    entry_id: str        # the feed entry that decided, if any
    comment: str         # free text, length-capped
    contact: str         # opt-in: only what the person typed
    created_at: str      # ISO 8601 UTC, e.g. 2025-01-02T03:04:05Z
    gateway: str         # gateway.id of the reporting gateway

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def _clean(value: str, limit: int, field: str, *, multiline: bool = False) -> str:
    """Strip, refuse over-long input, drop control characters (newlines kept in comments)."""
    value = value.strip()
    if len(value) > limit:
        raise ReportError(f"field {field}: at most {limit} characters, got {len(value)}")
    keep = "\n" if multiline else ""
    return "".join(ch for ch in value.replace("\r\n", "\n")
                   if ch.isprintable() or ch in keep)


def _text(form: Mapping[str, Any], field: str) -> str:
    value = form.get(field, "")
    if not isinstance(value, str):
        raise ReportError(f"field {field}: expected text")
    return value


def from_form(form: Mapping[str, Any], *, gateway: str, now: datetime,
              kinds: tuple[str, ...] = FORM_KINDS, report_id: str | None = None) -> HotlineReport:
    """A report from submitted fields (kind, target, category, entry_id, comment, contact)."""
    kind = _text(form, "kind")
    if kind not in kinds:
        raise ReportError(f"field kind: must be one of {', '.join(kinds)}, got {kind[:20]!r}")
    target = _clean(_text(form, "target"), MAX_TARGET, "target")
    if not target:
        raise ReportError("field target: required (the blocked host or URL)")
    return HotlineReport(
        id=report_id or str(uuid.uuid4()),
        kind=kind,
        target=target,
        category=_clean(_text(form, "category"), MAX_CATEGORY, "category"),
        entry_id=_clean(_text(form, "entry_id"), MAX_ENTRY_ID, "entry_id"),
        comment=_clean(_text(form, "comment"), MAX_COMMENT, "comment", multiline=True),
        contact=_clean(_text(form, "contact"), MAX_CONTACT, "contact"),
        created_at=now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        gateway=gateway,
    )


def from_json(doc: Any) -> HotlineReport:
    """A forwarded report (the receiver's side): every field present, ids well formed."""
    if not isinstance(doc, dict):
        raise ReportError("the body must be a JSON object")
    unknown = sorted(set(doc) - set(HotlineReport.__dataclass_fields__))
    if unknown:
        raise ReportError(f"unknown field(s) {', '.join(unknown)}")
    try:
        uuid.UUID(str(doc.get("id", "")))
    except ValueError:
        raise ReportError("field id: must be a UUID") from None
    created = _text(doc, "created_at")
    try:
        when = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"field created_at: not an ISO 8601 time: {created[:40]!r}") from None
    if when.tzinfo is None:
        raise ReportError("field created_at: needs a timezone")
    report = from_form(doc, gateway=_clean(_text(doc, "gateway"), MAX_GATEWAY, "gateway"),
                       now=when, kinds=KINDS, report_id=str(doc["id"]))
    return report
