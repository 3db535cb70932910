"""The most blocked names per network over the last 24 hours, for the admin page: counts per
hour, no client, at most `top_names` names per network and hour.

The query path pays one integer increment: a blocked reply's memo entry counts its hits
(dns/memo.py, bumped in dns/chain.py), and `harvest` reads and clears those counts from the
event loop once a minute (one profile at a time, the view before the last swap too) and from
an entry the memo evicts. Blocked answers that get no memo entry (TCP, DoT, DoH, a network
with a query log) are added directly by the chain.

An hour's table is bounded with the space-saving rule: when it is full, a new name takes the
place of the least counted one with that count plus its own, so a name that keeps being asked
rises into the table (its count is then an upper bound) and a one-off never pushes out a
frequent one. `replaced` counts those takeovers.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway.dns import wire
from gateway.dns.stats import PROBE
from gateway.policy.decide import Profile

Hours = deque[tuple[int, dict[str, int]]]   # (hour number, counts), oldest first
HOUR = 3600
HOURS = 24
_BLOCKED = "blocked"


class BlockedTally:
    def __init__(self, top_names: int, clock: Callable[[], float] = time.time) -> None:
        self.top_names = top_names
        self.clock = clock
        self.replaced = 0
        self._hours: dict[str, Hours] = {}        # network -> names blocked per hour
        self._categories: dict[str, Hours] = {}   # network -> exact counts per category

    def __len__(self) -> int:
        """Names held, all networks and hours (safegate_admin_blocked_names)."""
        return sum(len(c) for hours in self._hours.values() for _, c in hours)

    def _now(self, table: dict[str, Hours], network: str) -> dict[str, int]:
        """This hour's counts of `network` in `table` (hours over 24 h old dropped)."""
        hour = int(self.clock() // HOUR)
        hours = table.setdefault(network, deque())
        if not hours or hours[-1][0] != hour:
            hours.append((hour, {}))
            while hours[0][0] <= hour - HOURS:
                hours.popleft()
        return hours[-1][1]

    def add(self, network: str, name: str, n: int = 1, category: str = "") -> None:
        if not self.top_names:
            return
        per_category = self._now(self._categories, network)
        per_category[category] = per_category.get(category, 0) + n
        counts = self._now(self._hours, network)
        if name in counts:
            counts[name] += n
        elif len(counts) < self.top_names:
            counts[name] = n
        else:
            low = min(counts, key=counts.__getitem__)
            counts[name] = counts.pop(low) + n
            self.replaced += 1

    def evicted(self, profile: Profile, key: bytes, memo: Any) -> None:
        """A memo entry is dropped (dns/chain.py): keep the hits it had not handed over."""
        if self.top_names and memo.entry is None and memo.hits and memo.stats_key[0] == _BLOCKED:
            self._take(profile.network, key, memo)

    def blocked(self, profile: Profile, key: bytes, protocol: str, category: str) -> None:
        """A blocked answer (dns/chain.py's full path): counted here when no memo entry will
        count it (not UDP, or no memo: limits.memory.reply_memo 0, a logged network)."""
        if self.top_names and (protocol != "udp" or not profile.reply_memo) \
                and protocol != PROBE:
            self.add(profile.network, key.decode("ascii", "replace"), 1, category)

    def harvest(self, profile: Profile) -> None:
        """Move one profile's blocked-memo hits into this hour's table."""
        network = profile.network
        for key, memo in list(profile.replies.items()):
            if memo.entry is None and memo.hits and memo.stats_key[0] == _BLOCKED:
                self._take(network, key, memo)

    def _take(self, network: str, key: bytes, memo: Any) -> None:
        q = wire.parse_query(b"\0\0" + key)
        if q is not None and q.key:
            self.add(network, q.key.decode("ascii", "replace"), memo.hits, memo.stats_key[1])
        memo.hits = 0

    def top(self, n: int) -> dict[str, list[tuple[str, int]]]:
        """Per network, its `n` most blocked names of the last 24 hours."""
        return {network: _ranked(self._day(hours))[:n] for network, hours in self._hours.items()}

    def by_category(self) -> dict[str, dict[str, int]]:
        """Per network, its blocked answers of the last 24 hours by category (exact)."""
        return {network: self._day(hours) for network, hours in self._categories.items()}

    def _day(self, hours: Hours) -> dict[str, int]:
        since = int(self.clock() // HOUR) - HOURS
        total: dict[str, int] = {}
        for hour, counts in hours:
            if hour > since:
                for key, c in counts.items():
                    total[key] = total.get(key, 0) + c
        return total


def _ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


# The resolver's tally until the admin page gives it a real one: counts nothing.
NO_TALLY = BlockedTally(0)
