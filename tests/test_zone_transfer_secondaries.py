"""Real secondaries of the publisher's RPZ zone (issue #13, item 3): Debian's unbound and BIND
transfer it, are sent a NOTIFY on each serial, and block an added name / resolve a removed
one within the issue's 5 s, by IXFR (the publisher's metrics say which)."""

from __future__ import annotations

from pathlib import Path

from tests.support.procs import free_port
from tests.support.unbound import BLOCKED_TARGET_A, UnboundServer
from tests.support.wait import wait_for
from tests.support.xfr import (
    XfrPublisher,
    answer_of,
    start_named,
    start_pdns_recursor,
    start_unbound_secondary,
    start_xfr_publisher,
    wait_answer,
)

NAME = "malware.example"      # resolves upstream (a redirect zone of the test unbound)
OTHER = "phish.example"


def _ixfr_ok(x: XfrPublisher) -> float:
    return x.metric("safegate_publisher_xfr_total", type="ixfr", result="ok")


def _add_then_remove(x: XfrPublisher, port: int, notified: bool = True) -> None:
    """add -> NXDOMAIN at the secondary, remove -> the upstream's address, each by IXFR."""
    assert answer_of(port, NAME) == ("NOERROR", [BLOCKED_TARGET_A])
    before = _ixfr_ok(x)
    full_before = x.metric("safegate_publisher_xfr_total", type="axfr")
    x.add(NAME, "ORDER-1")
    wait_answer(port, NAME, "NXDOMAIN")
    assert answer_of(port, "sub." + NAME)[0] == "NXDOMAIN"       # `domain`: subdomains too
    assert answer_of(port, OTHER) == ("NOERROR", [BLOCKED_TARGET_A])
    wait_for(lambda: _ixfr_ok(x) > before, timeout=5, what="an IXFR served the addition")
    mid = _ixfr_ok(x)
    x.remove("ORDER-1")
    wait_answer(port, NAME, "NOERROR")
    assert answer_of(port, NAME) == ("NOERROR", [BLOCKED_TARGET_A])
    wait_for(lambda: _ixfr_ok(x) > mid, timeout=5, what="an IXFR served the removal")
    assert x.metric("safegate_publisher_xfr_total", type="axfr") == full_before
    assert x.metric("safegate_publisher_xfr_total", type="ixfr", result="full") == 0
    if notified:
        assert x.metric("safegate_publisher_notify_total", result="acked") >= 2


def test_unbound_secondary_follows_adds_and_removes(tmp_path: Path,
                                                    unbound: UnboundServer) -> None:
    port = free_port(v6=False)
    x = start_xfr_publisher(tmp_path / "pub", notify=[f"127.0.0.1:{port}"])
    with x.pub, start_unbound_secondary(tmp_path, port, x.port, unbound.port) as secondary:
        # unbound loads the (empty) zone at start: an AXFR or IXFR, before any change
        wait_for(lambda: x.metric("safegate_publisher_xfr_total", result="ok")
                 + x.metric("safegate_publisher_xfr_total", result="full") > 0,
                 timeout=10, what="unbound's first transfer")
        _add_then_remove(x, secondary.port)


def test_bind_secondary_with_tsig_follows_adds_and_removes(tmp_path: Path,
                                                           unbound: UnboundServer) -> None:
    port = free_port(v6=False)
    x = start_xfr_publisher(tmp_path / "pub", notify=[f"127.0.0.1:{port}"], tsig=True)
    with x.pub, start_named(tmp_path, x.port, unbound.port, port=port) as named:
        wait_for(lambda: x.metric("safegate_publisher_xfr_total", type="axfr", result="ok")
                 > 0, timeout=20, what="named's first (TSIG-signed) AXFR")
        assert x.metric("safegate_publisher_xfr_total", result="notauth") == 0
        _add_then_remove(x, named.port)


def test_powerdns_recursor_secondary_follows_adds_and_removes(tmp_path: Path,
                                                              unbound: UnboundServer) -> None:
    """PowerDNS Recursor 4.8 ignores NOTIFY for RPZ: it checks the SOA every `refresh`
    seconds (1 here) and transfers the change by IXFR, TSIG-signed."""
    x = start_xfr_publisher(tmp_path / "pub", tsig=True)
    with x.pub, start_pdns_recursor(tmp_path, x.port, unbound.port) as recursor:
        _add_then_remove(x, recursor.port, notified=False)
        assert x.metric("safegate_publisher_xfr_total", result="notauth") == 0
        assert x.metric("safegate_publisher_xfr_total", type="ixfr", result="refused") == 0
