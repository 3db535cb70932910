"""A signed feed: verify, check, persist and apply each document; track its freshness.

Order of trust: the signature over the exact bytes is checked before the body is even parsed;
a document is persisted only once it validated, and applied only after the guard rails.
Whatever fails, the rules already in force stay in force. After MAX_DIFFS stored diffs the
client asks for a full snapshot, which replaces the chain (gateway/feeds/snapshots.py).

Freshness: the publisher re-signs its documents at least every `heartbeat` (a new generated_at,
a signed field), and the client tracks the generated_at of the newest document it verified and
applied. Past max_age / 2 it stops asking conditionally (no `since`, no If-None-Match,
Cache-Control: no-cache) so a cache in between cannot answer for the publisher; past max_age
the feed is stale: metrics and the log say so, the last-known-good stays enforced (blocks are
never dropped for want of news), and last_success stops moving.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.feedformat.document import (
    Feed,
    FeedEntry,
    FeedError,
    apply_diff,
    parse_feed,
    parse_time,
)
from gateway.feedformat.signing import SIGNATURE_HEADER, Verifier
from gateway.feeds.byserial import SerialPoll
from gateway.feeds.context import FeedContext, Fetch, Rejected
from gateway.feeds.hold import HoldGuard, change_limit
from gateway.feeds.install import Installer
from gateway.feeds.snapshots import SnapshotChain

log = logging.getLogger(__name__)

MAX_DIFFS = 32                 # stored diffs before a full snapshot is requested


def looks_truncated(body: bytes) -> bool:
    """True if the JSON text ends inside a string or with brackets still open."""
    depth, in_str, esc = 0, False, False
    for ch in body:
        if in_str:
            if esc:
                esc = False
            elif ch == 0x5C:
                esc = True
            elif ch == 0x22:
                in_str = False
        elif ch == 0x22:
            in_str = True
        elif ch in (0x7B, 0x5B):
            depth += 1
        elif ch in (0x7D, 0x5D):
            depth -= 1
    return in_str or depth > 0 or not body.strip()


@dataclass
class Applied:
    """The document in force."""

    serial: int
    entries: dict[str, FeedEntry]      # in force: the publisher's set without the held part
    # SHA-256 of the document as received (to tell a replay of it from new content); the
    # document itself is on disk, not kept in memory (25 MB for a 100k-entry snapshot).
    digest: bytes = b""
    diffs: int = 0                 # diffs stored since the snapshot
    # While changes are held: the publisher's whole set (entries differs in the held ids).
    target: dict[str, FeedEntry] | None = None
    held: dict[str, FeedEntry | None] = field(default_factory=dict)

    @property
    def published(self) -> dict[str, FeedEntry]:
        """The entry set of the stored chain (what the publisher's serial says)."""
        return self.entries if self.target is None else self.target


def masked(target: Mapping[str, FeedEntry], held: Mapping[str, FeedEntry | None]
           ) -> dict[str, FeedEntry]:
    """`target` with each held id kept at the value it had in force (None: absent)."""
    out = dict(target)
    for rid, kept in held.items():
        if kept is None:
            out.pop(rid, None)
        else:
            out[rid] = kept
    return out


@dataclass
class _Update:
    """A verified document ready to go in force (SignedFeed._prepare)."""

    applied: Applied
    changed: set[str]
    removed: set[str]
    received_at: float
    newly_held: int = 0            # changes this document added to the held part
    limit: int = 0
    held_id: str = ""              # the hold's id (the serial that last added to it)
    saved: bool = False            # NAME.held.json already written (before the chain)
    current: int = 0               # entries in force before it


class SignedFeed:
    """The signed half of a feed client: its document in force, chain and freshness."""

    def __init__(self, ctx: FeedContext, fetch: Fetch, hold: HoldGuard,
                 installer: Installer) -> None:
        self.ctx = ctx
        self.fetch = fetch
        self.hold = hold
        self.installer = installer
        self.verifier = Verifier.from_files(list(ctx.cfg.public_keys))
        self.chain = SnapshotChain(ctx.dir, ctx.name, self.verifier)
        self.applied: Applied | None = None
        self.want_full = False
        self.busy = False            # accept_async is applying an update (see confirmations)
        self.signed_at: float | None = None   # generated_at of the newest verified document
        self.stale = False           # logged state (the metric is computed at scrape time)
        self.by_serial: SerialPoll | None = None   # set when cfg.by_serial (FeedClient)
        ctx.metrics.init_signed(ctx.name, self.document_age, ctx.cfg.max_age)

    @property
    def serial(self) -> int:
        return self.applied.serial if self.applied else 0

    # ------------------------------------------------------------------ freshness

    def document_age(self) -> float:
        """Seconds since the publisher signed the newest verified document (inf: none yet)."""
        if self.signed_at is None:
            return math.inf
        return max(0.0, self.ctx.clock() - self.signed_at)

    def fresh(self) -> bool:
        return self.document_age() <= self.ctx.cfg.max_age

    def _saw_signed(self, feed: Feed) -> None:
        """Note the signing time of a verified document that is (or matches) the one in force;
        the newest wins, so a replayed older copy cannot make the feed look younger."""
        self.saw_signed_at(feed.generated_at)

    def saw_signed_at(self, generated_at: str) -> None:
        """A signed time vouching for the document in force (a feed's, or a head's naming
        our serial: gateway/feeds/byserial.py); the newest wins."""
        t = parse_time(generated_at).timestamp()
        if self.signed_at is None or t > self.signed_at:
            self.signed_at = t

    def check_fresh(self) -> bool:
        """Log when the feed turns stale or fresh again; returns fresh()."""
        fresh = self.fresh()
        if not fresh and not self.stale:
            age = self.document_age()
            log.error("feed %s: STALE: the newest verified document was signed %s ago (max_age "
                      "%.0fs); serial %d stays enforced, fetching without caches until the "
                      "publisher answers", self.ctx.name,
                      "never" if math.isinf(age) else f"{age:.0f}s", self.ctx.cfg.max_age,
                      self.serial)
        elif fresh and self.stale:
            log.warning("feed %s: fresh again (serial %d, signed %.0fs ago)", self.ctx.name,
                        self.serial, self.document_age())
        self.stale = not fresh
        return fresh

    # ------------------------------------------------------------------ start-up

    def load_local(self) -> bool:
        """Apply the stored chain (re-verified), before any network access."""
        ctx = self.ctx
        chain = self.chain.load()
        if not chain:
            log.warning("feed %s: no valid last-known-good copy; nothing enforced until the "
                        "first download", ctx.name)
            return False
        entries: dict[str, FeedEntry] = {}
        for doc in chain:
            entries = apply_diff(entries, doc)
            self._saw_signed(doc)
        serial = chain[-1].serial
        held = dict(self.hold.entries)
        target, entries = entries, masked(entries, held)
        self.applied = Applied(serial, entries, b"", len(chain) - 1,
                               target if held else None, held)
        active = {r.entry_id for r in ctx.ledger.entries(ctx.name) if r.removed_at is None}
        self.installer.install(serial, entries, entries.keys(), active - set(entries),
                               ctx.clock(), ack=False)
        log.info("feed %s: last-known-good serial %d applied from disk (%d entries)", ctx.name,
                 serial, len(entries))
        return True

    # ------------------------------------------------------------------ polling

    async def poll(self) -> str:
        cfg = self.ctx.cfg
        params: dict[str, str] = {}
        headers: dict[str, str] = {}
        applied = self.applied
        # Half-way to max_age: a conditional request could be answered by any cache on the
        # way, so ask for the whole document; a live publisher's copy is re-signed (heartbeat).
        refresh = applied is not None and self.document_age() > cfg.max_age / 2
        if self.by_serial is not None and not self.by_serial.bypass and not refresh:
            return await self.by_serial.poll()
        full = self.want_full or applied is None or applied.diffs >= MAX_DIFFS or refresh
        if applied is not None and not full:
            params["since"] = str(applied.serial)
            headers["If-None-Match"] = f'"{applied.serial}"'
            if cfg.long_poll:
                params["wait"] = str(int(cfg.long_poll))
        else:
            headers["Cache-Control"] = "no-cache"
            headers["Pragma"] = "no-cache"
        status, body, resp_headers = await self.fetch(params, headers, cfg.long_poll + 30)
        if status == 304:
            if full:
                raise Rejected("not_modified", "304 Not Modified to an unconditional request: "
                                               "something between this gateway and the "
                                               "publisher answers for it")
            if self.by_serial is not None:
                self.by_serial.bypass = False   # the publisher says ours is current
            if self.fresh():   # a 304 only vouches for a copy still within max_age
                self.ctx.success()
            return "unchanged"
        result = await self.accept_async(body, resp_headers.get(SIGNATURE_HEADER))
        if self.by_serial is not None:
            self.by_serial.bypass = False   # the publisher's own answer was good
        if result == "need_full":
            self.want_full = True
        elif result in ("updated", "unchanged"):
            self.want_full = False
            if self.fresh():
                self.ctx.success()
            if refresh and self.document_age() > cfg.max_age / 2:
                raise Rejected("stale", f"the newest document served (serial {self.serial}) "
                                        f"was signed {self.document_age():.0f}s ago: is the "
                                        "publisher's heartbeat longer than max_age / 2, or is "
                                        "a cache replaying it?")
        return result

    # ------------------------------------------------------------------ documents

    def accept(self, body: bytes, signature: str | None, *, confirmed: bool = False) -> str:
        """Verify, check, persist and apply one document; raises Rejected."""
        update = self._prepare(body, signature, self.ctx.clock(), confirmed)
        if isinstance(update, str):
            return update
        self.applied = update.applied
        self.installer.install(update.applied.serial, update.applied.entries, update.changed,
                               update.removed, update.received_at, ack=True)
        self._record_hold(update)
        return "updated"

    def release(self) -> int:
        """Put the held changes in force (the operator confirmed them); returns how many."""
        applied = self.applied
        if applied is None or not applied.held:
            self.hold.clear()
            return 0
        held, target = applied.held, applied.published
        entries = dict(target)
        changed = {rid for rid in held if rid in entries}
        removed = {rid for rid in held if rid not in entries and held[rid] is not None}
        self.applied = Applied(applied.serial, entries, applied.digest, applied.diffs)
        self.installer.install(applied.serial, entries, changed, removed, self.ctx.clock(),
                               ack=True)
        self.hold.clear()
        return len(held)

    def _record_hold(self, update: _Update) -> None:
        """Persist the held part (or clear it); count a newly held change as a guard refusal."""
        ctx, applied = self.ctx, update.applied
        if not applied.held:
            self.hold.clear()
            return
        held_id = update.held_id
        self.hold.hold_entries(held_id, int(held_id) if held_id.isdigit() else applied.serial,
                               applied.held, update.newly_held, update.current, update.limit,
                               update.saved)
        if update.newly_held:
            ctx.metrics.rejected.labels(ctx.name, "guard").inc()

    async def accept_async(self, body: bytes, signature: str | None) -> str:
        """accept() without stopping DNS: verifying, parsing, comparing and storing a big
        document, and building its overlay, run in a worker thread (pure work on data only this
        client touches: `busy` keeps confirmations away meanwhile); the swap and the ledger
        stay on the event loop, the ledger in short transactions (Ledger.record_async)."""
        self.busy = True
        try:
            update = await asyncio.to_thread(self._prepare, body, signature, self.ctx.clock(),
                                             False)
            if isinstance(update, str):
                return update
            self.applied = update.applied
            await self.installer.install_async(update.applied.serial, update.applied.entries,
                                               update.changed, update.removed,
                                               update.received_at)
            self._record_hold(update)
            return "updated"
        finally:
            self.busy = False

    def _prepare(self, body: bytes, signature: str | None, received_at: float,
                 confirmed: bool) -> _Update | str:
        """Everything before the swap: a result string (nothing to apply) or the update, with
        the document already stored; raises Rejected. Touches no event-loop state."""
        try:
            self.verifier.verify(body, signature)
        except FeedError as exc:
            if exc.reason != "unsigned" and looks_truncated(body):
                raise Rejected("truncated", "the document is cut short") from None
            raise Rejected(exc.reason, str(exc)) from None
        try:
            feed = parse_feed(body)
        except FeedError as exc:
            reason = "truncated" if looks_truncated(body) else "malformed"
            raise Rejected(reason, str(exc)) from None
        applied = self.applied
        if applied is not None:
            if feed.serial < applied.serial:
                raise Rejected("old_serial", f"serial {feed.serial} is older than the applied "
                                             f"{applied.serial}")
            if feed.serial == applied.serial:
                if hashlib.sha256(body).digest() == applied.digest:
                    self._saw_signed(feed)
                    return "unchanged"
                if not feed.is_diff and apply_diff({}, feed) == applied.published:
                    # the same entries re-signed (heartbeat): stored, so a restart knows it
                    self.chain.store_snapshot(body, signature or "")   # compacts the chain
                    applied.digest, applied.diffs = hashlib.sha256(body).digest(), 0
                    self._saw_signed(feed)
                    return "unchanged"
                raise Rejected("old_serial", f"serial {feed.serial} replayed with different "
                                             "content")
        if feed.is_diff and (applied is None or feed.since != applied.serial):
            log.info("feed %s: diff from serial %s does not follow ours (%d); asking for a full "
                     "snapshot", self.ctx.name, feed.since, self.serial)
            return "need_full"
        published = applied.published if applied else {}
        in_force = applied.entries if applied else {}
        target = apply_diff(published, feed)
        # Held changes the publisher has not touched since stay held; everything else that
        # differs from what is in force is a change of this document.
        held = {rid: kept for rid, kept in (applied.held if applied else {}).items()
                if target.get(rid) == published.get(rid)}
        changes = {rid for rid in set(target) | set(in_force)
                   if rid not in held and target.get(rid) != in_force.get(rid)}
        guarded = changes - set(feed.forced)       # forced by the publisher: never held
        limit = change_limit(len(in_force), self.ctx.guard)
        newly_held = 0
        if applied is not None and len(guarded) > limit and not confirmed:
            held.update((rid, in_force.get(rid)) for rid in guarded)
            newly_held = len(guarded)
        new = masked(target, held)
        held_id = (str(feed.serial) if newly_held or not self.hold.held_id
                   else self.hold.held_id)
        if held and held != (applied.held if applied else {}):   # unchanged: on disk already
            self.hold.save(held_id, int(held_id) if held_id.isdigit() else feed.serial, held,
                           len(in_force), limit)
        saved = bool(held)
        if feed.is_diff:
            self.chain.store_diff(feed.serial, body, signature or "")
        else:
            self.chain.store_snapshot(body, signature or "")
        changed = {k for k, v in new.items() if in_force.get(k) != v}
        removed = set(in_force) - set(new)
        self._saw_signed(feed)
        return _Update(Applied(feed.serial, new, hashlib.sha256(body).digest(),
                               applied.diffs + 1 if applied and feed.is_diff else 0,
                               target if held else None, held),
                       changed, removed, received_at, newly_held, limit, held_id, saved,
                       len(in_force))
