"""Fill every bounded structure of a real gateway with a 1M-name list, and read its memory.

Shared by tests/test_memory_bound.py (the < 80 MB pin) and bench/memory_profile.py (the
per-structure table in docs/memory.md). The workloads are the ones issue #12 names, each long
enough to fill what it can fill with default limits (reply memo 16k and verdict memo 50k per
profile, answer cache 20k entries, blocked bodies 4k):

  blocked  uniform draws from the whole list (memos)
  misses   unique names unbound answers NXDOMAIN (answer cache, memos)
  cached   more distinct names with records than the cache holds (answer cache, memos)
  qtypes   blocked names x qtypes x EDNS/DO (blocked bodies, reply memo)

Queries go out in batches over one UDP socket, every reply read before the next batch (no
timing involved: loopback drops nothing within a batch, and a lost reply only times out).
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support.procs import write_gateway_config

CATEGORY = "adult"
CACHE_SIZE = 20_000          # dns.cache.size's default (config/dns.py)
VERDICT_MEMO = 50_000        # limits.memory.verdict_memo's default
BLOCKED_BODIES = 4_096       # limits.memory.blocked_bodies's default

POLICY = f"""\
tiers:
  isp:
    description: blocks the 1M-name list
    block: [{CATEGORY}]
    answer: nxdomain
networks:
  - name: loopback
    cidrs: [127.0.0.0/8]
    tier: isp
"""


def blocked_name(i: int) -> str:
    """bench/dns_compare.py's list: 1,000 parent zones of 1,000 names each."""
    return f"b{i}.blk{i % 1000}.test"


def cached_name(i: int) -> str:
    return f"c{i}.cached.test"


def write_list(path: Path, names: int) -> None:
    with path.open("w") as out:
        for start in range(0, names, 100_000):
            out.write("".join(f"{blocked_name(i)}\n" for i in range(start,
                                                                   min(names, start + 100_000))))


def upstream_records(n: int) -> list[str]:
    return [f"{cached_name(i)}. 3600 IN A 192.0.2.{i % 250 + 1}" for i in range(n)]


def gateway_config(directory: Path, list_path: Path, upstream_port: int,
                   extra: dict[str, object] | None = None) -> Path:
    """Default settings except RRL (one client sending ~10k QPS would be limited, rightly)."""
    config = write_gateway_config(
        directory, upstream_port=upstream_port, policies={"isp.yaml": POLICY},
        lists_yaml=(f"categories:\n  {CATEGORY}:\n    - path: {list_path.resolve()}\n"
                    "      format: domains\n"),
        extra={"limits": {"rrl": {"enabled": False}}, **(extra or {})}, ipv6=False)
    return config


def query(qid: int, name: str, qtype: int = 1, variant: int = 1) -> bytes:
    """0: no EDNS, 1: EDNS, 2: EDNS with DO (what a validating stub sends)."""
    qname = b"".join(bytes((len(x),)) + x.encode() for x in name.split(".")) + b"\x00"
    packet = struct.pack(">HHHHHH", qid & 0xFFFF, 0x0100, 1, 0, 0, 1 if variant else 0) \
        + qname + struct.pack(">HH", qtype, 1)
    if variant:
        packet += b"\x00" + struct.pack(">HHIH", 41, 1232, 0x8000 if variant == 2 else 0, 0)
    return packet


def send(port: int, packets: Iterator[bytes], batch: int = 100, timeout: float = 5.0) -> int:
    """Send every packet, `batch` at a time, reading each batch's replies; returns replies."""
    got = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        chunk: list[bytes] = []
        for packet in packets:
            chunk.append(packet)
            if len(chunk) == batch:
                got += _exchange(s, chunk)
                chunk = []
        got += _exchange(s, chunk)
    return got


def _exchange(s: socket.socket, chunk: list[bytes]) -> int:
    for packet in chunk:
        s.send(packet)
    got = 0
    for _ in chunk:
        try:
            s.recv(4096)
        except TimeoutError:
            break
        got += 1
    return got


def blocked_load(names: int, count: int, seed: int = 1) -> Iterator[bytes]:
    """Uniform draws from the whole list: nearly every query a memo miss."""
    rng = random.Random(seed)
    for i in range(count):
        yield query(i, blocked_name(rng.randrange(names)))


def miss_load(count: int, tag: str) -> Iterator[bytes]:
    """Unique names under .test that unbound answers NXDOMAIN: each a cache insert."""
    for i in range(count):
        yield query(i, f"m{i}.{tag}.miss.test")


def cached_load(distinct: int, rounds: int = 2) -> Iterator[bytes]:
    """Each of `distinct` names with an A record, `rounds` times (upstream, then cache)."""
    for r in range(rounds):
        for i in range(distinct):
            yield query(i + r, cached_name(i), 1, i % 3)


def qtype_load(names: int, count: int) -> Iterator[bytes]:
    """Blocked names x qtypes x EDNS/DO: every blocked-body variant and many memo keys."""
    for i in range(count):
        yield query(i, blocked_name(i % 97 * 10_007 % names), 1 + i % 4000, i % 3)


WORKLOADS: dict[str, Callable[[int, str], Iterator[bytes]]] = {
    "blocked": lambda names, tag: blocked_load(names, 80_000),
    "misses": lambda names, tag: miss_load(30_000, tag),
    "cached": lambda names, tag: cached_load(CACHE_SIZE + 5_000),
    "qtypes": lambda names, tag: qtype_load(names, 40_000),
}
CACHED_RECORDS = CACHE_SIZE + 5_000


def status_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")
