"""CPU-µs per unique cache miss: every query a name the gateway has never seen, forwarded to a
real unbound and answered NXDOMAIN (a DGA lookup, a random-subdomain flood).

    .venv/bin/python bench/miss_cost.py [--rate 4000] [--duration 10] [--repeat 3]

The gateway runs pinned to --server-cpu with no blocklist to speak of; dnsperf and unbound
share --load-cpu. dnsperf sends at a fixed --rate (below the gateway's saturation, so each miss
is measured alone, not queued), and the figure is the gateway's utime+stime (/proc, all its
threads) over the queries completed. Each name is its own registrable domain
(`m{i}-{run}.test`), so the per-zone in-flight share never refuses one: every query is a real
miss. unbound's CPU is not counted (it is the same for every gateway version).

On a shared 2-core machine the dnsperf figure moves with the neighbours' load (a busier
machine batches more datagrams per wakeup, and per-miss CPU drops): --sequential N also sends N
misses one at a time from this process (the next after the reply), so every miss pays its own
wakeups and the figure compares code, not load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procstat import Load, run_one, tree_cpu_seconds  # noqa: E402
from bench.servers import BENCH_POLICY, wait_answering  # noqa: E402
from tests.support.procs import (  # noqa: E402
    SafeGateProcess,
    safegate_command,
    write_gateway_config,
)
from tests.support.unbound import ALLOWED, start_unbound  # noqa: E402

OUT = ROOT / "bench" / "out"


def miss_file(workdir: Path, tag: str, n: int) -> Path:
    path = workdir / f"q-miss-{tag}.txt"
    path.write_text("".join(f"m{i}-{tag}.test A\n" for i in range(n)))
    return path


def sequential(port: int, pid: int, tag: str, n: int) -> float:
    """CPU-µs of the gateway per miss, `n` misses sent one after another."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.connect(("127.0.0.1", port))
    queries = [i.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
               + bytes([len(label := f"s{i}-{tag}".encode())]) + label
               + b"\x04test\x00\x00\x01\x00\x01" for i in range(n)]
    cpu0 = tree_cpu_seconds(pid)
    for q in queries:
        sock.send(q)
        reply = sock.recv(4096)
        assert reply[:2] == q[:2] and reply[3] & 0xF == 3, "expected NXDOMAIN"
    cpu = tree_cpu_seconds(pid) - cpu0
    sock.close()
    return cpu * 1e6 / n


def run_dnsperf(pid: int, port: int, qfile: Path, args: argparse.Namespace,
                rate: int | None = None, runs: int | None = None) -> dict[str, Any]:
    """One dnsperf pass (pinned to --load-cpu) and the gateway's CPU over it."""
    return run_one(pid, Load(qfile, port, args.load_cpu, clients=args.clients,
                             outstanding=args.outstanding,
                             duration=None if runs else args.duration, runs=runs, rate=rate))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=4000, help="queries per second offered")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--outstanding", type=int, default=100)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--label", default="", help="a name for this run in the JSON")
    ap.add_argument("--sequential", type=int, default=0, help="also N misses one at a time")
    args = ap.parse_args()

    workdir = OUT / "work-miss"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    upstream = start_unbound(workdir, ipv6=False, taskset_cpu=args.load_cpu,
                             extra_config=["so-rcvbuf: 8m", "so-sndbuf: 8m"])
    args.exclude_pids = [upstream.pid]
    config = write_gateway_config(
        workdir / "safegate", upstream_port=upstream.port,
        policies={"bench.yaml": BENCH_POLICY}, lists={"bench.domains": "blocked.example\n"},
        lists_yaml="categories:\n  adult:\n    - {path: bench.domains, format: domains}\n",
        extra={"limits": {"rrl": {"enabled": False}}}, ipv6=False)
    sg = SafeGateProcess()
    cmd = ["taskset", "-c", str(args.server_cpu), *safegate_command(config, log_level="info")]
    runs: list[dict[str, Any]] = []
    seq: list[float] = []
    try:
        sg.start(config, command=cmd, timeout=120)
        wait_answering(sg.dns_port, ALLOWED, 30, sg.running)
        n = args.rate * args.duration
        # warm-up: the interpreter's first misses (imports, socket pool) are not the steady state
        run_dnsperf(sg.pid, sg.dns_port, miss_file(workdir, "warm", 2000), args, runs=1)
        for i in range(args.repeat):
            res = run_dnsperf(sg.pid, sg.dns_port, miss_file(workdir, f"r{i}", n), args,
                              rate=args.rate, runs=1)
            runs.append(res)
            print(f"run {i}: {res['completed']}/{res['sent']} completed, {res['qps']:.0f} qps, "
                  f"{res['cpu_us_per_query']:.1f} CPU-µs/miss, rcodes {res['rcodes']}, "
                  f"other procs {res['other_procs_cpu_s']:.2f} s", flush=True)
        for i in range(args.repeat if args.sequential else 0):
            us = sequential(sg.dns_port, sg.pid, f"q{i}", args.sequential)
            seq.append(us)
            print(f"sequential {i}: {us:.1f} CPU-µs/miss", flush=True)
    finally:
        try:
            sg.stop(timeout=10)
        finally:
            sg.kill()
            upstream.stop()
    per_miss = [r["cpu_us_per_query"] for r in runs]
    summary = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "label": args.label,
               "params": {k: v for k, v in vars(args).items() if k != "exclude_pids"},
               "median_cpu_us_per_miss": statistics.median(per_miss), "runs": runs,
               "sequential_cpu_us_per_miss": seq,
               "median_sequential": statistics.median(seq) if seq else None}
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"miss_cost-{args.label or 'run'}.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"median {summary['median_cpu_us_per_miss']:.1f} CPU-µs per miss (dnsperf), "
          f"{summary['median_sequential'] or 0:.1f} sequential -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
