"""One task that notices new serials (the CLI writes from another process) and wakes waiters.

Why polling: SQLite has no cross-process notification, and reading one row every 100 ms costs
microseconds, while a per-request poll would cost one query per waiting gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger("safegate.publisher")


class SerialWatcher:
    """Holds the latest serial; `wait_beyond` returns once it passes a threshold."""

    def __init__(self, read_serial: Callable[[], int], interval: float = 0.1) -> None:
        self.read_serial = read_serial
        self.interval = interval
        self.serial = read_serial()
        self.closing = False
        self._changed = asyncio.Event()

    def check(self) -> int:
        """Re-read the serial now (also called right after an in-process write)."""
        serial = self.read_serial()
        if serial != self.serial:
            self.serial = serial
            self._wake()
        return serial

    def _wake(self) -> None:
        # A fresh event per change: waiters that arrive later wait for the next one.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        """Release every waiter (shutdown must not wait out 60-second long polls)."""
        self.closing = True
        self._wake()

    async def run(self) -> None:
        while not self.closing:
            try:
                self.check()
            except Exception:  # a locked or busy database must not end the watcher
                log.exception("reading the feed serial failed")
            await asyncio.sleep(self.interval)

    async def wait_beyond(self, threshold: int, timeout: float) -> bool:
        """True once the serial is above `threshold`; False after `timeout` or on shutdown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.serial <= threshold and not self.closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.serial > threshold
