"""A province's copy of the national feed: fetched, verified, kept and re-served byte for byte.

A province publisher fetches the ministry's signed documents as a gateway does (long-poll
with `since`, a fresh full snapshot after each change and at least every `upstream.refresh`),
checks each signature with the ministry's public key before parsing it, and keeps the
verified bytes on disk (a restart, or a ministry outage, serves the last-known-good copy).
Schools fetch them from the province unchanged, signature header included, so they verify
the ministry's signature end to end: a province cannot add, drop or alter a national entry
without every school refusing the document.

Serving: a school at the mirrored serial gets 304 (long-poll: it waits for the next one); a
school whose serial is the `since` of a stored diff gets that diff (it reaches the next
step; the school asks again from there); anything else gets the snapshot, marked full.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.feedformat.document import FeedError, parse_feed, parse_time
from gateway.feedformat.signing import SIGNATURE_HEADER, Verifier
from gateway.publisher.tierconfig import UpstreamConfig
from gateway.publisher.watch import SerialWatcher
from gateway.util.atomic import atomic_write
from gateway.util.outbox import backoff

log = logging.getLogger("safegate.publisher.mirror")

# safegate_publisher_mirror_rejected_total{reason}
MIRROR_REASONS = ("http", "too_big", "unsigned", "bad_signature", "malformed", "old_serial")
LONG_POLL = 30
MIN_GAP = 1.0


class MirrorError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class NationalDoc:
    """One verified national document, as the ministry served it."""

    serial: int
    since: int | None
    body: bytes
    signature: str
    signed_at: float                  # its generated_at
    ids: frozenset[str]               # entry ids it lists (added, kept or removed)


class NationalMirror:
    """The verified national documents in force at this province, in memory and on disk."""

    def __init__(self, cfg: UpstreamConfig, max_diffs: int, max_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.max_diffs = max_diffs
        self.max_bytes = max_bytes
        self.clock = clock
        self.verifier = Verifier.from_files(list(cfg.public_keys))
        self.snapshot: NationalDoc | None = None
        self.diffs: dict[int, NationalDoc] = {}        # by since
        self.watcher = SerialWatcher(lambda: self.serial)
        self.rejected: dict[str, int] = dict.fromkeys(MIRROR_REASONS, 0)
        self._known: frozenset[str] = frozenset()
        # When this mirror last fetched a full snapshot (its own clock): refreshes are paced
        # by it, not by the document's age, since the ministry re-signs only every heartbeat
        # and a refresh shorter than that would otherwise ask again every second.
        self.last_full: float | None = None
        self.long_poll = LONG_POLL
        # Called with ids not mirrored before (since start): the province remembers them all.
        self.on_new_ids: Callable[[frozenset[str]], None] = lambda ids: None
        # Called with each document put in force (a diff stepping from the mirrored serial,
        # or a snapshot), and with the snapshot read from disk: the province's own record of
        # the national entries (gateway/publisher/national_view.py).
        self.on_installed: Callable[[NationalDoc], None] = lambda doc: None
        self._seen: set[str] = set()

    @property
    def serial(self) -> int:
        return self.snapshot.serial if self.snapshot else 0

    def document_age(self) -> float:
        """Seconds since the ministry signed the snapshot in force (inf: none yet)."""
        return math.inf if self.snapshot is None else max(0.0, self.clock()
                                                              - self.snapshot.signed_at)

    def known_ids(self) -> frozenset[str]:
        """National entry ids a school may ack: the snapshot's and those of the kept diffs
        (a removal is acked after it arrives, while its diff is still kept)."""
        return self._known

    # ------------------------------------------------------------------ documents

    def verify(self, body: bytes, signature: str | None) -> NationalDoc:
        """The checks a school makes, before a byte is kept; MirrorError otherwise."""
        try:
            self.verifier.verify(body, signature)
            feed = parse_feed(body)
        except FeedError as exc:
            raise MirrorError(exc.reason if exc.reason in MIRROR_REASONS else "malformed",
                              str(exc)) from None
        ids = frozenset(e.id for e in feed.entries) | frozenset(feed.removed)
        return NationalDoc(feed.serial, feed.since, body, signature or "",
                           parse_time(feed.generated_at).timestamp(), ids)

    def _path(self, doc: NationalDoc) -> Path:
        d = self.cfg.state_dir
        return d / "snapshot.doc" if doc.since is None else d / "diffs" / f"{doc.since}.doc"

    def keep(self, doc: NationalDoc) -> None:
        """Store a verified document and put it in force (on the event loop's thread)."""
        self.store(doc)
        self.install(doc)

    def store(self, doc: NationalDoc) -> None:
        """Write it to disk atomically (safe in a worker thread: touches no shared state)."""
        if self.snapshot is not None and doc.serial < self.serial:
            raise MirrorError("old_serial", f"serial {doc.serial} is older than the mirrored "
                                            f"{self.serial}")
        atomic_write(self._path(doc), [doc.signature.encode("ascii"), b"\n", doc.body])

    def install(self, doc: NationalDoc) -> None:
        """Serve it from now on, and wake the schools waiting for a new serial."""
        if doc.since is None:
            self.snapshot = doc
        else:
            self.diffs[doc.since] = doc
            while len(self.diffs) > self.max_diffs:
                oldest = min(self.diffs)
                self._path(self.diffs.pop(oldest)).unlink(missing_ok=True)
        self._remember()
        self._installed(doc)
        self.watcher.check()

    def _installed(self, doc: NationalDoc) -> None:
        try:
            self.on_installed(doc)
        except Exception:   # the record is a view: serving the schools must go on
            log.exception("recording national serial %d at the province failed", doc.serial)

    def _remember(self) -> None:
        self._known = frozenset().union(*(d.ids for d in self._docs()))
        new = self._known - self._seen
        if new:
            self.on_new_ids(new)
            self._seen |= new

    def _docs(self) -> list[NationalDoc]:
        return ([self.snapshot] if self.snapshot else []) + list(self.diffs.values())

    def load(self) -> None:
        """The kept documents, each verified again (a file edited on disk is dropped)."""
        paths = [self.cfg.state_dir / "snapshot.doc",
                 *sorted((self.cfg.state_dir / "diffs").glob("*.doc"))]
        for path in paths:
            try:
                sig, _, body = path.read_bytes().partition(b"\n")
                doc = self.verify(body, sig.decode("ascii", "replace"))
            except FileNotFoundError:
                continue
            except (OSError, MirrorError) as exc:
                log.error("%s: not a valid national document, ignored: %s", path, exc)
                continue
            if doc.since is None:
                self.snapshot = doc
            else:
                self.diffs[doc.since] = doc
        self._remember()
        if self.snapshot is not None:
            self._installed(self.snapshot)     # (its diffs are older steps: not replayed)
        self.watcher.check()
        if self.snapshot is not None:
            log.info("national feed: serial %d mirrored from disk (%d diffs)", self.serial,
                     len(self.diffs))

    def document_for(self, since: int | None) -> tuple[NationalDoc, bool] | None:
        """(document, is a full fallback) for a school at `since`; None before the first."""
        if self.snapshot is None:
            return None
        diff = self.diffs.get(since) if since is not None else None
        if diff is not None and diff.serial <= self.serial:
            return diff, False
        return self.snapshot, since is not None

    # ------------------------------------------------------------------ fetching

    async def _get(self, session: aiohttp.ClientSession, params: dict[str, str],
                   headers: dict[str, str], timeout: float) -> tuple[int, bytes, str | None]:
        try:
            async with session.get(self.cfg.url, params=params, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status == 304:
                    return 304, b"", None
                if resp.status != 200:
                    raise MirrorError("http", f"HTTP {resp.status} from {self.cfg.url}")
                chunks, size = [], 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise MirrorError("too_big", "a national document larger than "
                                          f"limits.upstream_document_bytes ({self.max_bytes})")
                    chunks.append(chunk)
                return 200, b"".join(chunks), resp.headers.get(SIGNATURE_HEADER)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise MirrorError("http", f"{type(exc).__name__}: {exc}") from None

    async def _fetch(self, session: aiohttp.ClientSession, since: int | None
                     ) -> NationalDoc | None:
        if since is None:
            params: dict[str, str] = {}
            headers = {"Cache-Control": "no-cache", "Pragma": "no-cache"}
        else:
            params = {"since": str(since), "wait": str(self.long_poll)}
            headers = {"If-None-Match": f'"{since}"'}
        status, body, sig = await self._get(session, params, headers, self.long_poll + 30)
        if status == 304:
            if since is None:
                raise MirrorError("http", "304 to an unconditional request")
            return None
        doc = await asyncio.to_thread(self.verify, body, sig)
        if since is None:
            self.last_full = self.clock()
        return doc

    async def _keep(self, doc: NationalDoc) -> None:
        await asyncio.to_thread(self.store, doc)
        self.install(doc)

    def needs_full(self) -> bool:
        """No snapshot yet, or none fetched for `upstream.refresh` seconds."""
        return (self.snapshot is None or self.last_full is None
                or self.clock() - self.last_full > self.cfg.refresh)

    async def poll_once(self, session: aiohttp.ClientSession) -> bool:
        """One step; True when a document was kept."""
        if self.needs_full():
            doc = await self._fetch(session, None)
            if doc is None or doc.since is not None:
                raise MirrorError("malformed", "a diff served for a full request")
            await self._keep(doc)
            return True
        current = self.serial
        doc = await self._fetch(session, current)
        if doc is None:
            return False
        if doc.since is not None and doc.since != current:
            doc = None            # not a step from ours: the full snapshot below
        if doc is not None:
            await self._keep(doc)
            if doc.since is None:
                return True
        # A new serial: the snapshot at it too, for schools that need a full document.
        full = await self._fetch(session, None)
        if full is None or full.since is not None:
            raise MirrorError("malformed", "a diff served for a full request")
        await self._keep(full)
        log.info("national feed: serial %d mirrored", self.serial)
        return True

    async def run(self, session: aiohttp.ClientSession,
                  rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        failures = 0
        while True:
            started = self.clock()
            try:
                await self.poll_once(session)
                failures = 0
                delay = MIN_GAP - (self.clock() - started)
            except MirrorError as exc:
                self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
                delay = backoff(failures, rng)
                failures += 1
                log.warning("national feed: %s (%s); serving serial %d, retrying in %.0fs",
                            exc, exc.reason, self.serial, delay)
            except Exception:   # a full disk, a bug: the mirror must outlive it, and say so
                delay = backoff(failures, rng)
                failures += 1
                log.exception("national feed: mirroring failed; serving serial %d, retrying "
                              "in %.0fs", self.serial, delay)
            if delay > 0:
                await asyncio.sleep(delay)
