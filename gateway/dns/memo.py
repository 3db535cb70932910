"""Values of a profile's reply memo (policy/decide.py `Profile.replies`, dns/chain.py `handle`).

The memo maps a UDP query's bytes (all but the ID) to what the memo-hit path needs and nothing
more, as small objects: it holds up to limits.memory.reply_memo of them per profile.
"""

from __future__ import annotations

from gateway.dns.cache import Entry


class Memo:
    """A fixed reply (blocked, intercepted, local): its bytes after the ID, its stats key,
    and how often it was given since the blocked-name tally last read it (dns/tally.py)."""

    __slots__ = ("hits", "reply", "stats_key")
    entry: Entry | None = None   # class-level: not a cached answer (see Rendered)

    def __init__(self, reply: bytes, stats_key: tuple[str, ...]) -> None:
        self.reply = reply
        self.stats_key = stats_key
        self.hits = 1                # made for a query that got this reply


class Rendered(Memo):
    """A cached answer rendered from `entry` for one query (ID left out), valid while the clock
    is below `until`: the next whole second since the entry was stored, or its expiry. No
    parsed query is kept: counting TTLs down changes only the TTL bytes, never the length."""

    __slots__ = ("base", "entry", "until")

    def __init__(self, entry: Entry, reply: bytes, base: int, now: float,
                 stats_key: tuple[str, ...] = ()) -> None:
        super().__init__(reply, stats_key)
        self.entry = entry
        self.base = base            # where the records start in `reply`; -1: truncated (none)
        self.until = self._until(now)

    def _until(self, now: float) -> float:
        entry = self.entry
        assert entry is not None
        expires = entry.expires
        if self.base < 0:
            return expires
        stored = entry.stored
        return min(stored + int(now - stored) + 1, expires)

    def refresh(self, now: float) -> bool:
        """Count TTLs down to `now`; False once the entry has expired (the slow path renews)."""
        entry = self.entry
        assert entry is not None
        if entry.expires <= now:
            return False
        if self.base >= 0:
            buf = bytearray(self.reply)
            entry.patch(buf, self.base, now)
            self.reply = bytes(buf)
        self.until = self._until(now)
        return True
