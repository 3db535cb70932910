"""SafeGate vs dnsmasq: same 1M-name blocklist, same upstream, same queries, one run.

Why this shape (docs/design.md, "Testing against real servers"): on a 2-core machine dnsperf
saturates a core near 100k QPS, so the server under test is pinned to one core and dnsperf to
the other, both peers are measured in the same run, and CPU-µs per query is reported next to
QPS (QPS alone mostly measures the load generator once the server is fast).

Layout: the server under test on --server-cpu (0); dnsperf and the upstream unbound on
--load-cpu (1). The upstream is tests/support/unbound.py's unbound plus --cached-names extra
A records (c{i}.cached.test); everything else under .test is NXDOMAIN there.

Query files (A only):
  blocked  10k distinct names from the blocklist (answered locally by both servers)
  cached   1k distinct allowed names (warmed first, then answered from each server's cache)
  mix      70% cached names, 20% blocked names, 10% never-seen names (m{i}.<tag>.miss.test,
           unique per run so each is a real cache miss forwarded upstream -> NXDOMAIN)

Run: `make bench` or `.venv/bin/python bench/dns_compare.py [--duration 10] [--only dnsmasq]`.
Writes a table to stdout and JSON to bench/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.procs import (  # noqa: E402
    SafeGateProcess,
    dns_query,
    free_port,
    safegate_command,
    write_gateway_config,
)
from tests.support.unbound import UnboundServer, start_unbound  # noqa: E402

OUT = ROOT / "bench" / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CATEGORY = "adult"  # the bench list's category; any category the lists loader accepts


# ---------------------------------------------------------------- data


def blocked_name(i: int) -> str:
    return f"b{i}.blk{i % 1000}.test"


def cached_name(i: int) -> str:
    return f"c{i}.cached.test"


@dataclass
class Dataset:
    workdir: Path
    n_blocked: int
    n_cached: int
    safegate_list: Path = field(init=False)
    dnsmasq_conf: Path = field(init=False)
    blocked_q: Path = field(init=False)
    cached_q: Path = field(init=False)

    def __post_init__(self) -> None:
        self.safegate_list = self.workdir / "bench-blocklist.domains"
        self.dnsmasq_conf = self.workdir / "bench-blocklist.dnsmasq.conf"
        self.blocked_q = self.workdir / "q-blocked.txt"
        self.cached_q = self.workdir / "q-cached.txt"

    def generate(self, seed: int = 1) -> None:
        """Write both list formats and the fixed query files (deterministic for a seed)."""
        names = [blocked_name(i) for i in range(self.n_blocked)]
        self.safegate_list.write_text("\n".join(names) + "\n")
        # `address=/name/` (no address): NXDOMAIN for the name and all subdomains, the same
        # semantics as a SafeGate `domains` entry with `answer: nxdomain`. dnsmasq 2.90 loads
        # 1M of these in ~1 s (local=/name/ and address=/name/0.0.0.0 are no faster).
        self.dnsmasq_conf.write_text("".join(f"address=/{n}/\n" for n in names))
        rng = random.Random(seed)
        sample = rng.sample(range(self.n_blocked), min(10_000, self.n_blocked))
        self.blocked_q.write_text("".join(f"{blocked_name(i)} A\n" for i in sample))
        cached = [cached_name(i) for i in range(self.n_cached)]
        rng.shuffle(cached)
        self.cached_q.write_text("".join(f"{n} A\n" for n in cached))

    def mix_file(self, tag: str, lines: int = 1_000_000, seed: int = 2) -> Path:
        """70/20/10 cached/blocked/unique-miss; `tag` makes the misses unique to one run."""
        rng = random.Random(seed)
        n_miss = lines // 10
        n_blk = lines // 5
        n_cached = lines - n_miss - n_blk
        kinds = [0] * n_cached + [1] * n_blk + [2] * n_miss
        rng.shuffle(kinds)
        out: list[str] = []
        miss = 0
        for k in kinds:
            if k == 0:
                out.append(f"{cached_name(rng.randrange(self.n_cached))} A\n")
            elif k == 1:
                out.append(f"{blocked_name(rng.randrange(self.n_blocked))} A\n")
            else:
                out.append(f"m{miss}.{tag}.miss.test A\n")
                miss += 1
        path = self.workdir / f"q-mix-{tag}.txt"
        path.write_text("".join(out))
        return path

    def upstream_records(self) -> list[str]:
        return [f"{cached_name(i)}. 3600 IN A 192.0.2.{i % 250 + 1}" for i in range(self.n_cached)]


# ---------------------------------------------------------------- process accounting


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def tree_pids(root: int) -> list[int]:
    """root and all its live descendants (SafeGate may run worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                children.setdefault(int(st[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds(root: int) -> float:
    """utime + stime (all threads) summed over the process tree."""
    ticks = 0
    for pid in tree_pids(root):
        st = _stat(pid)
        if st:
            ticks += int(st[11]) + int(st[12])  # fields 14, 15: utime, stime
    return ticks / CLK_TCK


def tree_rss_mb(root: int) -> float:
    total = 0
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


# ---------------------------------------------------------------- dnsperf


@dataclass
class PerfResult:
    server: str
    query_file: str
    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    avg_latency_ms: float = 0.0
    rcodes: str = ""
    cpu_seconds: float = 0.0
    cpu_us_per_query: float = 0.0
    rate_limit: int | None = None
    udp_rcvbuf_drops: int = 0
    other_procs_cpu_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)


def _num(pattern: str, text: str, cast: Callable[[str], Any] = float) -> Any:
    m = re.search(pattern, text)
    return cast(m.group(1)) if m else cast("0")


def all_cpu_ticks() -> dict[int, int]:
    """utime+stime of every live process, to spot other load on this (shared) machine."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                out[int(entry)] = int(st[11]) + int(st[12])
    return out


def udp_rcvbuf_errors() -> int:
    """Kernel count of UDP datagrams dropped on a full socket receive buffer (IPv4)."""
    lines = [x.split() for x in Path("/proc/net/snmp").read_text().splitlines()]
    hdr, val = [x for x in lines if x[0] == "Udp:"][:2]
    return int(val[hdr.index("RcvbufErrors")])


def run_dnsperf(
    server: str,
    pid: int,
    port: int,
    qfile: Path,
    *,
    args: argparse.Namespace,
    rate: int | None = None,
    verbose_to: Path | None = None,
    runs: int | None = None,
) -> PerfResult:
    """One dnsperf run pinned to the load core.

    Measured around it: CPU of the server's process tree, UDP receive-buffer drops, and the
    CPU that *other* processes used meanwhile (anything but server, dnsperf, upstream and this
    script), because a busy neighbour on a 2-core machine silently skews every number.
    """
    cmd = ["taskset", "-c", str(args.load_cpu), "dnsperf", "-s", "127.0.0.1", "-p", str(port)]
    cmd += ["-d", str(qfile), "-c", str(args.clients), "-q", str(args.outstanding), "-t", "2"]
    cmd += ["-n", str(runs)] if runs else ["-l", str(args.duration)]
    if rate:
        cmd += ["-Q", str(rate)]
    if verbose_to:
        cmd += ["-v"]
    out_path = verbose_to or qfile.with_suffix(".dnsperf.txt")
    ticks0 = all_cpu_ticks()
    drops0 = udp_rcvbuf_errors()
    cpu0 = tree_cpu_seconds(pid)
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate()
    cpu1 = tree_cpu_seconds(pid)
    drops1 = udp_rcvbuf_errors()
    ticks1 = all_cpu_ticks()
    text = out_path.read_text()
    if not verbose_to:
        out_path.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({proc.returncode}): {err}\n{text[-2000:]}")
    ours = {os.getpid(), proc.pid, *tree_pids(pid), *getattr(args, "exclude_pids", ())}
    foreign = sum(t - ticks0.get(p, 0) for p, t in ticks1.items() if p not in ours)
    res = PerfResult(server=server, query_file=qfile.name, rate_limit=rate)
    res.sent = _num(r"Queries sent:\s+(\d+)", text, int)
    res.completed = _num(r"Queries completed:\s+(\d+)", text, int)
    res.lost = _num(r"Queries lost:\s+(\d+)", text, int)
    res.qps = _num(r"Queries per second:\s+([\d.]+)", text)
    res.avg_latency_ms = _num(r"Average Latency \(s\):\s+([\d.]+)", text) * 1000
    m = re.search(r"Response codes:\s+(.*)", text)
    res.rcodes = m.group(1).strip() if m else ""
    res.cpu_seconds = cpu1 - cpu0
    res.udp_rcvbuf_drops = drops1 - drops0
    res.other_procs_cpu_s = foreign / CLK_TCK
    if res.completed:
        res.cpu_us_per_query = res.cpu_seconds * 1e6 / res.completed
    if verbose_to:
        res.latency_ms = percentiles(text)
    return res


def percentiles(verbose_text: str) -> dict[str, float]:
    """From dnsperf -v lines `> RCODE NAME TYPE LATENCY_S`: p50/p90/p99/p99.9/max in ms."""
    lat = sorted(
        float(parts[-1])
        for line in verbose_text.splitlines()
        if line.startswith("> ") and len(parts := line.split()) >= 5
    )
    if not lat:
        return {}

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000

    return {
        "n": float(len(lat)),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "p99.9": pct(99.9),
        "max": lat[-1] * 1000,
    }


# ---------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    pid: int
    port: int
    stop: Callable[[], None]
    startup_s: float
    rss_mb: float = 0.0
    log: Path | None = None


def answers(port: int, tries: int = 3) -> bool:
    for _ in range(tries):
        try:
            if dns_query(cached_name(0), "A", port=port, timeout=1.0).answer:
                return True
        except Exception:  # not answering (yet)
            pass
    return False


def wait_answering(port: int, name: str, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("server exited during startup")
        try:
            if dns_query(name, "A", port=port, timeout=0.5).answer:
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no answer for {name} on port {port} after {timeout}s")


def start_dnsmasq(data: Dataset, upstream: UnboundServer, args: argparse.Namespace) -> Server:
    port = free_port(v6=False)
    log = data.workdir / "dnsmasq.log"
    # Absolute paths: dnsmasq chdirs to / even with -k.
    cmd = [
        "taskset",
        "-c",
        str(args.server_cpu),
        "dnsmasq",
        "-k",
        "--no-resolv",
        "--no-hosts",
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--cache-size=10000",
        "--dns-forward-max=1000",
        "--log-facility=-",
        "--user=root",
        "--pid-file=",
        f"--conf-file={data.dnsmasq_conf.resolve()}",
        f"--server=127.0.0.1#{upstream.port}",
    ]
    t0 = time.monotonic()
    with open(log, "wb") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    try:
        wait_answering(port, cached_name(0), 120, lambda: proc.poll() is None)
    except Exception:
        stop()
        raise RuntimeError(f"dnsmasq did not start:\n{log.read_text()[-3000:]}") from None
    return Server(
        "dnsmasq", proc.pid, port, stop, time.monotonic() - t0, tree_rss_mb(proc.pid), log
    )


BENCH_POLICY = f"""\
tiers:
  bench:
    description: benchmark tier, blocks the 1M-name bench list
    block: [{CATEGORY}]
    answer: nxdomain
networks:
  - name: loopback
    cidrs: [127.0.0.0/8, "::1/128"]
    tier: bench
"""


def bench_lists_yaml(list_path: Path) -> str:
    """lists.yaml naming the 1M-name list (format `domains`, suffix match like dnsmasq)."""
    return f"categories:\n  {CATEGORY}:\n    - path: {list_path.name}\n      format: domains\n"


def start_safegate(data: Dataset, upstream: UnboundServer, args: argparse.Namespace) -> Server:
    gwdir = data.workdir / "safegate"
    if gwdir.exists():
        shutil.rmtree(gwdir)
    config = write_gateway_config(
        gwdir,
        upstream_port=upstream.port,
        policies={"bench.yaml": BENCH_POLICY},
        lists={},
        lists_yaml=bench_lists_yaml(data.safegate_list),
        # dnsperf is one source at ~100k qps: RRL would (rightly) limit it to a trickle. This
        # measures the resolver; the limiter's own cost is bench/rrl_cost.py.
        extra={"dns": {"cache": {"size": 10000}}, "limits": {"rrl": {"enabled": False}}},
        ipv6=False,
    )
    shutil.copyfile(data.safegate_list, gwdir / "blocklists" / data.safegate_list.name)
    sg = SafeGateProcess()
    cmd = [
        "taskset",
        "-c",
        str(args.server_cpu),
        *safegate_command(config, log_level=args.safegate_log_level),
    ]
    t0 = time.monotonic()
    sg.start(config, command=cmd, timeout=args.safegate_start_timeout)
    wait_answering(sg.dns_port, cached_name(0), 30, sg.running)
    startup = time.monotonic() - t0

    def stop() -> None:
        try:
            sg.stop(timeout=10)
        finally:
            sg.kill()

    return Server(
        "safegate", sg.pid, sg.dns_port, stop, startup, tree_rss_mb(sg.pid), sg.stderr_path
    )


# ---------------------------------------------------------------- main


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
    dnsperf_v = "?"
    out = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True, check=False)
    m = re.search(r"Version\s+(\S+)", out.stdout + out.stderr)
    if m:
        dnsperf_v = m.group(1)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "dnsmasq": first_line(["dnsmasq", "--version"]),
        "unbound": first_line(["unbound", "-V"]),
        "dnsperf": dnsperf_v,
        "safegate_git": first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }


def bench_server(
    name: str,
    starter: Callable[[Dataset, UnboundServer, argparse.Namespace], Server],
    data: Dataset,
    upstream: UnboundServer,
    args: argparse.Namespace,
    results: dict[str, Any],
) -> Server | None:
    print(f"== {name}: starting", flush=True)
    try:
        srv = starter(data, upstream, args)
    except Exception as exc:  # report, go on with the other server
        print(f"!! {name} failed to start: {exc}", flush=True)
        results["errors"][name] = str(exc)[-4000:]
        return None
    print(f"   ready in {srv.startup_s:.1f}s, RSS {srv.rss_mb:.0f} MB", flush=True)
    entry: dict[str, Any] = {
        "startup_s": srv.startup_s,
        "rss_mb_after_load": srv.rss_mb,
        "runs": {},
    }
    results["servers"][name] = entry
    try:
        # Warm: every cached name once, slowly, so "cached" measures cache hits.
        run_dnsperf(name, srv.pid, srv.port, data.cached_q, args=args, runs=1)
        for label, qfile in (
            ("blocked", data.blocked_q),
            ("cached", data.cached_q),
            ("mix", data.mix_file(f"{name}-peak")),
        ):
            r = run_dnsperf(name, srv.pid, srv.port, qfile, args=args)
            entry["runs"][label] = asdict(r)
            print(
                f"   {label:8s} {r.qps:10.0f} qps  {r.cpu_us_per_query:7.1f} cpu-µs/q  "
                f"lost {r.lost}  rcvbuf-drops {r.udp_rcvbuf_drops}  "
                f"other-procs-cpu {r.other_procs_cpu_s:.1f}s  [{r.rcodes}]",
                flush=True,
            )
            check_alive(srv, label, entry)
        entry["rss_mb_after_runs"] = tree_rss_mb(srv.pid)
    except Exception as exc:
        print(f"!! {name} run failed: {exc}", flush=True)
        results["errors"][name] = str(exc)[-4000:]
    return srv


def check_alive(srv: Server, label: str, entry: dict[str, Any]) -> None:
    """A server that stopped answering makes every later number meaningless: say so."""
    if answers(srv.port):
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60 and not answers(srv.port):
        time.sleep(1)
    msg = f"stopped answering after the {label} run; recovered after {time.monotonic() - t0:.0f}s"
    print(f"!! {srv.name} {msg}", flush=True)
    entry.setdefault("incidents", []).append(msg)


def latency_run(
    srv: Server,
    data: Dataset,
    rate: int,
    tag: str,
    args: argparse.Namespace,
    qset: str = "mix",
) -> dict[str, Any]:
    vfile = data.workdir / f"dnsperf-v-{tag}.txt"
    qfile = {"blocked": data.blocked_q, "cached": data.cached_q}.get(qset) or data.mix_file(tag)
    if qset != "mix":
        # Steady state: one pass over the names first. The mix run before this one sends tens
        # of thousands of other names, which evicts SafeGate's per-profile memos; without
        # this pass the first 10k queries of the run take the slow path at full rate and
        # their queueing, not the steady state, sets the p99.
        run_dnsperf(srv.name, srv.pid, srv.port, qfile, args=args, runs=1)
    r = run_dnsperf(
        srv.name, srv.pid, srv.port, qfile, args=args, rate=rate, verbose_to=vfile
    )
    if not args.keep:
        vfile.unlink(missing_ok=True)
    lat = r.latency_ms
    print(
        f"   {srv.name} @ {rate} qps ({qset}): p50 {lat.get('p50', 0):.3f} ms  "
        f"p99 {lat.get('p99', 0):.3f} ms  p99.9 {lat.get('p99.9', 0):.3f} ms  "
        f"cpu {r.cpu_us_per_query:.1f} µs/q  lost {r.lost}  "
        f"other-procs-cpu {r.other_procs_cpu_s:.1f}s",
        flush=True,
    )
    return asdict(r)


def print_table(results: dict[str, Any]) -> None:
    servers = results["servers"]
    print(
        "\n| query set | dnsmasq QPS | SafeGate QPS | SafeGate/dnsmasq | dnsmasq CPU-µs/q "
        "| SafeGate CPU-µs/q |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label in ("blocked", "cached", "mix"):
        d = servers.get("dnsmasq", {}).get("runs", {}).get(label)
        s = servers.get("safegate", {}).get("runs", {}).get(label)
        ratio = f"{s['qps'] / d['qps']:.2f}" if d and s and d["qps"] else "-"
        print(
            f"| {label} | {d['qps'] if d else 0:,.0f} | {s['qps'] if s else 0:,.0f} | {ratio} "
            f"| {d['cpu_us_per_query'] if d else 0:.1f} "
            f"| {s['cpu_us_per_query'] if s else 0:.1f} |"
        )
    lat = results.get("latency", {})
    if lat:
        print(
            "\n| server (query set: mix unless named) | offered QPS | p50 ms | p90 ms | p99 ms "
            "| p99.9 ms | lost | CPU-µs/q |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for key, r in lat.items():
            p = r["latency_ms"]
            print(
                f"| {key} | {r['rate_limit']:,} | {p.get('p50', 0):.3f} | "
                f"{p.get('p90', 0):.3f} | {p.get('p99', 0):.3f} | {p.get('p99.9', 0):.3f} "
                f"| {r['lost']} | {r['cpu_us_per_query']:.1f} |"
            )


def busy_warning(results: dict[str, Any], limit: float = 0.5) -> str:
    """Non-empty when other processes used noticeable CPU during some run."""
    runs = [
        (f"{name}/{label}", r)
        for name, entry in results["servers"].items()
        for label, r in entry["runs"].items()
    ] + list(results["latency"].items())
    busy = [
        f"{k} ({r['other_procs_cpu_s']:.1f}s)" for k, r in runs if r["other_procs_cpu_s"] > limit
    ]
    if not busy:
        return ""
    return "other processes used CPU during: " + ", ".join(busy) + " -> rerun on a quiet machine"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=1_000_000, help="blocklist size")
    ap.add_argument("--cached-names", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=10, help="seconds per dnsperf run")
    ap.add_argument("--clients", type=int, default=8)
    # 100, not 500: at 500 outstanding dnsmasq's listening socket (kernel default buffer, which
    # dnsmasq does not raise) overflows at every burst and the lost queries then hold dnsperf
    # slots for the 2 s timeout; at 100 neither server drops and both reach higher QPS.
    ap.add_argument("--outstanding", type=int, default=100)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--only", choices=("dnsmasq", "safegate"))
    ap.add_argument("--safegate-log-level", default="info")
    ap.add_argument("--safegate-start-timeout", type=float, default=300.0)
    ap.add_argument("--keep", action="store_true", help="keep generated files in bench/out/work")
    args = ap.parse_args(argv)

    for tool in ("dnsperf", "dnsmasq", "unbound", "taskset"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"missing {tool}: run `make deps-apt`", file=sys.stderr)
            return 2

    OUT.mkdir(parents=True, exist_ok=True)
    workdir = OUT / "work"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    data = Dataset(workdir, args.names, args.cached_names)
    t0 = time.monotonic()
    data.generate()
    print(f"generated {args.names:,} blocked names in {time.monotonic() - t0:.1f}s", flush=True)

    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": versions(),
        "params": {k: v for k, v in vars(args).items()},
        "query_sets": {
            "blocked": "10k distinct blocked names, A",
            "cached": f"{args.cached_names} distinct upstream names, A, warmed first",
            "mix": "70% cached, 20% blocked, 10% unique misses (upstream NXDOMAIN), A",
        },
        "servers": {},
        "latency": {},
        "errors": {},
    }
    # Big socket buffers: the upstream must never be what drops queries. (With the default
    # ~208 KB, bursts of forwarded misses overflowed it; dnsmasq then holds its forward slots
    # until they time out and, once all --dns-forward-max slots are held, stops reading
    # queries at all: the whole server stalls, not just the misses.)
    upstream = start_unbound(
        workdir,
        data.upstream_records(),
        ipv6=False,
        taskset_cpu=args.load_cpu,
        extra_config=["so-rcvbuf: 8m", "so-sndbuf: 8m"],
    )
    args.exclude_pids = [upstream.pid]
    started: list[Server] = []
    try:
        order = [("dnsmasq", start_dnsmasq), ("safegate", start_safegate)]
        for name, starter in order:
            if args.only and name != args.only:
                continue
            srv = bench_server(name, starter, data, upstream, args, results)
            if srv is None:
                continue
            started.append(srv)
            # Latency at half of this server's own peak, per query set, while it is warm.
            for qset in ("blocked", "cached", "mix"):
                peak = results["servers"][name]["runs"].get(qset, {}).get("qps", 0)
                if peak:
                    rate = max(100, int(peak / 2))
                    key = f"{name}@half-own-peak" + ("" if qset == "mix" else f"/{qset}")
                    results["latency"][key] = latency_run(
                        srv, data, rate, f"{name}-lat-{qset}", args, qset
                    )
            srv.stop()
        # Same offered load for both: dnsmasq at SafeGate's half-peak rate.
        sg_lat = results["latency"].get("safegate@half-own-peak")
        if sg_lat and not args.only:
            srv = start_dnsmasq(data, upstream, args)
            started.append(srv)
            run_dnsperf("dnsmasq", srv.pid, srv.port, data.cached_q, args=args, runs=1)
            results["latency"]["dnsmasq@safegate-rate"] = latency_run(
                srv, data, sg_lat["rate_limit"], "dnsmasq-lat2", args
            )
            srv.stop()
    finally:
        for srv in started:
            try:
                srv.stop()
            except Exception as exc:
                results["errors"][f"{srv.name}-stop"] = str(exc)[-4000:]
        upstream.stop()

    print_table(results)
    warning = busy_warning(results)
    results["machine_busy_warning"] = warning
    if warning:
        print(f"\nWARNING: {warning}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in (OUT / f"dns_compare-{stamp}.json", OUT / "dns_compare-latest.json"):
        path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {OUT / f'dns_compare-{stamp}.json'}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    if results["errors"]:
        print(f"errors: {json.dumps(results['errors'], indent=2)[:3000]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
