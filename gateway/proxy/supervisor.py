"""`safegate run` with proxy.enabled: the proxy as a child process, restarted if it dies.

A separate process (not a task) because mitmproxy keeps global state and its own event loop
habits; the child stops with the gateway (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

RESTART_MIN, RESTART_MAX = 1.0, 30.0     # back-off between restarts of a crashing child
HEALTHY_AFTER = 60.0                     # a child up this long resets the back-off
STOP_GRACE = 10.0


def proxy_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "gateway", "proxy", "-c", str(config_path)]


class ProxySupervisor:
    """Starts the child, restarts it when it exits, stops it on request."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        delay = RESTART_MIN
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            started = loop.time()
            self.proc = await asyncio.create_subprocess_exec(*self.command,
                                                             stdin=asyncio.subprocess.DEVNULL)
            log.info("proxy started (pid %d)", self.proc.pid)
            code = await self.proc.wait()
            if self._stop.is_set():
                return
            if loop.time() - started > HEALTHY_AFTER:
                delay = RESTART_MIN
            log.error("proxy exited with %s; restarting in %.0f s", code, delay)
            self.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, RESTART_MAX)

    async def stop(self) -> None:
        self._stop.set()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
