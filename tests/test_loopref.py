"""dns/tasks.py LoopRef: the running loop looked up once, and again once it is closed."""

from __future__ import annotations

import asyncio

from gateway.dns.tasks import LoopRef, Tasks


def test_the_loop_is_looked_up_once_and_again_after_it_closed() -> None:
    ref = LoopRef()
    seen: list[asyncio.AbstractEventLoop] = []

    async def ask() -> None:
        loop = asyncio.get_running_loop()
        assert ref.get() is loop and ref.get() is loop
        seen.append(loop)

    asyncio.run(ask())
    asyncio.run(ask())   # a new loop: the closed one is never handed out
    assert seen[0] is not seen[1]


def test_tasks_spawned_on_a_second_loop_run_there() -> None:
    tasks = Tasks()

    async def spawn_one() -> int:
        async def value() -> int:
            return 7
        return await tasks.spawn(value())

    assert asyncio.run(spawn_one()) == 7
    assert asyncio.run(spawn_one()) == 7
