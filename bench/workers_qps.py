"""dns.workers: QPS and CPU-µs per query with 1 and 2 resolver processes (issue #12 item 4).

    .venv/bin/python bench/workers_qps.py [--names 1000000] [--duration 10]

Same list and query files as bench/dns_compare.py, on its workloads (a) blocked, uniform draws
from the whole list, and (c) cached names (warmed first). CPU is utime+stime summed over ALL
of SafeGate's processes (the supervisor and every worker), divided by the queries answered: if
that figure stays flat from 1 to 2 workers, a second core adds what one core does; if it
rises, the difference is what a worker costs (its own memo and cache to warm, context
switches).

Unlike dns_compare, SafeGate is NOT pinned: its processes may use both cores, and dnsperf
(pinned to --load-cpu) and the upstream unbound share them. So on this 2-core machine the
2-worker QPS is what two processes get while competing with the load generator, a floor and
not a node's capacity; the CPU-µs per query is the figure that carries over to a bigger node.
Memory from /proc/PID/smaps_rollup: PSS splits shared pages (the mmap'd list index, the
interpreter) between the processes that map them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import workloads as wl  # noqa: E402
from bench.dns_compare import BenchData  # noqa: E402
from bench.procstat import Load, measure, tree_pids  # noqa: E402
from bench.servers import start_safegate  # noqa: E402
from tests.support.unbound import UnboundServer, start_unbound  # noqa: E402

OUT = ROOT / "bench" / "out"
WORKLOADS = {"a": "blocked, uniform over the whole list", "c": "cached names"}


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


def run(workers: int, data: BenchData, upstream: UnboundServer, args: argparse.Namespace
        ) -> dict[str, Any]:
    srv = start_safegate(data.workdir, data.safegate_list, upstream, -1, wl.cached_name(0),
                         workers=workers)
    try:
        pids = [p for p in tree_pids(srv.pid)
                if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        out: dict[str, Any] = {"workers": workers, "processes": len(pids)}

        def load(qfile: Path, **kw: Any) -> Load:
            base: dict[str, Any] = {"clients": args.clients, "outstanding": args.outstanding,
                                    "duration": args.duration}
            return Load(qfile, srv.port, args.load_cpu, **{**base, **kw})

        for w in WORKLOADS:
            qfile = data.files[w]
            if w == "c":  # every worker must have seen every name: several passes
                measure(srv.pid, [load(qfile, runs=3 * workers, duration=None)])
            m = measure(srv.pid, [load(qfile)], exclude=args.exclude_pids)
            p = m.perf[0]
            out[w] = {"qps": round(p.qps), "lost": p.lost,
                      "cpu_us_per_query": round(m.cpu_us_per_query, 1),
                      "cpu_seconds": round(m.cpu_seconds, 2),
                      "other_procs_cpu_s": round(m.other_procs_cpu_s, 1)}
        out["memory"] = {k: round(v, 1) for k, v in memory(pids).items()}
        return out
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--stream-lines", type=int, default=1_000_000)
    ap.add_argument("--cached-names", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--outstanding", type=int, default=100)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--synthetic-only", action="store_true")
    args = ap.parse_args(argv)
    work = OUT / "workers"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = BenchData(work, args)
    data.build("ac")
    up = start_unbound(work / "unbound", data.upstream_records(), ipv6=False,
                       taskset_cpu=args.load_cpu, extra_config=["so-rcvbuf: 8m", "so-sndbuf: 8m"])
    args.exclude_pids = [up.pid]
    try:
        rows = [run(n, data, up, args) for n in (1, 2)]
    finally:
        up.stop()
    print("\n| dns.workers | processes | (a) QPS | (a) CPU-µs/q | (c) QPS | (c) CPU-µs/q "
          "| RSS | PSS | private |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r["memory"]
        print(f"| {r['workers']} | {r['processes']} | {r['a']['qps']:,} | "
              f"{r['a']['cpu_us_per_query']} | {r['c']['qps']:,} | {r['c']['cpu_us_per_query']} | "
              f"{m['rss_mb']:.0f} MB | {m['pss_mb']:.0f} MB | {m['private_mb']:.0f} MB |")
    busy = [f"w{r['workers']}/{w} ({r[w]['other_procs_cpu_s']}s)" for r in rows for w in WORKLOADS
            if r[w]["other_procs_cpu_s"] > 0.5]
    if busy:
        print(f"\nWARNING: other processes used CPU during {', '.join(busy)}: rerun when quiet")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = OUT / f"workers-{stamp}.json"
    path.write_text(json.dumps({"params": vars(args), "workloads": WORKLOADS, "rows": rows},
                               indent=2) + "\n")
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
