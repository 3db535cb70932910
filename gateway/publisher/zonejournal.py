"""The RPZ zone the publisher serves by zone transfer, and a journal of its changes for IXFR.

Why an in-memory journal, not the store's added_serial/removed_serial: a removed entry id may
be reused (store.add_entries replaces its row), which erases what the old row blocked, and
several entries may share one name; an IXFR that deletes a record the secondary never had,
or misses one it has, leaves resolvers blocking the wrong names. Here each state is the exact
record set the publisher served, so a delta is the set difference of two served states.
After a restart, or for a serial no longer kept, a secondary gets the whole zone (RFC 1995
allows that answer to any IXFR).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.feedformat.document import FeedEntry
from gateway.feedformat.rpz import rpz_owners

log = logging.getLogger("safegate.publisher")


def soa_serial(serial: int) -> int:
    """The feed serial as the 32-bit SOA serial (RFC 1982 arithmetic wraps it)."""
    return serial % 2**32


class OwnerIndex:
    """Owner names (relative to the zone) of the mandatory entries' `CNAME .` records, kept
    up to date from the store's diffs (O(change), not a re-read of a 100k-entry feed on the
    event loop for each serial). Counted per owner: two entries may share a name, and a
    reused entry id replaces what its old row blocked."""

    def __init__(self, zone: str, entries: Iterable[FeedEntry] = ()) -> None:
        self.zone = zone
        self._by_id: dict[str, tuple[str, ...]] = {}
        self._counts: dict[str, int] = {}
        for e in entries:
            self._add(e)

    def apply(self, added: Iterable[FeedEntry], removed: Iterable[str]) -> None:
        """A store diff: entries added (or re-added under a used id) and ids removed."""
        for eid in removed:
            self._drop(eid)
        for e in added:
            self._drop(e.id)
            self._add(e)

    def owners(self) -> frozenset[str]:
        return frozenset(self._counts)

    def _add(self, e: FeedEntry) -> None:
        try:
            owners = rpz_owners(e, self.zone) if e.mandatory else ()
        except ValueError:   # validated when made; one odd value must not stop the zone
            log.warning("entry %s: %r has no RPZ form", e.id, e.value)
            return
        if not owners:
            return
        self._by_id[e.id] = owners
        for o in owners:
            self._counts[o] = self._counts.get(o, 0) + 1

    def _drop(self, eid: str) -> None:
        for o in self._by_id.pop(eid, ()):
            left = self._counts[o] - 1
            if left:
                self._counts[o] = left
            else:
                del self._counts[o]


@dataclass(frozen=True)
class Delta:
    """From SOA serial `old` to `new`: owners deleted, then owners added (RFC 1995 order)."""

    old: int
    new: int
    deleted: frozenset[str]
    added: frozenset[str]


class ZoneJournal:
    """The served zone (serial + owners) and the deltas that led to it, bounded by count
    (`max_deltas`, the feed's diff_history) and by changed records (`max_records`)."""

    def __init__(self, serial: int, owners: frozenset[str], max_deltas: int,
                 max_records: int) -> None:
        self.serial = soa_serial(serial)
        self.owners = owners
        self.max_deltas = max_deltas
        self.max_records = max_records
        self._deltas: deque[Delta] = deque()
        self._records = 0

    def update(self, serial: int, owners: frozenset[str]) -> bool:
        """Move to `serial`; False if it is the serial already served."""
        new = soa_serial(serial)
        if new == self.serial:
            return False
        delta = Delta(self.serial, new, self.owners - owners, owners - self.owners)
        self._deltas.append(delta)
        self._records += len(delta.deleted) + len(delta.added)
        while self._deltas and (len(self._deltas) > self.max_deltas
                                or self._records > self.max_records):
            old = self._deltas.popleft()
            self._records -= len(old.deleted) + len(old.added)
        self.serial, self.owners = new, owners
        return True

    def since(self, serial: int) -> Delta | None:
        """One condensed delta from `serial` to now, or None when `serial` is not kept (the
        secondary needs the whole zone). Call only with serial != self.serial."""
        chain = list(self._deltas)
        start = next((i for i, d in enumerate(chain) if d.old == serial), None)
        if start is None:
            return None
        deleted: set[str] = set()
        added: set[str] = set()
        for d in chain[start:]:
            for o in d.deleted:
                if o in added:
                    added.discard(o)
                else:
                    deleted.add(o)
            for o in d.added:
                if o in deleted:
                    deleted.discard(o)
                else:
                    added.add(o)
        return Delta(serial, self.serial, frozenset(deleted), frozenset(added))
