"""The one way tests wait for an event: poll a predicate until it holds or a bound passes.

The timeout is a generous upper bound for a slow, loaded machine, never a measurement: the
wait returns as soon as the predicate holds. When it does not hold in time the AssertionError
says what was awaited and the last value the predicate returned (or the last exception it
raised, for the exception types the caller chose to retry on), so a failure reads like a
failed assert rather than a bare timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

_NOTHING = object()


def _failure(what: str, timeout: float, last: object) -> AssertionError:
    seen = "no value (never called)" if last is _NOTHING else repr(last)
    return AssertionError(f"not within {timeout} s: {what}; last value seen: {seen}")


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, *, interval: float = 0.05,
             what: str = "condition",
             ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Return the predicate's first truthy value; raise AssertionError after `timeout` s.

    Exceptions of the types in `ignore` count as "not yet" (e.g. a port that is not
    listening yet); any other exception propagates at once.
    """
    deadline = time.monotonic() + timeout
    last: object = _NOTHING
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise _failure(what, timeout, last)
        time.sleep(interval)


async def async_wait_for(predicate: Callable[[], T | Awaitable[T]], timeout: float = 20.0,
                         *, interval: float = 0.02, what: str = "condition",
                         ignore: tuple[type[BaseException], ...] = ()) -> T:
    """The asyncio twin of wait_for: the predicate may be sync or return an awaitable,
    and the loop keeps running between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = _NOTHING
    while True:
        try:
            got = predicate()
            value: T = await got if isinstance(got, Awaitable) else got  # type: ignore[assignment]
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if loop.time() >= deadline:
            raise _failure(what, timeout, last)
        await asyncio.sleep(interval)
