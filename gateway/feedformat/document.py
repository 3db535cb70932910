"""Feed format v1: the signed JSON document a publisher serves and gateways apply.

The contract is in docs/feed-format.md (with a JSON Schema in docs/feed.schema.json). Parsing
is strict: a document that does not validate is rejected whole, never applied in part.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import SafeGateError
from gateway.util.names import normalize_name

FORMAT_VERSION = 1
ENTRY_TYPES = ("domain", "domain-exact", "url", "ip", "cidr", "sha256", "pdq")
ACTIONS = ("block", "warn")
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ID = re.compile(r"[^\s\x00-\x1f]{1,128}")


class FeedError(SafeGateError):
    """A feed document or entry that must not be applied; `reason` is a bounded metric label."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class LegalBasis:
    authority: str
    decision: str
    date: str  # YYYY-MM-DD

    def to_json(self) -> dict[str, str]:
        return {"authority": self.authority, "decision": self.decision, "date": self.date}


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One blocking request, as the authority issued it. (Slots: a national feed holds 100k+
    of these in every gateway, a Raspberry Pi among them.)"""

    id: str
    type: str
    value: str                       # normalised (lowercase domain, canonical IP/CIDR, ...)
    categories: tuple[str, ...]
    action: str = "block"
    mandatory: bool = False
    legal_basis: LegalBasis | None = None
    issued_at: str = ""              # ISO 8601 with timezone
    deadline: str | None = None      # ISO 8601 with timezone

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "type": self.type, "value": self.value,
            "categories": list(self.categories), "action": self.action,
            "mandatory": self.mandatory, "issued_at": self.issued_at,
        }
        if self.legal_basis is not None:
            out["legal_basis"] = self.legal_basis.to_json()
        if self.deadline is not None:
            out["deadline"] = self.deadline
        return out


@dataclass(frozen=True)
class Feed:
    """A full snapshot (`since` is None) or a diff from serial `since` (with `removed` ids)."""

    serial: int
    generated_at: str
    entries: tuple[FeedEntry, ...] = ()
    removed: tuple[str, ...] = ()
    since: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # Ids of this document's changes (added, modified or removed entries) that the publisher's
    # operator pushed past max_change with --force: gateways apply them without holding them
    # (docs/feed-format.md "forced"). Signed like the rest, so no one else can set it.
    forced: tuple[str, ...] = ()

    @property
    def is_diff(self) -> bool:
        return self.since is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": FORMAT_VERSION, "serial": self.serial, "generated_at": self.generated_at,
            "entries": [e.to_json() for e in self.entries]
            + [{"id": rid, "removed": True} for rid in self.removed],
        }
        if self.since is not None:
            out["since"] = self.since
        if self.forced:
            out["forced"] = list(self.forced)
        return out

    def to_bytes(self) -> bytes:
        """Canonical bytes (sorted keys, no spaces): what the publisher signs and serves."""
        return json.dumps(self.to_json(), ensure_ascii=False, sort_keys=True,
                          separators=(",", ":")).encode("utf-8")


def now_iso() -> str:
    """Now, in UTC to the millisecond: an order issued at 12:00:00.900 and enforced at
    12:00:01.100 took 0.2 s, not 1 s (and whole seconds would make it look like 0 s)."""
    return format_time(datetime.now(UTC).timestamp())


def format_time(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds (the wire form of every time); a whole
    second is written without them, as before."""
    t = datetime.fromtimestamp(ts, UTC)
    ms = t.microsecond // 1000
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms:03d}Z" if ms else "Z")


def parse_time(text: Any) -> datetime:
    """ISO 8601 with a timezone (a trailing Z is accepted) -> aware datetime; ValueError else."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a time")
    t = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone")
    return t


def normalize_value(entry_type: str, value: str) -> str:
    """The canonical form of an entry's value; ValueError with a clear message if invalid."""
    value = value.strip()
    if entry_type in ("domain", "domain-exact"):
        return normalize_name(value).decode("ascii")
    if entry_type == "url":
        parts = urlsplit(value if "://" in value else "http://" + value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        if parts.username or parts.password:
            raise ValueError(f"{value!r} has credentials in it")
        host = normalize_name(parts.hostname).decode("ascii")
        default = 80 if parts.scheme == "http" else 443
        port = f":{parts.port}" if parts.port not in (None, default) else ""
        path = parts.path or "/"
        query = f"?{parts.query}" if parts.query else ""
        return f"{parts.scheme}://{host}{port}{path}{query}"
    if entry_type == "ip":
        return str(ipaddress.ip_address(value))
    if entry_type == "cidr":
        return str(ipaddress.ip_network(value, strict=True))
    if entry_type in ("sha256", "pdq"):
        low = value.lower()
        if not _HEX64.fullmatch(low):
            raise ValueError(f"{entry_type} must be 64 hexadecimal characters")
        return low
    raise ValueError(f"unknown type {entry_type!r} (expected one of {', '.join(ENTRY_TYPES)})")


def make_entry(raw: dict[str, Any]) -> FeedEntry:
    """Validate one entry object; raises FeedError naming the entry and the problem."""
    rid = raw.get("id")
    if not isinstance(rid, str) or not _ID.fullmatch(rid):
        raise FeedError(f"entry id must be 1-128 printable characters, got {rid!r}")
    where = f"entry {rid!r}"
    known = {"id", "type", "value", "categories", "action", "mandatory", "legal_basis",
             "issued_at", "deadline"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise FeedError(f"{where}: unknown field(s) {', '.join(unknown)}")
    etype = raw.get("type")
    if etype not in ENTRY_TYPES:
        raise FeedError(f"{where}: type must be one of {', '.join(ENTRY_TYPES)}, got {etype!r}")
    value = raw.get("value")
    if not isinstance(value, str):
        raise FeedError(f"{where}: value must be a string")
    try:
        value = normalize_value(etype, value)
    except ValueError as exc:
        raise FeedError(f"{where}: bad {etype} value: {exc}") from None
    cats = raw.get("categories")
    if (not isinstance(cats, list) or not cats
            or not all(isinstance(c, str) and _CATEGORY.fullmatch(c) for c in cats)):
        raise FeedError(f"{where}: categories must be a non-empty list of category names")
    action = raw.get("action", "block")
    if action not in ACTIONS:
        raise FeedError(f"{where}: action must be block or warn, got {action!r}")
    mandatory = raw.get("mandatory", False)
    if not isinstance(mandatory, bool):
        raise FeedError(f"{where}: mandatory must be true or false")
    basis = raw.get("legal_basis")
    legal: LegalBasis | None = None
    if basis is not None:
        if not isinstance(basis, dict) or not all(
                isinstance(basis.get(k), str) and str(basis.get(k)).strip()
                for k in ("authority", "decision", "date")):
            raise FeedError(f"{where}: legal_basis needs authority, decision and date")
        try:
            if not _DATE.fullmatch(basis["date"]):
                raise ValueError(basis["date"])
            date.fromisoformat(basis["date"])
        except ValueError:
            raise FeedError(f"{where}: legal_basis.date must be YYYY-MM-DD") from None
        legal = _legal_basis(basis["authority"].strip(), basis["decision"].strip(),
                             basis["date"])
    if mandatory and legal is None:
        raise FeedError(f"{where}: a mandatory entry needs a legal_basis")
    issued = str(raw.get("issued_at", ""))
    deadline = raw.get("deadline")
    for label, t in (("issued_at", issued), ("deadline", deadline)):
        if t is None and label == "deadline":
            continue
        try:
            parse_time(t)
        except (TypeError, ValueError):
            raise FeedError(f"{where}: {label} must be an ISO 8601 time with timezone") from None
    # One decision orders many entries: equal legal bases, category tuples and timestamps are
    # shared objects, not one copy per entry (a 100k-entry feed on a Pi).
    return FeedEntry(rid, sys.intern(etype), value, _categories(tuple(cats)), sys.intern(action),
                 mandatory, legal, sys.intern(issued), deadline)


@functools.lru_cache(maxsize=4096)
def _legal_basis(authority: str, decision: str, date: str) -> LegalBasis:
    return LegalBasis(authority, decision, date)


@functools.lru_cache(maxsize=4096)
def _categories(cats: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sys.intern(c) for c in cats)


def parse_feed(data: bytes) -> Feed:
    """Parse and validate a whole document (its signature is checked before, not here)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FeedError(f"not valid JSON: {exc}", "malformed") from None
    if not isinstance(doc, dict):
        raise FeedError("a feed must be a JSON object")
    if doc.get("version") != FORMAT_VERSION:
        raise FeedError(f"unsupported feed version {doc.get('version')!r}", "version")
    serial = doc.get("serial")
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise FeedError("serial must be a non-negative integer")
    since = doc.get("since")
    if since is not None and (not isinstance(since, int) or since >= serial):
        raise FeedError("since must be an integer below serial")
    generated = doc.get("generated_at")
    try:
        parse_time(generated)
    except (TypeError, ValueError):
        raise FeedError("generated_at must be an ISO 8601 time with timezone") from None
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list):
        raise FeedError("entries must be a list")
    entries: list[FeedEntry] = []
    removed: list[str] = []
    seen: set[str] = set()
    for raw in raw_entries:
        if not isinstance(raw, dict):
            raise FeedError("every entry must be an object")
        if raw.get("removed") is True:
            if since is None:
                raise FeedError("removals are only allowed in a diff (with since)")
            rid = raw.get("id")
            if not isinstance(rid, str):
                raise FeedError("a removal needs an id")
            removed.append(rid)
            continue
        entry = make_entry(raw)
        if entry.id in seen:
            raise FeedError(f"entry id {entry.id!r} appears twice")
        seen.add(entry.id)
        entries.append(entry)
    forced = doc.get("forced", [])
    if not isinstance(forced, list) or not all(isinstance(i, str) and _ID.fullmatch(i)
                                               for i in forced):
        raise FeedError("forced must be a list of entry ids")
    extra = {k: v for k, v in doc.items()
             if k not in ("version", "serial", "since", "generated_at", "entries", "forced")}
    return Feed(serial, str(generated), tuple(entries), tuple(removed), since, extra,
                tuple(forced))


def apply_diff(current: dict[str, FeedEntry], feed: Feed) -> dict[str, FeedEntry]:
    """The entry set after applying `feed` (a full snapshot replaces everything)."""
    if not feed.is_diff:
        return {e.id: e for e in feed.entries}
    out = dict(current)
    for rid in feed.removed:
        out.pop(rid, None)
    for e in feed.entries:
        out[e.id] = e
    return out
