"""systemd's notify protocol (sd_notify(3)): READY, RELOADING, STOPPING and the watchdog.

With `Type=notify` systemd counts the service as started only once SafeGate says READY=1
(lists loaded, every listener up), and with `WatchdogSec=` it restarts a process whose event
loop stops sending WATCHDOG=1 — a hung resolver on a Pi comes back on its own. Outside systemd
($NOTIFY_SOCKET unset) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to $NOTIFY_SOCKET (a unix datagram socket; `@` = abstract)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self.address)
                s.send("\n".join(fields).encode())
        except OSError as exc:   # systemd gone or not ours: never a reason to stop serving
            log.debug("sd_notify %s failed: %s", fields, exc)

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        monotonic_usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    async def watchdog(self, stop: asyncio.Event) -> None:
        """WATCHDOG=1 at half the configured interval, from the event loop itself: if the
        loop hangs, the pings stop and systemd restarts the service."""
        if not self.address or self.watchdog_interval is None:
            return
        while not stop.is_set():
            self.send("WATCHDOG=1")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.watchdog_interval / 2)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds from $WATCHDOG_USEC, if the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000
