"""The bench's processes answer what the benchmark assumes (bench/slow_auth.py, bench/servers.py).

Workload (f) relies on a slow authority that answers flood names only after its delay and on
an upstream that delegates the flood zone to it; the unbound under test must forward .test
(which unbound otherwise answers itself) and block the list's names with their subdomains.
If any of these silently answered something else, the table would compare different work.
Real processes on loopback, queried with dnspython; timing is asserted only as "not before
the delay".
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from bench import workloads as wl
from bench.servers import start_slow_auth, start_unbound_server, start_upstream
from bench.slow_auth import SlowAuthority
from tests.support.unbound import UnboundServer

pytestmark = pytest.mark.integration

DELAY = 0.3


def _ask(port: int, name: str, timeout: float = 5.0) -> tuple[dns.message.Message, float]:
    q = dns.message.make_query(name, "A")
    t0 = time.monotonic()
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
    return r, time.monotonic() - t0


@pytest.fixture
def slow_auth(tmp_path: Path) -> Iterator[int]:
    proc, port = start_slow_auth(tmp_path, cpu=0, delay=DELAY)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_slow_authority_answers_nxdomain_with_soa_not_before_its_delay(slow_auth: int) -> None:
    r, took = _ask(slow_auth, f"r1.run.{wl.FLOOD_ZONE}")
    assert took >= DELAY
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.flags & dns.flags.AA
    assert not r.answer
    (soa,) = r.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name.to_text() == f"{wl.FLOOD_ZONE}."
    # another zone, or a name that only ends like the zone: refused, not claimed
    assert _ask(slow_auth, "x.other.test")[0].rcode() == dns.rcode.REFUSED
    assert _ask(slow_auth, f"x{wl.FLOOD_ZONE}")[0].rcode() == dns.rcode.REFUSED


def test_slow_authority_never_answers_junk_with_a_crash(slow_auth: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"\x12", ("127.0.0.1", slow_auth))  # too short: dropped
        s.sendto(struct.pack("!HHHHHH", 0x4242, 0, 1, 0, 0, 0) + b"\x05abc", ("127.0.0.1",
                                                                               slow_auth))
        reply, _ = s.recvfrom(512)
    assert reply[:2] == b"\x42\x42" and reply[3] & 0xF == dns.rcode.FORMERR
    assert _ask(slow_auth, f"still.{wl.FLOOD_ZONE}")[0].rcode() == dns.rcode.NXDOMAIN


def test_slow_authority_reply_is_built_from_the_query_bytes() -> None:
    auth = SlowAuthority(wl.FLOOD_ZONE)
    q = dns.message.make_query(f"ABC.{wl.FLOOD_ZONE}", "AAAA")
    q.id = 777
    r = dns.message.from_wire(auth.reply(q.to_wire()) or b"")
    assert r.id == 777 and r.rcode() == dns.rcode.NXDOMAIN
    assert r.question[0].name == q.question[0].name and r.question[0].rdtype == 28
    assert auth.reply(r.to_wire()) is None  # a response is never answered


@pytest.fixture
def upstream(tmp_path: Path, slow_auth: int) -> Iterator[UnboundServer]:
    up = start_upstream(
        tmp_path, wl.upstream_records([wl.cached_name(0), "popular.example.com"]), 0, slow_auth
    )
    try:
        yield up
    finally:
        up.stop()


def test_upstream_answers_allowed_names_and_delegates_the_flood_zone(
    upstream: UnboundServer,
) -> None:
    for name in (wl.cached_name(0), "popular.example.com"):
        r, _ = _ask(upstream.port, name)
        assert r.rcode() == dns.rcode.NOERROR and r.answer, name
    r, _ = _ask(upstream.port, wl.miss_name(1, "t"))
    assert r.rcode() == dns.rcode.NXDOMAIN
    r, took = _ask(upstream.port, wl.flood_name(1, "t"))
    assert took >= DELAY  # went to the slow authority, not answered by the static .test zone
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.authority[0].name.to_text() == f"{wl.FLOOD_ZONE}."


def test_unbound_under_test_blocks_the_list_and_forwards_the_rest(
    tmp_path: Path, upstream: UnboundServer
) -> None:
    zones = tmp_path / "zones.conf"
    wl.write_unbound_zones(zones, ["casino.example.com", wl.blocked_name(5)])
    srv = start_unbound_server(tmp_path, zones, upstream, 0, wl.cached_name(0))
    try:
        for name in ("casino.example.com", "www.casino.example.com", wl.blocked_name(5)):
            r, _ = _ask(srv.port, name)
            assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer, name
        for name in (wl.cached_name(0), "popular.example.com"):  # .test forwarded, not local
            r, _ = _ask(srv.port, name)
            assert r.rcode() == dns.rcode.NOERROR and r.answer, name
    finally:
        srv.stop()


def test_slow_authority_script_runs_standalone(tmp_path: Path) -> None:
    """`python bench/slow_auth.py --help` works outside the bench (documented entry point)."""
    script = Path(__file__).resolve().parents[1] / "bench" / "slow_auth.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                         text=True, timeout=30, check=True)
    assert "--delay" in out.stdout
