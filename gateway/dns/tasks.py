"""Keeps references to the DNS transports' background tasks, so they can be cancelled; and the
running loop, looked up once (LoopRef)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class LoopRef:
    """The running loop, looked up once and kept while it is open.

    On Python 3.11 every `asyncio.get_running_loop()` makes a getpid() system call (a fork
    check); a cache miss called it three times (7 % of a gateway's samples under a miss-heavy
    stream). A loop that has been closed (a new one in tests, or after a restart) is looked up
    again, so an object never schedules on a dead loop.
    """

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop


class Tasks:
    """Keeps references to background tasks (a bare create_task may be garbage-collected)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = LoopRef()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self._loop.get().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
