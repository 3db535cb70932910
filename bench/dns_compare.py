"""SafeGate vs unbound vs dnsmasq: same 1M-name list, same upstream, same queries, one run.

Why this shape (docs/design.md, "Testing against real servers"; issue #12): on a 2-core
machine dnsperf saturates a core near 100k QPS, so the server under test is pinned to one core
(--server-cpu, 0) and dnsperf, the upstream unbound and the slow authority to the other
(--load-cpu, 1); all three servers are measured in the same run, and CPU-µs per query is
reported next to QPS (QPS alone mostly measures the load generator once a server is fast).

The list: the real category lists in /work/shared/data plus synthetic names up to --names
(bench/workloads.py), loaded as SafeGate's `domains` list, dnsmasq `address=/name/` and
unbound `local-zone: "name." always_nxdomain` (a second unbound, not the upstream one).

Workloads (bench/workloads.py builds the files; type A):
  a  blocked, uniform draws from the WHOLE list (--stream-lines lines: nothing repeats often)
  b  blocked, 10k distinct names (the case a reply memo absorbs)
  c  cached, --cached-names names, warmed first
  d  mix: 20% blocked (uniform from the list), 75% cached, 5% unique misses (NXDOMAIN upstream)
  e  Zipf-like stream over the real popularity ranking (weight 1/rank^s); names a real list
     blocks are blocked, the others get real answers (upstream A records); cache warmed with
     the most popular names
  f  random-subdomain flood: stream 2 (half cached, half blocked-10k) alone, then again while
     stream 1 sends --flood-qps unique names under flood.test, whose authority answers after
     --flood-delay s
For every server x workload: QPS, server CPU-µs per answered query, RSS and VmHWM at the end
of the run, lost queries, p99 (dnsperf -v). Writes a markdown table and JSON to bench/out/.

Run: `make bench` or `.venv/bin/python bench/dns_compare.py [--only safegate,unbound]
[--workloads a,c] [--names 50000] [--duration 2]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import workloads as wl  # noqa: E402
from bench.procstat import (  # noqa: E402  (re-exported: soak.py, scaleout.py import them)
    CLK_TCK,
    Load,
    Measured,
    all_cpu_ticks,
    measure,
    percentiles,
    tree_cpu_seconds,
    tree_pids,
    tree_rss_mb,
)
from bench.servers import (  # noqa: E402
    Server,
    answers,
    start_dnsmasq,
    start_safegate,
    start_slow_auth,
    start_unbound_server,
    start_upstream,
)
from tests.support.unbound import UnboundServer  # noqa: E402

__all__ = [
    "CLK_TCK", "all_cpu_ticks", "cached_name", "percentiles", "tree_cpu_seconds", "tree_pids",
    "tree_rss_mb", "versions",
]

OUT = ROOT / "bench" / "out"
SERVERS = ("safegate", "unbound", "dnsmasq")
WORKLOADS = "abcdef"
cached_name = wl.cached_name


class BenchData:
    """The list in three syntaxes and the shared query files, under `workdir`."""

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        real = [] if args.synthetic_only else [wl.DATA / f for f in wl.CATEGORY_FILES]
        self.blocklist = wl.build_blocklist(args.names, [p for p in real if p.exists()])
        self.n_real = sum(1 for n in self.blocklist if not n.endswith(".test"))
        self.safegate_list = workdir / "bench-blocklist.domains"
        self.dnsmasq_conf = workdir / "bench-blocklist.dnsmasq.conf"
        self.unbound_zones = workdir / "bench-blocklist.unbound.conf"
        wl.write_safegate_list(self.safegate_list, self.blocklist)
        wl.write_dnsmasq_conf(self.dnsmasq_conf, self.blocklist)
        wl.write_unbound_zones(self.unbound_zones, self.blocklist)
        self.cached = [wl.cached_name(i) for i in range(args.cached_names)]
        self.blocked10k = wl.sample_distinct(self.blocklist, 10_000)
        self.files: dict[str, Path] = {}
        self.zipf_allowed: list[str] = []
        self.zipf_info: dict[str, Any] = {}

    def q(self, name: str, names: Sequence[str]) -> Path:
        self.files[name] = wl.write_queries(self.workdir / f"q-{name}.txt", names)
        return self.files[name]

    def build(self, todo: str) -> None:
        """The query files every server shares (per-server unique names come later)."""
        lines = self.args.stream_lines
        self.q("c", self.cached)
        if "a" in todo:
            self.q("a", wl.uniform_draws(self.blocklist, lines))
        if "b" in todo or "f" in todo:
            self.q("b", self.blocked10k)
        if "e" in todo:
            self._zipf(lines)
        if "f" in todo:
            self.q("f-ordinary", wl.ordinary_stream(self.blocked10k, self.cached, 200_000))

    def _zipf(self, lines: int) -> None:
        ranked = wl.read_ranking(wl.DATA / wl.RANKINGS[self.args.ranking])
        stream = wl.zipf_stream(ranked, lines, s=self.args.zipf_s)
        listed = set(self.blocklist)
        distinct = list(dict.fromkeys(stream))  # first appearance ~ popularity order
        blocked = {n for n in distinct if wl.is_blocked(n, listed)}
        self.zipf_allowed = [n for n in distinct if n not in blocked]
        self.q("e", stream)
        # Warm with the most popular allowed names up to the cache size, most popular last.
        warm = self.zipf_allowed[: self.args.cache_warm][::-1]
        self.q("e-warm", warm)
        self.zipf_info = {
            "ranking": self.args.ranking,
            "s": self.args.zipf_s,
            "distinct_names": len(distinct),
            "distinct_blocked": len(blocked),
            "blocked_share_of_queries": sum(1 for n in stream if n in blocked) / len(stream),
        }

    def upstream_records(self) -> list[str]:
        return wl.upstream_records([*self.cached, *self.zipf_allowed])

    def per_server(self, server: str, tag: str) -> dict[str, Path]:
        """Files with names unique to this server's runs: misses and flood names."""
        out: dict[str, Path] = {}
        lines = self.args.stream_lines
        if "d" in self.args.workloads:
            mix = wl.mix_stream(self.blocklist, self.cached, lines, f"{server}-{tag}")
            out["d"] = wl.write_queries(self.workdir / f"q-d-{server}.txt", mix)
        if "f" in self.args.workloads:
            n = int(self.args.flood_qps * self.args.duration * 1.5) + 1000
            flood = (wl.flood_name(i, f"{server}-{tag}") for i in range(n))
            out["f-flood"] = wl.write_queries(self.workdir / f"q-f-flood-{server}.txt", flood)
        return out


# ---------------------------------------------------------------- running one server


def row(m: Measured, idx: int = 0) -> dict[str, Any]:
    p = m.perf[idx]
    return {
        **asdict(p),
        "p99_ms": p.latency_ms.get("p99", 0.0),
        "cpu_seconds": m.cpu_seconds,
        "cpu_us_per_query": m.cpu_us_per_query,
        "rss_mb_end": m.memory_end["rss_mb"],
        "hwm_mb_end": m.memory_end["hwm_mb"],
        "udp_rcvbuf_drops": m.udp_rcvbuf_drops,
        "socket_drops": m.socket_drops,
        "other_procs_cpu_s": m.other_procs_cpu_s,
    }


def run_server(srv: Server, data: BenchData, own: dict[str, Path], args: argparse.Namespace,
               entry: dict[str, Any]) -> None:
    def load(qfile: Path, **kw: Any) -> Load:
        base: dict[str, Any] = {"clients": args.clients, "outstanding": args.outstanding,
                                "duration": args.duration, "verbose": True}
        return Load(qfile, srv.port, args.load_cpu, **{**base, **kw})

    def go(*loads: Load) -> Measured:
        return measure(srv.pid, loads, exclude=args.exclude_pids,
                       watch={"server": srv.port, **args.watch_ports})

    def warm(qfile: Path) -> None:
        # Gently (16 in flight): warming is not what is measured, and a burst of 800 misses
        # under one registrable domain (`cached.test`) would meet SafeGate's per-zone in-flight
        # share (limits.upstream.inflight_per_zone) and leave names uncached.
        go(load(qfile, runs=1, duration=None, verbose=False, clients=1, outstanding=16))

    def show(label: str, r: dict[str, Any]) -> None:
        print(f"   {label:9s} {r['qps']:9.0f} qps  {r['cpu_us_per_query']:6.1f} cpu-µs/q  "
              f"p99 {r['p99_ms']:7.3f} ms  lost {r['lost']:5d}  RSS {r['rss_mb_end']:5.0f} MB "
              f"(HWM {r['hwm_mb_end']:.0f})  drops {r['udp_rcvbuf_drops']} {r['socket_drops']}  "
              f"other-cpu {r['other_procs_cpu_s']:.1f}s  [{r['rcodes']}]", flush=True)

    runs = entry["runs"]
    warm(data.files["c"])
    for w in args.workloads:
        if w == "f":
            r = row(go(load(data.files["f-ordinary"])))
            runs["f-alone"] = r
            show("f-alone", r)
            flood = load(own["f-flood"], clients=2, outstanding=args.flood_outstanding,
                         rate=args.flood_qps, verbose=False)
            m = go(load(data.files["f-ordinary"]), flood)
            r = row(m)
            r["flood"] = asdict(m.perf[1])
            runs["f-flood"] = r
            show("f-flood", r)
            print(f"   flood     {m.perf[1].qps:9.0f} qps answered of {args.flood_qps} offered, "
                  f"lost {m.perf[1].lost}  [{m.perf[1].rcodes}]", flush=True)
        else:
            qfile = own.get(w) or data.files[w]
            if w == "c":
                warm(qfile)
            elif w == "e":
                warm(data.files["e-warm"])
            r = row(go(load(qfile)))
            runs[w] = r
            show(w, r)
        check_alive(srv, w, entry)


def check_alive(srv: Server, label: str, entry: dict[str, Any]) -> None:
    """A server that stopped answering makes every later number meaningless: say so."""
    probe = wl.cached_name(0)
    if answers(srv.port, probe):
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60 and not answers(srv.port, probe):
        time.sleep(1)
    msg = f"stopped answering after the {label} run; recovered after {time.monotonic() - t0:.0f}s"
    print(f"!! {srv.name} {msg}", flush=True)
    entry.setdefault("incidents", []).append(msg)


def starter(name: str, data: BenchData, up: UnboundServer, args: argparse.Namespace
            ) -> Callable[[], Server]:
    probe, cpu, wd = wl.cached_name(0), args.server_cpu, data.workdir
    return {
        "safegate": lambda: start_safegate(wd, data.safegate_list, up, cpu, probe,
                                           log_level=args.safegate_log_level,
                                           start_timeout=args.safegate_start_timeout),
        "unbound": lambda: start_unbound_server(wd, data.unbound_zones, up, cpu, probe),
        "dnsmasq": lambda: start_dnsmasq(wd, data.dnsmasq_conf, up, cpu, probe),
    }[name]


# ---------------------------------------------------------------- report

LABELS = {
    "a": "(a) blocked, uniform over the whole list",
    "b": "(b) blocked, 10k names",
    "c": "(c) cached names",
    "d": "(d) mix 20% blocked / 75% cached / 5% misses",
    "e": "(e) Zipf stream (real ranking)",
    "f-alone": "(f) stream 2 alone",
    "f-flood": "(f) stream 2 with the flood",
}


def print_table(results: dict[str, Any]) -> None:
    srv = results["servers"]
    names = [s for s in SERVERS if s in srv]

    def cell(key: str, label: str, fmt: str) -> str:
        vals = [srv[s]["runs"].get(label, {}).get(key) for s in names]
        return " / ".join("-" if v is None else format(v, fmt) for v in vals)

    def ratio(label: str, other: str) -> str:
        a = srv.get("safegate", {}).get("runs", {}).get(label)
        b = srv.get(other, {}).get("runs", {}).get(label)
        return f"{a['qps'] / b['qps']:.2f}" if a and b and b["qps"] else "-"

    order = " / ".join(names)
    print(f"\n| workload | QPS ({order}) | SafeGate/unbound | SafeGate/dnsmasq | CPU-µs/q "
          f"| p99 ms | RSS end MB | VmHWM MB | lost |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, text in LABELS.items():
        if not any(label in srv[s]["runs"] for s in names):
            continue
        print(f"| {text} | {cell('qps', label, ',.0f')} | {ratio(label, 'unbound')} "
              f"| {ratio(label, 'dnsmasq')} | {cell('cpu_us_per_query', label, '.1f')} "
              f"| {cell('p99_ms', label, '.2f')} | {cell('rss_mb_end', label, '.0f')} "
              f"| {cell('hwm_mb_end', label, '.0f')} | {cell('lost', label, 'd')} |")
    for s in names:
        e = srv[s]
        runs = e["runs"]
        kept = ""
        if "f-alone" in runs and "f-flood" in runs and runs["f-alone"]["qps"]:
            ff = runs["f-flood"]
            # Under the flood, a server core far from 100 % means the load side (core 1:
            # dnsperf x2, upstream, slow authority) or the server's own waiting set the pace.
            kept = (f", stream 2 keeps {ff['qps'] / runs['f-alone']['qps']:.0%} of its QPS "
                    f"under the flood (server core busy "
                    f"{ff['cpu_seconds'] / results['params']['duration']:.0%}, flood answered "
                    f"{ff['flood']['completed']:,} of {ff['flood']['sent']:,})")
        print(f"- {s}: ready in {e['startup_s']:.1f} s, RSS after load "
              f"{e['memory_after_load']['rss_mb']:.0f} MB{kept}")


def busy_warning(results: dict[str, Any], limit: float = 0.5) -> str:
    """Non-empty when other processes used noticeable CPU during some run."""
    busy = [
        f"{name}/{label} ({r['other_procs_cpu_s']:.1f}s)"
        for name, entry in results["servers"].items()
        for label, r in entry["runs"].items()
        if r["other_procs_cpu_s"] > limit
    ]
    if not busy:
        return ""
    return "other processes used CPU during: " + ", ".join(busy) + " -> rerun on a quiet machine"


def versions() -> dict[str, str]:
    def first_line(cmd: Sequence[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    out = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True, check=False)
    m = re.search(r"Version\s+(\S+)", out.stdout + out.stderr)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "dnsmasq": first_line(["dnsmasq", "--version"]),
        "unbound": first_line(["unbound", "-V"]),
        "dnsperf": m.group(1) if m else "?",
        "safegate_git": first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--names", type=int, default=1_000_000, help="list size (real + synthetic)")
    ap.add_argument("--only", default=",".join(SERVERS), help="servers, comma-separated")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="e.g. a,c,f")
    ap.add_argument("--duration", type=int, default=10, help="seconds per dnsperf run")
    ap.add_argument("--cached-names", type=int, default=1000)
    ap.add_argument("--stream-lines", type=int, default=1_000_000,
                    help="lines of the (a), (d) and (e) query files")
    ap.add_argument("--ranking", choices=sorted(wl.RANKINGS), default="umbrella")
    ap.add_argument("--zipf-s", type=float, default=1.0)
    ap.add_argument("--cache-warm", type=int, default=10_000,
                    help="(e): most popular allowed names sent once before the run")
    ap.add_argument("--flood-qps", type=int, default=5000, help="(f) stream 1 offered rate")
    ap.add_argument("--flood-delay", type=float, default=0.05, help="(f) authority delay, s")
    ap.add_argument("--flood-outstanding", type=int, default=2000)
    ap.add_argument("--synthetic-only", action="store_true", help="no real lists (names only)")
    ap.add_argument("--clients", type=int, default=8)
    # 100, not 500: at 500 outstanding dnsmasq's listening socket (kernel default buffer, which
    # dnsmasq does not raise) overflows at every burst; see docs/performance.md "Traps".
    ap.add_argument("--outstanding", type=int, default=100)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--safegate-log-level", default="warning")
    ap.add_argument("--safegate-start-timeout", type=float, default=300.0)
    ap.add_argument("--keep", action="store_true", help="keep generated files in bench/out/work")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    args.workloads = "".join(w.strip() for w in args.workloads.split(",") if w.strip())
    for s in args.only:
        if s not in SERVERS:
            ap.error(f"--only: unknown server {s!r} (choose from {', '.join(SERVERS)})")
    for w in args.workloads:
        if w not in WORKLOADS:
            ap.error(f"--workloads: unknown workload {w!r} (choose from a-f)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("dnsperf", "dnsmasq", "unbound", "taskset"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"missing {tool}: run `make deps-apt`", file=sys.stderr)
            return 2
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = OUT / "work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    t_start = time.monotonic()
    data = BenchData(workdir, args)
    data.build(args.workloads)
    print(f"list: {len(data.blocklist):,} names ({data.n_real:,} from real lists); query files "
          f"in {time.monotonic() - t_start:.1f}s", flush=True)
    if data.zipf_info:
        print(f"(e): {json.dumps(data.zipf_info)}", flush=True)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": versions(),
        "params": {k: v for k, v in vars(args).items()},
        "list": {"names": len(data.blocklist), "from_real_lists": data.n_real},
        "zipf": data.zipf_info,
        "servers": {},
        "errors": {},
    }
    auth, auth_port = start_slow_auth(workdir, args.load_cpu, args.flood_delay)
    upstream: UnboundServer | None = None
    try:
        upstream = start_upstream(workdir, data.upstream_records(), args.load_cpu, auth_port)
        args.exclude_pids = [upstream.pid, auth.pid]
        args.watch_ports = {"upstream": upstream.port, "slow_auth": auth_port}
        tag = f"{os.getpid():x}{int(time.time()) % 100000:x}"
        for name in (s for s in SERVERS if s in args.only):
            print(f"== {name}: starting", flush=True)
            try:
                srv = starter(name, data, upstream, args)()
            except Exception as exc:  # report, go on with the other servers
                print(f"!! {name} failed to start: {exc}", flush=True)
                results["errors"][name] = str(exc)[-4000:]
                continue
            print(f"   ready in {srv.startup_s:.1f}s, RSS {srv.memory_after_load['rss_mb']:.0f} MB",
                  flush=True)
            entry: dict[str, Any] = {"startup_s": srv.startup_s,
                                     "memory_after_load": srv.memory_after_load, "runs": {}}
            results["servers"][name] = entry
            try:
                run_server(srv, data, data.per_server(name, tag), args, entry)
            except Exception as exc:
                print(f"!! {name} run failed: {exc}", flush=True)
                results["errors"][name] = str(exc)[-4000:]
            finally:
                srv.stop()
    finally:
        if upstream is not None:
            upstream.stop()
        auth.terminate()
        auth.wait(10)
    results["elapsed_s"] = time.monotonic() - t_start
    print_table(results)
    warning = busy_warning(results)
    results["machine_busy_warning"] = warning
    if warning:
        print(f"\nWARNING: {warning}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in (OUT / f"dns_compare-{stamp}.json", OUT / "dns_compare-latest.json"):
        path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {OUT / f'dns_compare-{stamp}.json'} (whole run {results['elapsed_s']:.0f} s)")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    if results["errors"]:
        print(f"errors: {json.dumps(results['errors'], indent=2)[:3000]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
