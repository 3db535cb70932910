"""Today's game-time counters: active minutes per client address and quota (docs/quotas.md).

A minute counts when the client looked up a name of a quota's categories during it: distinct
minute buckets, not queries, so a page that asks for 40 names in one minute costs one minute.
Everything is dropped at local midnight in the gateway's timezone; the table is saved to
state_dir (atomic write: periodically and at shutdown) so a restart does not hand out a fresh
day, and read back only if it is today's. No counter ever reaches the metrics.

Bounded: at most limits.quota.clients addresses. A new address past that gets no counter and
`charge` answers FULL: the caller blocks the category (fail closed; a child loses game time
rather than gaining unlimited time).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from gateway.policy.decide import Profile, Verdict, quota_block
from gateway.policy.quotas import Quota
from gateway.util.atomic import atomic_write

log = logging.getLogger(__name__)

STATE_FILE = "quotas.json"
OK = 0          # counted (or this minute was already counted): allowed
USED_UP = 1     # no minute left today: blocked
FULL = 2        # the table is full and this address has no counter: blocked (fail closed)
_VERSION = 1


class QuotaObserver(Protocol):
    """Metrics without client labels (runtime/metrics.py implements it)."""

    def exhausted(self, tier: str) -> None: ...   # a client's quota ran out (once a day)
    def untracked(self, tier: str) -> None: ...   # a lookup refused: the table was full


class QuotaTable:
    """address -> quota key -> [minutes used, last minute counted, exhausted (0/1)]."""

    def __init__(self, tz: ZoneInfo, limit: int, observer: QuotaObserver | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.tz = tz
        self.limit = limit
        self.observer = observer
        self.clock = clock                 # wall time (epoch seconds); tests pass a fake one
        self.clients: dict[str, dict[str, list[int]]] = {}
        self.day = dt.date.min
        self._reset_at = 0.0               # the next local midnight, epoch seconds
        self.dirty = False

    def __len__(self) -> int:
        return len(self.clients)

    def _roll(self, now: float) -> None:
        """A new local day: every counter is dropped."""
        local = dt.datetime.fromtimestamp(now, self.tz)
        self.day = local.date()
        nxt = dt.datetime.combine(self.day + dt.timedelta(days=1), dt.time(), tzinfo=self.tz)
        self._reset_at = nxt.timestamp()
        if self.clients:
            self.clients = {}
            self.dirty = True

    def expire(self) -> None:
        """Drop yesterday's counters now if no lookup has done it yet (the keeper's timer)."""
        now = self.clock()
        if now >= self._reset_at:
            self._roll(now)

    def charge(self, address: str, quota: Quota, tier: str) -> int:
        """Count this minute for `address` under `quota`: OK, USED_UP or FULL."""
        now = self.clock()
        if now >= self._reset_at:
            self._roll(now)
        minute = int(now // 60)   # every zone's offset is whole minutes: local minutes too
        slots = self.clients.get(address)
        if slots is None:
            if len(self.clients) >= self.limit:
                if self.observer is not None:
                    self.observer.untracked(tier)
                return FULL
            slots = self.clients[address] = {}
        slot = slots.get(quota.key)
        if slot is None:
            slots[quota.key] = [1, minute, 0]
            self.dirty = True
            return OK
        if slot[1] == minute and not slot[2]:
            return OK          # this minute is already paid for
        if slot[0] < quota.minutes:
            slot[0] += 1
            slot[1] = minute
            self.dirty = True
            return OK
        if not slot[2]:
            slot[2] = 1
            self.dirty = True
            if self.observer is not None:
                self.observer.exhausted(tier)
        return USED_UP

    def peek(self, address: str, quota: Quota) -> tuple[int, int]:
        """(status, minutes used) without counting: the block page and `explain` ask."""
        now = self.clock()
        if now >= self._reset_at:
            self._roll(now)
        slots = self.clients.get(address)
        if slots is None:
            return (FULL if len(self.clients) >= self.limit else OK), 0
        slot = slots.get(quota.key)
        if slot is None:
            return OK, 0
        used_up = slot[2] or (slot[0] >= quota.minutes and slot[1] != int(now // 60))
        return (USED_UP if used_up else OK), slot[0]

    # -- persistence

    def dump(self) -> bytes:
        """Today's counters as JSON (what `save` writes)."""
        return json.dumps({"version": _VERSION, "day": self.day.isoformat(),
                           "clients": self.clients}, separators=(",", ":")).encode()

    def save(self, state_dir: Path) -> None:
        save_dump(state_dir, self.dump())
        self.dirty = False

    def load(self, state_dir: Path) -> None:
        """Today's counters from a previous run; another day's, or a broken file, are dropped
        (logged): the worst case is a fresh day, never a crash at start."""
        now = self.clock()
        self._roll(now)
        path = state_dir / STATE_FILE
        try:
            with open(path, "rb") as f:
                raw = f.read(self.limit * 512 + 4096)   # ours, but bounded all the same
            doc: Any = json.loads(raw)
            if doc.get("version") != _VERSION or doc.get("day") != self.day.isoformat():
                return
            clients = doc["clients"]
            kept: dict[str, dict[str, list[int]]] = {}
            for address, slots in clients.items():
                if len(kept) >= self.limit:
                    break
                kept[str(address)] = {str(k): [int(v[0]), int(v[1]), int(v[2])]
                                      for k, v in slots.items()}
            self.clients = kept
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            log.warning("quotas: ignoring %s (%s): today's counters start again", path, exc)


def charged(table: QuotaTable | None, profile: Profile, verdict: Verdict, address: str,
            *, peek: bool = False) -> Verdict:
    """A quota-limited name's verdict for `address` (reason "quota", not blocked): counted
    (unless `peek`) and turned into a block once the day's time is used up or cannot be
    counted. No table (explain before any save): as it is."""
    if table is None:
        return verdict
    quota = profile.quotas[verdict.category]
    status = table.peek(address, quota)[0] if peek else table.charge(address, quota,
                                                                     profile.tier)
    return verdict if status == OK else quota_block(profile, verdict, status == FULL)


def save_dump(state_dir: Path, data: bytes) -> None:
    """Write `dump()`'s bytes to state_dir (0600: addresses are personal data)."""
    atomic_write(state_dir / STATE_FILE, data, mode=0o600)
