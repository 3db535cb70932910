"""dns.workers: QPS and memory with 1 and 2 resolver processes on this 2-core machine.

    .venv/bin/python bench/workers_qps.py [--names 1000000] [--duration 10]

Same data as bench/dns_compare.py (a 1M-name blocklist, unbound upstream, the `blocked` and
`cached` query files). Unlike dns_compare, SafeGate is NOT pinned: its processes may use both
cores, and dnsperf (pinned to core 1) and unbound share them. So the 2-worker number is what
two processes get while competing with the load generator on the same two cores — a floor,
not a node's capacity. Memory is read from /proc/PID/smaps_rollup: PSS splits shared pages
(the mmap'd list index, the interpreter) between the processes that map them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.dns_compare import (  # noqa: E402
    BENCH_POLICY,
    Dataset,
    bench_lists_yaml,
    cached_name,
    run_dnsperf,
    tree_pids,
    wait_answering,
)
from tests.support.procs import SafeGateProcess, write_gateway_config  # noqa: E402
from tests.support.unbound import start_unbound  # noqa: E402

OUT = ROOT / "bench" / "out"


def memory(pids: list[int]) -> dict[str, float]:
    """Summed RSS, PSS and private (anonymous + file) MB over the processes."""
    tot = {"rss_mb": 0.0, "pss_mb": 0.0, "private_mb": 0.0}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        vals = {}
        for line in text.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                vals[parts[0].rstrip(":")] = int(parts[1]) / 1024
        tot["rss_mb"] += vals.get("Rss", 0)
        tot["pss_mb"] += vals.get("Pss", 0)
        tot["private_mb"] += vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)
    return tot


def run(workers: int, data: Dataset, upstream_port: int, args: argparse.Namespace
        ) -> dict[str, Any]:
    gwdir = data.workdir / f"safegate-w{workers}"
    config = write_gateway_config(
        gwdir, upstream_port=upstream_port, policies={"bench.yaml": BENCH_POLICY}, lists={},
        lists_yaml=bench_lists_yaml(data.safegate_list),
        extra={"dns": {"cache": {"size": 10000}, "workers": workers},
               "limits": {"rrl": {"enabled": False}}},   # one dnsperf source: see dns_compare
        ipv6=False)
    (gwdir / "blocklists" / data.safegate_list.name).write_bytes(data.safegate_list.read_bytes())
    sg = SafeGateProcess()
    sg.start(config, log_level="warning", timeout=300)
    try:
        wait_answering(sg.dns_port, cached_name(0), 30, sg.running)
        pids = [p for p in tree_pids(sg.pid)
                if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        out: dict[str, Any] = {"workers": workers, "processes": len(pids)}
        for name, qfile in (("blocked", data.blocked_q), ("cached", data.cached_q)):
            run_dnsperf("safegate", sg.pid, sg.dns_port, qfile, args=args, runs=1)  # warm
            res = run_dnsperf("safegate", sg.pid, sg.dns_port, qfile, args=args)
            out[name] = {"qps": round(res.qps), "lost": res.lost,
                         "cpu_us_per_query": round(res.cpu_us_per_query, 1)}
        out["memory"] = {k: round(v, 1) for k, v in memory(pids).items()}
        return out
    finally:
        sg.stop(timeout=10)
        sg.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--outstanding", type=int, default=100)
    ap.add_argument("--load-cpu", type=int, default=1)
    args = ap.parse_args()
    work = OUT / "workers"
    work.mkdir(parents=True, exist_ok=True)
    data = Dataset(work, args.names, 1000)
    data.generate()
    up = start_unbound(work / "unbound", data.upstream_records())
    args.exclude_pids = [up.proc.pid]
    try:
        rows = [run(n, data, up.port, args) for n in (1, 2)]
    finally:
        up.stop()
    print("| dns.workers | processes | blocked QPS | cached QPS | RSS | PSS | private |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r["memory"]
        print(f"| {r['workers']} | {r['processes']} | {r['blocked']['qps']:,} | "
              f"{r['cached']['qps']:,} | {m['rss_mb']:.0f} MB | {m['pss_mb']:.0f} MB | "
              f"{m['private_mb']:.0f} MB |")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"workers-{stamp}.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
