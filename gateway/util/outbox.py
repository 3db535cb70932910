"""One retrying outbox: a durable store of pending items and a sender that delivers them.

Used by the feed acks (gateway/feeds/acks.py) and the hotline's report forwarding
(gateway/hotline/forward.py). The store keeps items until delivery succeeded, so a restart or
an outage delays them, never loses them; the receiver dedups repeats. Retries back off 1 s
doubling to 5 min with +-20 % jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


def backoff(attempt: int, rng: random.Random, base: float = 1.0, cap: float = 300.0) -> float:
    """1 s doubling to 5 min, +-20 % so a fleet coming back online does not arrive in step."""
    return float(min(cap, base * 2 ** max(0, attempt)) * rng.uniform(0.8, 1.2))


class RetryingSender(ABC, Generic[T]):
    """Delivers a store's due items, oldest first, one at a time, until each succeeded.

    A subclass says where the items live (due, next_due, attempts, delivered, failed) and how
    one is delivered (deliver); this class owns the loop, the wake-up and the retry timing.
    """

    def __init__(self, listeners: list[Callable[[], None]], idle: float,
                 clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.idle = idle        # look at the store at least this often
        self.clock = clock
        self.rng = rng or random.Random()
        self.wake = asyncio.Event()
        listeners.append(self.wake.set)   # the store calls these when it adds an item

    @abstractmethod
    def due(self, now: float) -> Sequence[T]:
        """Items to deliver now (empty when nothing is due)."""

    @abstractmethod
    def next_due(self) -> float | None:
        """When the next stored item is due, None when the store is empty."""

    @abstractmethod
    def attempts(self, item: T) -> int:
        """Failed deliveries of `item` so far (sets the backoff)."""

    @abstractmethod
    async def deliver(self, item: T) -> str | None:
        """Try once: None on success, else what went wrong (for the log)."""

    @abstractmethod
    def delivered(self, item: T) -> None:
        """Remove `item` from the store: it arrived."""

    @abstractmethod
    def failed(self, item: T, next_attempt: float, delay: float, error: str) -> None:
        """Record a failed try; the item is due again at `next_attempt`."""

    def before_round(self) -> None:
        """Called before each look at the store (a gauge may be refreshed here)."""

    async def run(self) -> None:
        while True:
            self.before_round()
            now = self.clock()
            items = self.due(now)
            for item in items:
                await self.send(item)
            if items:
                continue
            due = self.next_due()
            await self._wait(self.idle if due is None else min(self.idle, max(0.0, due - now)))

    async def _wait(self, seconds: float) -> None:
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)

    async def send(self, item: T) -> bool:
        """Deliver one item; True (and the item gone from the store) on success."""
        error = await self.deliver(item)
        if error is None:
            self.delivered(item)
            return True
        delay = backoff(self.attempts(item), self.rng)
        self.failed(item, self.clock() + delay, delay, error)
        return False
