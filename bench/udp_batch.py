"""SafeGate's UDP listener: batched (recvmmsg/sendmmsg, dns/udp_batch.py) vs asyncio (uvloop).

Same gateway, list, upstream and query shapes as bench/dns_compare.py (server on --server-cpu,
dnsperf and unbound on --load-cpu); the only difference is the UDP listener. The
asyncio run starts the gateway with gateway.runtime.resolver.batched_udp_io replaced by one
that returns None (what SAFEGATE_PURE=1 or a missing extension does), so the C list lookup
stays on in both. Reports CPU-µs per query (the server's utime+stime / completed queries:
what a shared machine measures best) and QPS, at saturation and at a fixed offered rate.

Run: `.venv/bin/python bench/udp_batch.py [--duration 5] [--names 100000] [--rate 40000]`.
Prints one line per run and writes JSON to bench/out/udp_batch-*.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procstat import Load, run_one  # noqa: E402
from tests.support.procs import SafeGateProcess, dns_query, write_gateway_config  # noqa: E402
from tests.support.unbound import UnboundServer, start_unbound  # noqa: E402

OUT = ROOT / "bench" / "out"
POLICY = """\
tiers:
  bench: {block: [adult], answer: nxdomain}
networks:
  - {name: loopback, cidrs: [127.0.0.0/8], tier: bench}
"""
# The asyncio listener on a build that has the extension: the same process otherwise.
ASYNCIO = ("import sys, gateway.runtime.resolver as r; r.batched_udp_io = lambda pure: None; "
           "from gateway.cli import main; sys.exit(main())")


def blocked_name(i: int) -> str:
    return f"b{i}.blk{i % 1000}.test"


def cached_name(i: int) -> str:
    return f"c{i}.cached.test"


def dnsperf(pid: int, port: int, qfile: Path, args: argparse.Namespace,
            rate: int | None = None, runs: int | None = None) -> dict[str, Any]:
    return run_one(pid, Load(qfile, port, args.load_cpu, clients=args.clients,
                             outstanding=args.outstanding,
                             duration=None if runs else args.duration, runs=runs, rate=rate))


def start(workdir: Path, upstream: UnboundServer, args: argparse.Namespace,
          listener: str) -> SafeGateProcess:
    gwdir = workdir / f"safegate-{listener}"
    config = write_gateway_config(
        gwdir, upstream_port=upstream.port, policies={"bench.yaml": POLICY},
        lists={"bench.txt": "".join(f"{blocked_name(i)}\n" for i in range(args.names))},
        lists_yaml="categories:\n  adult:\n    - {path: bench.txt, format: domains}\n",
        extra={"dns": {"cache": {"size": 10000}}, "limits": {"rrl": {"enabled": False}}},
        ipv6=False)
    py = [sys.executable, "-m", "gateway"] if listener == "batched" else \
        [sys.executable, "-c", ASYNCIO]
    cmd = ["taskset", "-c", str(args.server_cpu), *py, "--log-level", "info", "run", "-c",
           str(config)]
    sg = SafeGateProcess()
    sg.start(config, command=cmd, timeout=120)
    dns_query(cached_name(0), port=sg.dns_port, timeout=10)
    want = "(UDP batched, TCP)" if listener == "batched" else "(UDP, TCP)"
    if want not in sg.stderr_text():
        raise RuntimeError(f"{listener}: the gateway did not say {want!r}")
    return sg


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=100_000, help="blocklist size")
    ap.add_argument("--cached-names", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=5, help="seconds per dnsperf run")
    ap.add_argument("--rate", type=int, default=40_000, help="fixed offered QPS (-Q)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per listener")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--outstanding", type=int, default=100)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    args = ap.parse_args(argv)

    workdir = OUT / "udp-batch-work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cached_q, blocked_q = workdir / "q-cached.txt", workdir / "q-blocked.txt"
    cached_q.write_text("".join(f"{cached_name(i)} A\n" for i in range(args.cached_names)))
    step = max(1, args.names // 10_000)
    blocked_q.write_text("".join(f"{blocked_name(i)} A\n" for i in range(0, args.names, step)))
    records = [f"{cached_name(i)}. 3600 IN A 192.0.2.{i % 250 + 1}"
               for i in range(args.cached_names)]
    upstream = start_unbound(workdir, records, ipv6=False, taskset_cpu=args.load_cpu,
                             extra_config=["so-rcvbuf: 8m", "so-sndbuf: 8m"])
    rows: list[dict[str, Any]] = []
    try:
        for rnd in range(args.rounds):
            for listener in ("asyncio", "batched"):
                sg = start(workdir, upstream, args, listener)
                try:
                    dnsperf(sg.pid, sg.dns_port, cached_q, args, runs=1)    # warm the memo
                    dnsperf(sg.pid, sg.dns_port, blocked_q, args, runs=1)
                    for qset, qfile in (("cached", cached_q), ("blocked", blocked_q)):
                        for rate in (None, args.rate):
                            r = dnsperf(sg.pid, sg.dns_port, qfile, args, rate=rate)
                            rows.append({"round": rnd, "listener": listener, "set": qset,
                                         "offered": rate or "max", **r})
                            print(f"{rnd} {listener:8s} {qset:8s} {rate or 'max'!s:>6s} "
                                  f"{r['qps']:9.0f} qps {r['cpu_us_per_query']:6.2f} cpu-us/q "
                                  f"lost {r['lost']} [{r['rcodes']}]", flush=True)
                finally:
                    sg.stop(timeout=10)
                    sg.kill()
    finally:
        upstream.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"udp_batch-{stamp}.json").write_text(json.dumps(rows, indent=2) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
