"""SafeGate's UDP listener: batched (recvmmsg/sendmmsg, dns/udp_batch.py) vs asyncio (uvloop).

Same gateway, same list, same upstream, same dnsperf files as bench/dns_compare.py (server on
--server-cpu, dnsperf and unbound on --load-cpu); the only difference is the UDP listener. The
asyncio run starts the gateway with gateway.runtime.resolver.batched_udp_io replaced by one
that returns None (what SAFEGATE_PURE=1 or a missing extension does), so the C list lookup
stays on in both. Reports CPU-µs per query (the server's utime+stime / completed queries:
what a shared machine measures best) and QPS, at saturation and at a fixed offered rate.

Run: `.venv/bin/python bench/udp_batch.py [--duration 5] [--names 100000] [--rate 40000]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.dns_compare import (  # noqa: E402
    BENCH_POLICY,
    OUT,
    Dataset,
    bench_lists_yaml,
    cached_name,
    run_dnsperf,
    wait_answering,
)
from tests.support.procs import SafeGateProcess, write_gateway_config  # noqa: E402
from tests.support.unbound import UnboundServer, start_unbound  # noqa: E402

# The asyncio listener on a build that has the extension: the same process otherwise.
ASYNCIO = ("import sys, gateway.runtime.resolver as r; r.batched_udp_io = lambda pure: None; "
           "from gateway.cli import main; sys.exit(main())")


def start(data: Dataset, upstream: UnboundServer, args: argparse.Namespace,
          listener: str) -> SafeGateProcess:
    gwdir = data.workdir / f"safegate-{listener}"
    config = write_gateway_config(
        gwdir, upstream_port=upstream.port, policies={"bench.yaml": BENCH_POLICY}, lists={},
        lists_yaml=bench_lists_yaml(data.safegate_list),
        extra={"dns": {"cache": {"size": 10000}}, "limits": {"rrl": {"enabled": False}}},
        ipv6=False)
    shutil.copyfile(data.safegate_list, gwdir / "blocklists" / data.safegate_list.name)
    py = [sys.executable, "-m", "gateway"] if listener == "batched" else \
        [sys.executable, "-c", ASYNCIO]
    cmd = ["taskset", "-c", str(args.server_cpu), *py, "--log-level", "info", "run", "-c",
           str(config)]
    sg = SafeGateProcess()
    sg.start(config, command=cmd, timeout=120)
    wait_answering(sg.dns_port, cached_name(0), 30, sg.running)
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
    data = Dataset(workdir, args.names, args.cached_names)
    data.generate()
    upstream = start_unbound(workdir, data.upstream_records(), ipv6=False,
                             taskset_cpu=args.load_cpu,
                             extra_config=["so-rcvbuf: 8m", "so-sndbuf: 8m"])
    args.exclude_pids = [upstream.pid]
    rows: list[dict[str, Any]] = []
    try:
        for rnd in range(args.rounds):
            for listener in ("asyncio", "batched"):
                sg = start(data, upstream, args, listener)
                try:
                    run_dnsperf(listener, sg.pid, sg.dns_port, data.cached_q, args=args, runs=1)
                    run_dnsperf(listener, sg.pid, sg.dns_port, data.blocked_q, args=args, runs=1)
                    for qset, qfile in (("cached", data.cached_q), ("blocked", data.blocked_q)):
                        for rate in (None, args.rate):
                            r = run_dnsperf(listener, sg.pid, sg.dns_port, qfile, args=args,
                                            rate=rate)
                            row = {"round": rnd, "listener": listener, "set": qset,
                                   "offered": rate or "max", **asdict(r)}
                            rows.append(row)
                            print(f"{rnd} {listener:8s} {qset:8s} {rate or 'max'!s:>6s} "
                                  f"{r.qps:9.0f} qps {r.cpu_us_per_query:6.2f} cpu-us/q "
                                  f"lost {r.lost} other-cpu {r.other_procs_cpu_s:.1f}s "
                                  f"[{r.rcodes}]", flush=True)
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
