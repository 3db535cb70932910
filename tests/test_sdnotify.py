"""systemd's notify protocol, as a real SafeGate process speaks it to a real unix socket.

The test plays systemd's side: it binds $NOTIFY_SOCKET and reads what arrives. READY=1 only
once the gateway answers; WATCHDOG=1 at half of $WATCHDOG_USEC; RELOADING=1 then READY=1 on
SIGHUP; STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime.sdnotify import Notifier
from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.procs import SafeGateProcess, dns_query
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


# Linux's SO_TIMESTAMP (asm-generic; Python's socket module does not name it): the kernel
# stamps each datagram as it arrives, so a test process that reads late sees true spacing.
SO_TIMESTAMP = 29
TIMEVAL = struct.Struct("@ll")


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self.arrived: list[float] = []      # kernel arrival time of each message, seconds

    def drain(self) -> list[str]:
        """Every message so far, after reading what has arrived (never blocks)."""
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(TIMEVAL.size))
            except BlockingIOError:
                return self.messages
            self.messages.append(data.decode())
            stamps = [TIMEVAL.unpack(d[:TIMEVAL.size]) for level, kind, d in ancdata
                      if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP]
            assert stamps, "no SO_TIMESTAMP on the datagram"
            self.arrived.append(stamps[0][0] + stamps[0][1] / 1e6)

    def wait_for(self, text: str, timeout: float = 15.0) -> int:
        """Index of the first message containing `text` (reading as needed)."""
        def found() -> list[int]:
            return [i for i, m in enumerate(self.drain()) if text in m][:1]
        try:
            return wait_for(found, timeout=timeout, what=f"{text!r} from the gateway")[0]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; messages: {self.messages}") from None


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
    # The watchdog: pings keep coming, each one half of WATCHDOG_USEC (0.2 s) after the last
    # at the soonest (a lower bound: a slow machine only spaces them further apart).
    before = len(systemd.drain())

    def pings() -> list[float]:
        systemd.drain()
        return [t for m, t in zip(systemd.messages[before:], systemd.arrived[before:],
                                  strict=True)
                if m == "WATCHDOG=1"]
    wait_for(lambda: len(pings()) >= 4, what="four more WATCHDOG=1 pings")
    times = pings()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.19, f"pings closer than half of WATCHDOG_USEC: {gaps}"
    gw.reload()
    start = len(systemd.messages)
    reloading = systemd.wait_for("RELOADING=1")
    assert reloading >= start and "MONOTONIC_USEC=" in systemd.messages[reloading]
    wait_for(lambda: [m for m in systemd.drain()[reloading + 1:] if m.startswith("READY=1")],
             what="READY=1 after RELOADING=1")
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
