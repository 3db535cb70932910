"""One feed's client: last-known-good first, then long-poll, verify, guard, persist, apply.

Order of trust for a signed feed: the signature over the exact bytes is checked before the
body is even parsed; a document is persisted only once it validated, and applied only after
the guard rails. Whatever fails, the rules already in force stay in force.

On disk (STATE_DIR/feeds/): NAME.json + NAME.sig is the last full signed snapshot and
NAME.d/SERIAL.json + .sig the signed diffs applied since, so a restart re-verifies every byte it
enforces; after MAX_DIFFS diffs the client asks for a full snapshot, which replaces the chain.
Plain list feeds (unauthenticated) keep NAME.list + NAME.meta.json.

Freshness of a signed feed: the publisher re-signs its documents at least every `heartbeat`
(a new generated_at, a signed field), and the client tracks the generated_at of the newest
document it verified and applied. Past max_age / 2 it stops asking conditionally (no `since`,
no If-None-Match, Cache-Control: no-cache) so a cache in between cannot answer for the
publisher; past max_age the feed is stale: metrics and the log say so, the last-known-good
stays enforced (blocks are never dropped for want of news), and last_success stops moving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from gateway.config.gateway import FeedConfig, FeedGuardConfig
from gateway.config.limits import FileLimits
from gateway.feedformat.document import (
    Feed,
    FeedEntry,
    FeedError,
    apply_diff,
    parse_feed,
    parse_time,
)
from gateway.feedformat.signing import SIGNATURE_HEADER, Verifier
from gateway.feeds.acks import AckTarget
from gateway.feeds.ledger import DNS_TYPES, RECORD_CHUNK, Ledger, LedgerEntry
from gateway.feeds.stats import FeedMetrics
from gateway.lists import SCOPE_BOTH, SCOPE_SELF, Action, Rule
from gateway.lists.overlay import Overlay
from gateway.lists.parsers import ParsedRule, parse
from gateway.util.outbox import backoff

log = logging.getLogger(__name__)

MAX_DIFFS = 32                 # stored diffs before a full snapshot is requested
MIN_GAP = 1.0                  # never more than one request per second


class OverlayTarget(Protocol):
    """What a feed needs from the gateway: put its rules in force atomically."""

    def set_overlay(self, name: str, overlay: Overlay | None) -> int: ...


class Rejected(Exception):
    """A response not applied; `reason` is a safegate_feed_rejected_total label."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


# ---------------------------------------------------------------------- guard rails


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


# ---------------------------------------------------------------------- files


def write_atomic(path: Path, data: bytes) -> None:
    """tmp + fsync + rename + fsync(dir): after a crash the file is the old or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def held_paths(state_dir: Path, name: str) -> tuple[Path, Path, Path, Path]:
    """(meta, body, signature, confirm marker) of a held update."""
    d = state_dir / "feeds"
    return (d / f"{name}.held.json", d / f"{name}.held.body", d / f"{name}.held.sig",
            d / f"{name}.confirm")


# ---------------------------------------------------------------------- the client


@dataclass
class Applied:
    """The document in force."""

    serial: int
    entries: dict[str, FeedEntry]
    # SHA-256 of the document as received (to tell a replay of it from new content); the
    # document itself is on disk, not kept in memory (25 MB for a 100k-entry snapshot).
    digest: bytes = b""
    diffs: int = 0                 # diffs stored since the snapshot


@dataclass
class _Update:
    """A verified document ready to go in force (FeedClient._prepare)."""

    applied: Applied
    changed: set[str]
    removed: set[str]
    received_at: float


@dataclass
class _Plan:
    """What an entry set becomes: its overlay and its ledger rows (FeedClient._plan)."""

    overlay: Overlay
    refused: dict[str, str]            # entry id -> the never_block name it covers
    newly_refused: dict[str, str]      # changed entries among them -> their value
    kinds: dict[str, int]
    by_category: dict[str, int]
    upserts: list[tuple[FeedEntry, str]]


@dataclass
class PlainApplied:
    digest: str
    rules: dict[bytes, tuple[Rule, ...]]
    etag: str = ""
    last_modified: str = ""


@dataclass
class FeedClient:
    """Fetches one feed and keeps the gateway's overlay for it current."""

    cfg: FeedConfig
    guard: FeedGuardConfig
    target: OverlayTarget
    session: aiohttp.ClientSession | None
    ledger: Ledger
    metrics: FeedMetrics
    state_dir: Path
    ack: AckTarget | None = None
    on_applied: Callable[[str, list[LedgerEntry]], None] | None = None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] | None = None
    rng: random.Random = field(default_factory=random.Random)
    applied: Applied | None = None
    plain: PlainApplied | None = None
    held_id: str = ""
    failures: int = 0
    want_full: bool = False
    busy: bool = False             # accept_async is applying an update (see check_confirmations)
    max_bytes: int = FileLimits.feed_bytes   # cfg.limits.files.feed_bytes
    signed_at: float | None = None   # generated_at of the newest verified document applied
    stale: bool = False              # logged state (the metric is computed at scrape time)

    def __post_init__(self) -> None:
        self.dir = self.state_dir / "feeds"
        self.verifier = Verifier.from_files(list(self.cfg.public_keys)) if self.cfg.signed \
            else None
        self.metrics.init_feed(self.cfg.name)
        if self.cfg.signed:
            self.metrics.init_signed(self.cfg.name, self.document_age, self.cfg.max_age)

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def serial(self) -> int:
        return self.applied.serial if self.applied else 0

    def document_age(self) -> float:
        """Seconds since the publisher signed the newest verified document (inf: none yet)."""
        if self.signed_at is None:
            return math.inf
        return max(0.0, self.clock() - self.signed_at)

    def fresh(self) -> bool:
        return self.document_age() <= self.cfg.max_age

    def _saw_signed(self, feed: Feed) -> None:
        """Note the signing time of a verified document that is (or matches) the one in force;
        the newest wins, so a replayed older copy cannot make the feed look younger."""
        t = parse_time(feed.generated_at).timestamp()
        if self.signed_at is None or t > self.signed_at:
            self.signed_at = t

    def check_fresh(self) -> bool:
        """Log when a signed feed turns stale or fresh again; returns fresh()."""
        fresh = self.fresh()
        if not fresh and not self.stale:
            age = self.document_age()
            log.error("feed %s: STALE: the newest verified document was signed %s ago (max_age "
                      "%.0fs); serial %d stays enforced, fetching without caches until the "
                      "publisher answers", self.name,
                      "never" if math.isinf(age) else f"{age:.0f}s", self.cfg.max_age,
                      self.serial)
        elif fresh and self.stale:
            log.warning("feed %s: fresh again (serial %d, signed %.0fs ago)", self.name,
                        self.serial, self.document_age())
        self.stale = not fresh
        return fresh

    # ------------------------------------------------------------------ start-up

    def load_local(self) -> bool:
        """Apply the last-known-good copy (re-verified) before any network access."""
        self._load_held()
        try:
            return self._load_signed() if self.cfg.signed else self._load_plain()
        except (OSError, ValueError) as exc:
            log.error("feed %s: cannot read the stored copy: %s", self.name, exc)
            return False

    def _verified(self, body_path: Path, *sig_paths: Path) -> Feed | None:
        """The stored document if one of the signature files verifies it."""
        assert self.verifier is not None
        try:
            body = body_path.read_bytes()
        except OSError:
            return None
        problem = "no signature file"
        for sig_path in sig_paths:
            try:
                self.verifier.verify(body, sig_path.read_text().strip())
                return parse_feed(body)
            except OSError:
                continue
            except FeedError as exc:
                problem = str(exc)
        log.error("feed %s: stored %s does not verify (%s); not used", self.name,
                  body_path.name, problem)
        return None

    def _load_signed(self) -> bool:
        # .sig.new: a crash between writing a snapshot and renaming its signature
        snap = self._verified(self.dir / f"{self.name}.json", self.dir / f"{self.name}.sig",
                              self.dir / f"{self.name}.sig.new")
        if snap is None or snap.is_diff:
            log.warning("feed %s: no valid last-known-good copy; nothing enforced until the "
                        "first download", self.name)
            return False
        entries = apply_diff({}, snap)
        serial, diffs = snap.serial, 0
        self._saw_signed(snap)
        for path in sorted((self.dir / f"{self.name}.d").glob("*.json")):
            diff = self._verified(path, path.with_suffix(".sig"))
            if diff is None:
                break
            if diff.serial <= serial:
                continue  # left over from before the snapshot replaced the chain
            if diff.since != serial:
                log.warning("feed %s: stored diff %s does not follow serial %d; stopping there",
                            self.name, path.name, serial)
                break
            entries = apply_diff(entries, diff)
            serial, diffs = diff.serial, diffs + 1
            self._saw_signed(diff)
        self.applied = Applied(serial, entries, b"", diffs)
        active = {r.entry_id for r in self.ledger.entries(self.name) if r.removed_at is None}
        self._install(serial, entries, entries.keys(), active - set(entries), self.clock(),
                      ack=False)
        log.info("feed %s: last-known-good serial %d applied from disk (%d entries)", self.name,
                 serial, len(entries))
        return True

    def _load_plain(self) -> bool:
        body_path, meta_path = self.dir / f"{self.name}.list", self.dir / f"{self.name}.meta.json"
        if not body_path.exists():
            log.warning("feed %s: no stored copy; nothing enforced until the first download",
                        self.name)
            return False
        body = body_path.read_bytes()
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        self._install_plain(body, str(meta.get("etag", "")), str(meta.get("last_modified", "")))
        log.info("feed %s: stored copy applied from disk (%d names)", self.name,
                 len(self.plain.rules) if self.plain else 0)
        return True

    # ------------------------------------------------------------------ polling

    async def run(self) -> None:
        """Poll forever: long-poll when the publisher holds requests, back off on failure."""
        sleep = self.sleep or _sleep
        while True:
            started = self.clock()
            try:
                status = await self.poll_once()
            except Rejected as exc:
                if self.cfg.signed:
                    self.check_fresh()
                self.failures += 1
                delay = backoff(self.failures - 1, self.rng)
                log.warning("feed %s: update rejected (%s): %s; keeping serial %d, retrying in "
                            "%.0fs", self.name, exc.reason, exc, self.serial, delay)
                await sleep(delay)
                continue
            self.failures = 0
            if self.cfg.signed:
                self.check_fresh()
            took = self.clock() - started
            if status == "need_full":
                delay = 0.0
            elif status == "held":
                delay = self.cfg.interval
            elif status == "unchanged" and (not self.cfg.signed or not self.cfg.long_poll
                                            or took < self.cfg.long_poll / 2):
                # The publisher answered at once: it does not hold requests, so poll on the
                # interval (the interval is the floor between polls without long-poll).
                delay = self.cfg.interval - took
            else:
                delay = MIN_GAP - took
            if delay > 0:
                await sleep(delay)

    async def poll_once(self) -> str:
        """One request: updated | unchanged | need_full | held; raises Rejected."""
        try:
            if self.cfg.signed:
                return await self._poll_signed()
            return await self._poll_plain()
        except Rejected as exc:
            self.metrics.rejected.labels(self.name, exc.reason).inc()
            raise

    async def _get(self, params: dict[str, str], headers: dict[str, str], timeout: float
                   ) -> tuple[int, bytes, Mapping[str, str]]:
        assert self.session is not None
        try:
            async with self.session.get(self.cfg.url, params=params, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status == 304:
                    return 304, b"", resp.headers
                if resp.status != 200:
                    raise Rejected("http", f"HTTP {resp.status} from {self.cfg.url}")
                limit = self.max_bytes
                if resp.content_length is not None and resp.content_length > limit:
                    raise Rejected("too_big", f"document of {resp.content_length} bytes is "
                                              f"larger than limits.files.feed_bytes ({limit})")
                chunks, size = [], 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > limit:
                        raise Rejected("too_big", f"document larger than "
                                                  f"limits.files.feed_bytes ({limit})")
                    chunks.append(chunk)
                body = b"".join(chunks)
                if resp.content_length is not None and resp.content_length != len(body):
                    raise Rejected("truncated", f"got {len(body)} of {resp.content_length} "
                                                "bytes")
                return 200, body, resp.headers
        except aiohttp.ClientPayloadError as exc:
            raise Rejected("truncated", f"incomplete body: {exc}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Rejected("http", f"{type(exc).__name__}: {exc}") from None

    async def _poll_signed(self) -> str:
        params: dict[str, str] = {}
        headers: dict[str, str] = {}
        applied = self.applied
        # Half-way to max_age: a conditional request could be answered by any cache on the
        # way, so ask for the whole document; a live publisher's copy is re-signed (heartbeat).
        refresh = applied is not None and self.document_age() > self.cfg.max_age / 2
        full = self.want_full or applied is None or applied.diffs >= MAX_DIFFS or refresh
        if applied is not None and not full:
            params["since"] = str(applied.serial)
            headers["If-None-Match"] = f'"{applied.serial}"'
            if self.cfg.long_poll:
                params["wait"] = str(int(self.cfg.long_poll))
        else:
            headers["Cache-Control"] = "no-cache"
            headers["Pragma"] = "no-cache"
        status, body, resp_headers = await self._get(params, headers, self.cfg.long_poll + 30)
        if status == 304:
            if full:
                raise Rejected("not_modified", "304 Not Modified to an unconditional request: "
                                               "something between this gateway and the "
                                               "publisher answers for it")
            if self.fresh():   # a 304 only vouches for a copy still within max_age
                self._success()
            return "unchanged"
        result = await self.accept_async(body, resp_headers.get(SIGNATURE_HEADER))
        if result == "need_full":
            self.want_full = True
        elif result in ("updated", "unchanged"):
            self.want_full = False
            if self.fresh():
                self._success()
            if refresh and self.document_age() > self.cfg.max_age / 2:
                raise Rejected("stale", f"the newest document served (serial {self.serial}) "
                                        f"was signed {self.document_age():.0f}s ago: is the "
                                        "publisher's heartbeat longer than max_age / 2, or is "
                                        "a cache replaying it?")
        return result

    def _success(self) -> None:
        self.metrics.last_success.labels(self.name).set(self.clock())

    # ------------------------------------------------------------------ signed documents

    def accept(self, body: bytes, signature: str | None, *, confirmed: bool = False) -> str:
        """Verify, check, persist and apply one document; raises Rejected."""
        update = self._prepare(body, signature, self.clock(), confirmed)
        if isinstance(update, str):
            return update
        self.applied = update.applied
        self._install(update.applied.serial, update.applied.entries, update.changed,
                      update.removed, update.received_at, ack=True)
        self._clear_held()
        return "updated"

    async def accept_async(self, body: bytes, signature: str | None) -> str:
        """accept() without stopping DNS: verifying, parsing, comparing and storing a big
        document, and building its overlay, run in a worker thread (pure work on data only this
        client touches: `busy` keeps confirmations away meanwhile); the swap and the ledger
        stay on the event loop, the ledger in short transactions (Ledger.record_async)."""
        self.busy = True
        try:
            update = await asyncio.to_thread(self._prepare, body, signature, self.clock(),
                                             False)
            if isinstance(update, str):
                return update
            self.applied = update.applied
            await self._install_async(update.applied.serial, update.applied.entries,
                                      update.changed, update.removed, update.received_at)
            self._clear_held()
            return "updated"
        finally:
            self.busy = False

    def _prepare(self, body: bytes, signature: str | None, received_at: float,
                 confirmed: bool) -> _Update | str:
        """Everything before the swap: a result string (nothing to apply) or the update, with
        the document already stored; raises Rejected. Touches no event-loop state."""
        assert self.verifier is not None
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
                if not feed.is_diff and apply_diff({}, feed) == applied.entries:
                    # the same entries re-signed (heartbeat): stored, so a restart knows it
                    self._store_snapshot(body, signature or "")   # compacts the diff chain
                    applied.digest, applied.diffs = hashlib.sha256(body).digest(), 0
                    self._saw_signed(feed)
                    return "unchanged"
                raise Rejected("old_serial", f"serial {feed.serial} replayed with different "
                                             "content")
        if feed.is_diff and (applied is None or feed.since != applied.serial):
            log.info("feed %s: diff from serial %s does not follow ours (%d); asking for a full "
                     "snapshot", self.name, feed.since, self.serial)
            return "need_full"
        current = applied.entries if applied else {}
        new = apply_diff(current, feed)
        changes = count_changes(current, new)
        limit = change_limit(len(current), self.guard)
        if applied is not None and changes > limit and not confirmed:
            self._hold(body, signature or "", str(feed.serial), feed.serial, changes,
                       len(current), limit)
            raise Rejected("guard", f"serial {feed.serial} changes {changes} entries (limit "
                                    f"{limit}); held until `safegate feeds confirm --feed "
                                    f"{self.name}`")
        if feed.is_diff:
            self._store_diff(feed.serial, body, signature or "")
        else:
            self._store_snapshot(body, signature or "")
        changed = {k for k, v in new.items() if current.get(k) != v}
        removed = set(current) - set(new)
        self._saw_signed(feed)
        return _Update(Applied(feed.serial, new, hashlib.sha256(body).digest(),
                               applied.diffs + 1 if applied and feed.is_diff else 0),
                       changed, removed, received_at)

    def _store_snapshot(self, body: bytes, sig: str) -> None:
        # The new signature is written aside first; start-up also tries NAME.sig.new, so a
        # crash at any point leaves a pair that verifies (the old one or the new one).
        write_atomic(self.dir / f"{self.name}.sig.new", sig.encode())
        write_atomic(self.dir / f"{self.name}.json", body)
        os.replace(self.dir / f"{self.name}.sig.new", self.dir / f"{self.name}.sig")
        for p in (self.dir / f"{self.name}.d").glob("*"):
            with contextlib.suppress(OSError):
                p.unlink()

    def _store_diff(self, serial: int, body: bytes, sig: str) -> None:
        d = self.dir / f"{self.name}.d"
        write_atomic(d / f"{serial:012d}.sig", sig.encode())
        write_atomic(d / f"{serial:012d}.json", body)

    def _install(self, serial: int, entries: Mapping[str, FeedEntry], changed: Iterable[str],
                 removed: Iterable[str], received_at: float, ack: bool) -> None:
        """Build the overlay from the whole entry set, swap it in, then record it."""
        plan = self._plan(entries, changed)
        applied_at = self._swap(plan)
        ids = self.ledger.record(self.name, serial, plan.upserts, sorted(removed), received_at,
                                 applied_at, self.ack, force_ack=ack)
        self._log_applied(serial, plan, ids)
        if self.on_applied is not None and ids:
            found = self.ledger.rows(self.name, ids)
            self.on_applied(self.name, [found[i] for i in ids
                                        if i in found and found[i].enforced_at_dns])

    async def _install_async(self, serial: int, entries: Mapping[str, FeedEntry],
                             changed: Iterable[str], removed: Iterable[str],
                             received_at: float) -> None:
        """_install for the polling path: same steps, never a long stop of the event loop."""
        plan = await asyncio.to_thread(self._plan, entries, changed)
        applied_at = self._swap(plan)
        ids = await self.ledger.record_async(self.name, serial, plan.upserts, sorted(removed),
                                             received_at, applied_at, self.ack, force_ack=True)
        self._log_applied(serial, plan, ids)
        if self.on_applied is not None:
            for i in range(0, len(ids), RECORD_CHUNK):   # in chunks too: 100k probes to queue
                part = ids[i:i + RECORD_CHUNK]
                found = self.ledger.rows(self.name, part)
                self.on_applied(self.name, [found[k] for k in part
                                            if k in found and found[k].enforced_at_dns])
                if i + RECORD_CHUNK < len(ids):
                    await asyncio.sleep(0)

    def _plan(self, entries: Mapping[str, FeedEntry], changed: Iterable[str]) -> _Plan:
        """The overlay and the ledger rows for an entry set (pure: safe in a worker thread)."""
        refused: dict[str, str] = {}
        rules: dict[bytes, list[Rule]] = defaultdict(list)
        kinds: dict[str, int] = defaultdict(int)
        by_category: dict[str, int] = defaultdict(int)
        for e in entries.values():
            if e.type in DNS_TYPES and (name := covered_name(e.value, self.guard.never_block)):
                refused[e.id] = name
                continue
            for c in e.categories:
                by_category[c] += 1
            if e.type not in DNS_TYPES:
                kinds["not-dns"] += 1
                continue
            if e.action != "block":
                kinds["warn"] += 1
                continue
            kinds["block"] += 1
            kinds["mandatory"] += e.mandatory
            scope = SCOPE_BOTH if e.type == "domain" else SCOPE_SELF
            rules[e.value.encode()].extend(
                Rule(c, scope, Action.DEFAULT, e.mandatory, e.id) for c in e.categories)
        changed = set(changed)
        upserts = [(e, "refused" if e.id in refused else
                    "applied" if e.type in DNS_TYPES and e.action == "block" else "received")
                   for e in (entries[i] for i in sorted(changed))]
        return _Plan(Overlay({k: tuple(v) for k, v in rules.items()}), refused,
                     {rid: entries[rid].value for rid in refused if rid in changed},
                     dict(kinds), dict(by_category), upserts)

    def _swap(self, plan: _Plan) -> float:
        """Put the plan's overlay in force; returns applied_at."""
        self.target.set_overlay(self.name, plan.overlay)
        applied_at = self.clock()
        for rid, value in sorted(plan.newly_refused.items()):
            self.metrics.refused.labels(self.name).inc()
            log.warning("feed %s: entry %s (%s) refused: it covers never_block name %s",
                        self.name, rid, value, plan.refused[rid])
        return applied_at

    def _log_applied(self, serial: int, plan: _Plan, ids: list[str]) -> None:
        kinds = plan.kinds
        self.metrics.serial.labels(self.name).set(serial)
        self.metrics.set_entries(self.name, plan.by_category)
        log.info("feed %s: serial %d in force: %d DNS block entries (%d mandatory), %d warn "
                 "(recorded, not blocked), %d url/ip/cidr/hash (kept for the HTTP proxy), %d "
                 "refused; %d changed", self.name, serial, kinds.get("block", 0),
                 kinds.get("mandatory", 0), kinds.get("warn", 0), kinds.get("not-dns", 0),
                 len(plan.refused), len(ids))

    # ------------------------------------------------------------------ plain lists

    async def _poll_plain(self) -> str:
        headers = {}
        if self.plain is not None:
            if self.plain.etag:
                headers["If-None-Match"] = self.plain.etag
            if self.plain.last_modified:
                headers["If-Modified-Since"] = self.plain.last_modified
        status, body, resp_headers = await self._get({}, headers, 60.0)
        if status == 304:
            self._success()
            return "unchanged"
        etag = resp_headers.get("ETag", "")
        modified = resp_headers.get("Last-Modified", "")
        result = self.accept_plain(body, etag, modified)
        if result != "held":
            self._success()
        return result

    def accept_plain(self, body: bytes, etag: str = "", last_modified: str = "", *,
                     confirmed: bool = False) -> str:
        digest = hashlib.sha256(body).hexdigest()
        if self.plain is not None and digest == self.plain.digest:
            self.plain.etag, self.plain.last_modified = etag, last_modified
            return "unchanged"
        rules = self._plain_rules(body)
        current = self.plain.rules if self.plain else {}
        changes = count_changes(current, rules)
        limit = change_limit(len(current), self.guard)
        if self.plain is not None and changes > limit and not confirmed:
            self._hold(body, json.dumps({"etag": etag, "last_modified": last_modified}), digest,
                       0, changes, len(current), limit)
            raise Rejected("guard", f"update changes {changes} names (limit {limit}); held "
                                    f"until `safegate feeds confirm --feed {self.name}`")
        write_atomic(self.dir / f"{self.name}.list", body)
        write_atomic(self.dir / f"{self.name}.meta.json", json.dumps(
            {"etag": etag, "last_modified": last_modified, "sha256": digest}).encode())
        self._install_plain(body, etag, last_modified)
        self._clear_held()
        return "updated"

    def _plain_rules(self, body: bytes) -> dict[bytes, tuple[Rule, ...]]:
        assert self.cfg.category is not None
        scopes: dict[tuple[bytes, Action], int] = defaultdict(int)
        for item in parse(self.cfg.type, body.decode("utf-8", "replace").splitlines()):
            if isinstance(item, ParsedRule):
                scopes[(item.key, item.action)] |= item.scope
        rules: dict[bytes, list[Rule]] = defaultdict(list)
        for (key, action), scope in scopes.items():
            rules[key].append(Rule(self.cfg.category, scope, action, self.cfg.mandatory))
        return {k: tuple(v) for k, v in rules.items()}

    def _install_plain(self, body: bytes, etag: str, last_modified: str) -> None:
        rules = self._plain_rules(body)
        refused = [k for k, combo in rules.items()
                   if any(r.action != Action.PASSTHRU for r in combo)
                   and covered_name(k.decode(), self.guard.never_block)]
        for key in refused:
            del rules[key]
            self.metrics.refused.labels(self.name).inc()
        if refused:
            log.warning("feed %s: %d names refused because they cover never_block names (e.g. "
                        "%s)", self.name, len(refused), refused[0].decode())
        self.target.set_overlay(self.name, Overlay(rules))
        self.plain = PlainApplied(hashlib.sha256(body).hexdigest(), rules, etag, last_modified)
        assert self.cfg.category is not None
        self.metrics.set_entries(self.name, {self.cfg.category: len(rules)})
        log.info("feed %s: %d names in force in category %s%s", self.name, len(rules),
                 self.cfg.category, " (mandatory)" if self.cfg.mandatory else "")

    # ------------------------------------------------------------------ held updates

    def _hold(self, body: bytes, sig: str, held_id: str, serial: int, changes: int,
              current: int, limit: int) -> None:
        meta_p, body_p, sig_p, _ = held_paths(self.state_dir, self.name)
        write_atomic(body_p, body)
        write_atomic(sig_p, sig.encode())
        write_atomic(meta_p, json.dumps({
            "feed": self.name, "id": held_id, "serial": serial, "changes": changes,
            "current": current, "limit": limit, "held_at": self.clock()}).encode())
        self.metrics.held.labels(self.name).set(1)
        if held_id != self.held_id:
            log.error("feed %s: update %s HELD: it changes %d entries of %d (limit %d); the "
                      "previous list stays in force. Check it, then run `safegate feeds confirm "
                      "-c gateway.yaml --feed %s`", self.name, held_id, changes, current, limit,
                      self.name)
        self.held_id = held_id

    def _load_held(self) -> None:
        meta_p = held_paths(self.state_dir, self.name)[0]
        with contextlib.suppress(OSError, ValueError):
            self.held_id = str(json.loads(meta_p.read_text())["id"])
            self.metrics.held.labels(self.name).set(1)

    def _clear_held(self) -> None:
        for p in held_paths(self.state_dir, self.name)[:3]:
            with contextlib.suppress(OSError):
                p.unlink()
        self.held_id = ""
        self.metrics.held.labels(self.name).set(0)

    def confirm(self, held_id: str) -> bool:
        """Apply the held update the operator confirmed (by its id: the serial or sha256)."""
        _, body_p, sig_p, _ = held_paths(self.state_dir, self.name)
        if not self.held_id or held_id != self.held_id:
            log.error("feed %s: confirmation for %r, but %s is held", self.name, held_id,
                      self.held_id or "nothing")
            return False
        try:
            body, sig = body_p.read_bytes(), sig_p.read_text()
            if self.cfg.signed:
                result = self.accept(body, sig, confirmed=True)
            else:
                meta = json.loads(sig or "{}")
                result = self.accept_plain(body, meta.get("etag", ""),
                                           meta.get("last_modified", ""), confirmed=True)
        except (OSError, ValueError) as exc:
            log.error("feed %s: cannot read the held update: %s", self.name, exc)
            return False
        except Rejected as exc:
            self.metrics.rejected.labels(self.name, exc.reason).inc()
            log.error("feed %s: the held update can no longer be applied (%s): %s", self.name,
                      exc.reason, exc)
            return False
        if result == "need_full":
            self._clear_held()
            self.want_full = True
            return False
        log.warning("feed %s: held update %s confirmed by the operator and applied", self.name,
                    held_id)
        self._clear_held()
        return True


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def status_of(state_dir: Path, name: str) -> dict[str, Any]:
    """What `safegate feeds status` shows from the files (works with the gateway stopped)."""
    d = state_dir / "feeds"
    out: dict[str, Any] = {"feed": name}
    with contextlib.suppress(OSError, ValueError):
        out["held"] = json.loads(held_paths(state_dir, name)[0].read_text())
    with contextlib.suppress(OSError, ValueError):
        out["snapshot_serial"] = json.loads((d / f"{name}.json").read_bytes())["serial"]
    diffs = sorted((d / f"{name}.d").glob("*.json"))
    if diffs:
        out["serial"] = int(diffs[-1].stem)
        out["diffs"] = len(diffs)
    elif "snapshot_serial" in out:
        out["serial"] = out["snapshot_serial"]
    with contextlib.suppress(OSError, ValueError):
        out["list_sha256"] = json.loads((d / f"{name}.meta.json").read_text())["sha256"]
    return out
