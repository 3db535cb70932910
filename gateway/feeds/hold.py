"""The hold guard: an update that changes too much at once waits for the operator.

An update changing more than max(max_change_entries, max_change_ratio x current) entries is
held until `safegate feeds confirm` writes NAME.confirm with the held update's id. Entries
covering a never_block name are refused whatever the feed says.

A plain list is held whole (STATE_DIR/feeds/NAME.held.*: the previous list stays in force). A
signed feed holds only the changes of that update (NAME.held.json lists the held ids and the
value each keeps in force meanwhile): the document is stored and later documents apply at once,
so an urgent order published after a big import is enforced without waiting for a confirm.
Changes the publisher forced (the document's `forced` ids) are never held.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gateway.config.feeds import FeedGuardConfig
from gateway.errors import SafeGateError
from gateway.feedformat.document import FeedEntry, FeedError, make_entry
from gateway.feeds.context import FeedContext
from gateway.util.atomic import atomic_write

log = logging.getLogger(__name__)


def covered_name(value: str, never_block: Iterable[str]) -> str | None:
    """The never-block name an entry for `value` would cover (equal, parent or child)."""
    for name in never_block:
        if value == name or value.endswith("." + name) or name.endswith("." + value):
            return name
    return None


def change_limit(current: int, guard: FeedGuardConfig) -> int:
    """More changes than this in one update are held for the operator."""
    return max(guard.max_change_entries, int(guard.max_change_ratio * current))


def count_changes(old: Mapping[Any, object], new: Mapping[Any, object]) -> int:
    """Added + removed + modified keys."""
    changed = sum(1 for k, v in new.items() if old.get(k) != v)
    return changed + sum(1 for k in old if k not in new)


def held_paths(state_dir: Path, name: str) -> tuple[Path, Path, Path, Path]:
    """(meta, body, signature, confirm marker) of a held update."""
    d = state_dir / "feeds"
    return (d / f"{name}.held.json", d / f"{name}.held.body", d / f"{name}.held.sig",
            d / f"{name}.confirm")


def confirm_held(state_dir: Path, name: str) -> dict[str, Any]:
    """Write the confirm marker for the feed's held update (`safegate feeds confirm` and the
    admin page's Confirm button); SafeGateError if none is held."""
    meta_p, _, _, marker = held_paths(state_dir, name)
    try:
        held: dict[str, Any] = json.loads(meta_p.read_text())
    except FileNotFoundError:
        raise SafeGateError(f"feed {name!r} has no held update") from None
    except (OSError, ValueError) as exc:
        raise SafeGateError(f"cannot read {meta_p}: {exc}") from None
    atomic_write(marker, str(held["id"]).encode())
    return held


class HoldGuard:
    """The held update of one feed, on disk and in safegate_feed_held_updates."""

    def __init__(self, ctx: FeedContext) -> None:
        self.ctx = ctx
        self.held_id = ""
        # Signed feeds: held entry id -> the entry kept in force meanwhile (None: absent).
        self.entries: dict[str, FeedEntry | None] = {}

    def save(self, held_id: str, serial: int, entries: Mapping[str, FeedEntry | None],
             current: int, limit: int) -> None:
        """Write NAME.held.json (files only: safe in a worker thread). Written before the
        document is stored, so no reader of the chain (the proxy) sees held changes in force."""
        ctx = self.ctx
        meta_p, body_p, sig_p, _ = held_paths(ctx.state_dir, ctx.name)
        for p in (body_p, sig_p):
            with contextlib.suppress(OSError):
                p.unlink()
        atomic_write(meta_p, json.dumps({
            "feed": ctx.name, "id": held_id, "serial": serial, "changes": len(entries),
            "current": current, "limit": limit, "held_at": ctx.clock(),
            "entries": {k: None if v is None else v.to_json()
                        for k, v in sorted(entries.items())}}).encode())

    def hold_entries(self, held_id: str, serial: int, entries: Mapping[str, FeedEntry | None],
                     new: int, current: int, limit: int, saved: bool = False) -> None:
        """Record the held part of a signed feed (`new` of them held by this update)."""
        ctx = self.ctx
        if not saved:
            self.save(held_id, serial, entries, current, limit)
        ctx.metrics.held.labels(ctx.name).set(1)
        ctx.metrics.held_entries.labels(ctx.name).set(len(entries))
        if new:
            log.error("feed %s: %d changes of serial %d HELD (limit %d with %d in force): they "
                      "stay out of force, later updates still apply. Check them, then run "
                      "`safegate feeds confirm -c gateway.yaml --feed %s`", ctx.name, new,
                      serial, limit, current, ctx.name)
        self.held_id = held_id
        self.entries = dict(entries)

    def hold(self, body: bytes, sig: str, held_id: str, serial: int, changes: int,
             current: int, limit: int) -> None:
        ctx = self.ctx
        meta_p, body_p, sig_p, _ = held_paths(ctx.state_dir, ctx.name)
        atomic_write(body_p, body)
        atomic_write(sig_p, sig.encode())
        atomic_write(meta_p, json.dumps({
            "feed": ctx.name, "id": held_id, "serial": serial, "changes": changes,
            "current": current, "limit": limit, "held_at": ctx.clock()}).encode())
        ctx.metrics.held.labels(ctx.name).set(1)
        if held_id != self.held_id:
            log.error("feed %s: update %s HELD: it changes %d entries of %d (limit %d); the "
                      "previous list stays in force. Check it, then run `safegate feeds confirm "
                      "-c gateway.yaml --feed %s`", ctx.name, held_id, changes, current, limit,
                      ctx.name)
        self.held_id = held_id

    def load(self) -> None:
        """Remember an update held before a restart."""
        meta_p = held_paths(self.ctx.state_dir, self.ctx.name)[0]
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, FeedError):
            meta = json.loads(meta_p.read_text())
            self.held_id = str(meta["id"])
            self.ctx.metrics.held.labels(self.ctx.name).set(1)
            self.entries = {str(k): None if v is None else make_entry(v)
                            for k, v in (meta.get("entries") or {}).items()}
            self.ctx.metrics.held_entries.labels(self.ctx.name).set(len(self.entries))

    def read(self) -> tuple[bytes, str]:
        """The held body and its signature (or, for a plain feed, its HTTP metadata)."""
        _, body_p, sig_p, _ = held_paths(self.ctx.state_dir, self.ctx.name)
        return body_p.read_bytes(), sig_p.read_text()

    def clear(self) -> None:
        for p in held_paths(self.ctx.state_dir, self.ctx.name)[:3]:
            with contextlib.suppress(OSError):
                p.unlink()
        self.held_id = ""
        self.entries = {}
        self.ctx.metrics.held.labels(self.ctx.name).set(0)
        self.ctx.metrics.held_entries.labels(self.ctx.name).set(0)
