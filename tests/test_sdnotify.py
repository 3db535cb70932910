"""systemd's notify protocol, as a real SafeGate process speaks it to a real unix socket.

The test plays systemd's side: it binds $NOTIFY_SOCKET and reads what arrives. READY=1 only
once the gateway answers; WATCHDOG=1 at half of $WATCHDOG_USEC; RELOADING=1 then READY=1 on
SIGHUP; STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime.sdnotify import Notifier
from tests.support import unbound as ub
from tests.support.procs import SafeGateProcess, dns_query
from tests.test_resolver_e2e import LISTS, LISTS_YAML, POLICY

pytestmark = pytest.mark.integration


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def wait_for(self, text: str, timeout: float = 15.0) -> int:
        """Index of the first message containing `text` (reading as needed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, m in enumerate(self.drain()):
                if text in m:
                    return i
        raise AssertionError(f"{text!r} never arrived; got {self.messages}")


def test_ready_watchdog_reload_and_stop(unbound: ub.UnboundServer, safegate_factory: Any,
                                        tmp_path: Path) -> None:
    systemd = FakeSystemd(tmp_path / "notify.sock")
    gw: SafeGateProcess = safegate_factory(
        upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
        lists_yaml=LISTS_YAML, env={"NOTIFY_SOCKET": str(systemd.path),
                                    "WATCHDOG_USEC": "400000"})
    ready = systemd.wait_for("READY=1")
    assert "STATUS=serving generation 1: 4 networks, 4 list entries" in systemd.messages[ready]
    # By the time READY=1 was sent, DNS answered (the fixture saw /readyz too).
    assert dns_query(ub.ALLOWED, port=gw.dns_port).rcode() == 0
    # The watchdog: a ping about every 0.2 s (half of WATCHDOG_USEC).
    before = len(systemd.drain())
    time.sleep(1.0)
    pings = [m for m in systemd.drain()[before:] if m == "WATCHDOG=1"]
    assert 3 <= len(pings) <= 8, systemd.messages
    gw.reload()
    start = len(systemd.messages)
    reloading = systemd.wait_for("RELOADING=1")
    assert reloading >= start and "MONOTONIC_USEC=" in systemd.messages[reloading]
    later = [m for m in systemd.drain()[reloading + 1:] if m.startswith("READY=1")]
    assert later, systemd.messages
    gw.stop()
    assert any(m == "STOPPING=1" for m in systemd.drain())


def test_outside_systemd_nothing_is_sent_and_the_watchdog_is_for_its_pid() -> None:
    assert not Notifier({}).enabled
    Notifier({}).ready()                                  # a no-op, no error
    n = Notifier({"NOTIFY_SOCKET": "@sd-abstract", "WATCHDOG_USEC": "30000000"})
    assert n.address == "\0sd-abstract" and n.watchdog_interval == 30.0
    other = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000",
                      "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval is None                # meant for another process
    Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"}).ready()   # systemd gone: no error
