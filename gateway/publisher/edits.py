"""Adding and removing entries, with the guard rails shared by the CLI and the write API.

Why guard rails at the publisher: one bad entry reaches every gateway within seconds, so a
never-block name (government, education) or a runaway batch is refused before it is signed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import SafeGateError
from gateway.feedformat.document import FeedEntry, FeedError, make_entry, now_iso, parse_time
from gateway.publisher.store import Store


class EditError(SafeGateError):
    """A refused change; `kind` is invalid, refused (guard rail), conflict or not_found."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class Guard:
    never_block: tuple[str, ...]
    max_change_ratio: float
    max_change_entries: int


def new_entry_id(today: datetime | None = None) -> str:
    """A reference unique in practice: SG-YYYYMMDD-<8 hex>."""
    day = (today or datetime.now(UTC)).strftime("%Y%m%d")
    return f"SG-{day}-{secrets.token_hex(4)}"


def prepare_entries(raws: Sequence[Any], issued_at: str,
                    new_id: Callable[[], str] = new_entry_id) -> list[FeedEntry]:
    """Validate raw entry objects (id and issued_at optional) with the feed's own rules."""
    if not raws:
        raise EditError("no entries given")
    out: list[FeedEntry] = []
    seen: set[str] = set()
    for i, raw in enumerate(raws):
        if not isinstance(raw, dict):
            raise EditError(f"entry #{i + 1} must be a JSON object")
        raw = dict(raw)
        raw.setdefault("id", new_id())
        raw.setdefault("issued_at", issued_at)
        try:
            entry = make_entry(raw)
        except FeedError as exc:
            message = str(exc)
            if ": bad " in message and isinstance(raw.get("value"), str):
                message += f" (given {raw['value']!r})"
            raise EditError(message) from None
        if entry.id in seen:
            raise EditError(f"entry id {entry.id!r} appears twice in this batch")
        seen.add(entry.id)
        out.append(canonical_times(entry))
    return out


def _rfc3339(text: str) -> str:
    out = parse_time(text).isoformat()
    return out[:-6] + "Z" if out.endswith("+00:00") else out


def canonical_times(entry: FeedEntry) -> FeedEntry:
    """Times as RFC 3339 and the decision date as YYYY-MM-DD, whatever ISO 8601 spelling was
    typed (`20261120`, week dates): what we sign must match docs/feed.schema.json."""
    basis = entry.legal_basis
    if basis is not None:
        basis = replace(basis, date=date.fromisoformat(basis.date).isoformat())
    return replace(entry, issued_at=_rfc3339(entry.issued_at), legal_basis=basis,
                   deadline=None if entry.deadline is None else _rfc3339(entry.deadline))


def covered_host(entry: FeedEntry) -> str | None:
    """The host name an entry blocks by name, if any (IPs and hashes name no host)."""
    if entry.type in ("domain", "domain-exact"):
        return entry.value
    if entry.type == "url":
        return urlsplit(entry.value).hostname
    return None


def never_block_conflict(entry: FeedEntry, never_block: Iterable[str]) -> str | None:
    """The protected name `entry` would cover (equal, under it, or - for `domain` - above it)."""
    host = covered_host(entry)
    if host is None:
        return None
    for name in never_block:
        if host == name or host.endswith("." + name):
            return name
        if entry.type == "domain" and name.endswith("." + host):
            return name
    return None


def check_never_block(entries: Iterable[FeedEntry], never_block: Sequence[str]) -> None:
    for e in entries:
        name = never_block_conflict(e, never_block)
        if name is not None:
            raise EditError(
                f"entry {e.id!r} ({e.type} {e.value}) would block {name}, which is on the "
                "never_block list in publisher.yaml; such names are never blocked by the feed",
                "refused")


def change_limit(current: int, guard: Guard) -> int:
    return max(guard.max_change_entries, int(guard.max_change_ratio * current))


def check_max_change(changes: int, current: int, guard: Guard, force: bool) -> None:
    limit = change_limit(current, guard)
    if changes > limit and not force:
        raise EditError(
            f"this change touches {changes} entries, more than max_change allows "
            f"({limit} with {current} live entries); check it, then repeat with --force "
            "(API: \"force\": true)", "refused")


@dataclass
class Editor:
    """The one way entries are added or removed (CLI and HTTP API alike)."""

    store: Store
    guard: Guard

    def add(self, raws: Sequence[Any], force: bool = False) -> tuple[int, list[FeedEntry]]:
        """Validate, apply guard rails, and add all of `raws` under one new serial."""

        def fresh_id() -> str:
            while True:
                rid = new_entry_id()
                if not self.store.has_entry(rid):
                    return rid

        entries = prepare_entries(raws, now_iso(), fresh_id)
        check_never_block(entries, self.guard.never_block)
        check_max_change(len(entries), self.store.count_active(), self.guard, force)
        return self.store.add_entries(entries, forced=force), entries

    def remove(self, entry_id: str, force: bool = False) -> int:
        check_max_change(1, self.store.count_active(), self.guard, force)
        return self.store.remove_entry(entry_id, now_iso(), forced=force)
