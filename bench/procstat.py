"""Process accounting and dnsperf runs for the DNS benchmarks (bench/dns_compare.py and friends).

CPU comes from /proc/PID/stat (utime + stime of every thread) summed over a server's process
tree, memory from /proc/PID/status (VmRSS now, VmHWM the peak) summed the same way: SafeGate
may run worker processes, unbound and dnsmasq do not here.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def tree_memory_mb(root: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak RSS of each process) summed over the tree, in MB."""
    tot = {"VmRSS": 0, "VmHWM": 0}
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key = line.split(":", 1)[0]
                if key in tot:
                    tot[key] += int(line.split()[1])
        except OSError:
            pass
    return {"rss_mb": tot["VmRSS"] / 1024, "hwm_mb": tot["VmHWM"] / 1024}


def tree_rss_mb(root: int) -> float:
    return tree_memory_mb(root)["rss_mb"]


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


def udp_socket_drops(ports: Sequence[int]) -> dict[int, int]:
    """Datagrams the kernel dropped per local UDP port (IPv4, summed over the port's sockets).

    The `drops` column of /proc/net/udp: says WHICH socket overflowed (the server's, the
    upstream's, the slow authority's), where RcvbufErrors only counts them all.
    """
    out = dict.fromkeys(ports, 0)
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        parts = line.split()
        port = int(parts[1].rsplit(":", 1)[1], 16)
        if port in out:
            out[port] += int(parts[-1])
    return out


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


# ---------------------------------------------------------------- dnsperf


@dataclass
class Load:
    """One dnsperf invocation: what to send and how (pinned to `cpu`)."""

    qfile: Path
    port: int
    cpu: int
    clients: int = 8
    outstanding: int = 100
    duration: int | None = 10  # seconds; None with `runs`
    runs: int | None = None  # passes over the file (-n)
    rate: int | None = None  # -Q
    timeout: int = 2
    verbose: bool = False  # -v: per-query latencies for the percentiles

    def command(self) -> list[str]:
        cmd = ["taskset", "-c", str(self.cpu), "dnsperf", "-s", "127.0.0.1", "-p", str(self.port)]
        cmd += ["-d", str(self.qfile), "-c", str(self.clients), "-q", str(self.outstanding)]
        cmd += ["-t", str(self.timeout)]
        cmd += ["-n", str(self.runs)] if self.runs else ["-l", str(self.duration)]
        if self.rate:
            cmd += ["-Q", str(self.rate)]
        if self.verbose:
            cmd.append("-v")
        return cmd


@dataclass
class PerfResult:
    query_file: str
    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    avg_latency_ms: float = 0.0
    rcodes: str = ""
    rate_limit: int | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)


def _num(pattern: str, text: str, cast: Callable[[str], Any] = float) -> Any:
    m = re.search(pattern, text)
    return cast(m.group(1)) if m else cast("0")


def parse_dnsperf(text: str, load: Load) -> PerfResult:
    res = PerfResult(query_file=load.qfile.name, rate_limit=load.rate)
    res.sent = _num(r"Queries sent:\s+(\d+)", text, int)
    res.completed = _num(r"Queries completed:\s+(\d+)", text, int)
    res.lost = _num(r"Queries lost:\s+(\d+)", text, int)
    res.qps = _num(r"Queries per second:\s+([\d.]+)", text)
    res.avg_latency_ms = _num(r"Average Latency \(s\):\s+([\d.]+)", text) * 1000
    m = re.search(r"Response codes:\s+(.*)", text)
    res.rcodes = m.group(1).strip() if m else ""
    if load.verbose:
        res.latency_ms = percentiles(text)
    return res


@dataclass
class Measured:
    """Concurrent dnsperf runs against one server, with the server's cost over the window."""

    perf: list[PerfResult]
    cpu_seconds: float
    cpu_us_per_query: float  # server CPU / queries answered over ALL the runs
    udp_rcvbuf_drops: int
    socket_drops: dict[str, int]  # per watched socket (name -> drops during the runs)
    other_procs_cpu_s: float
    memory_end: dict[str, float]


def measure(
    server_pid: int,
    loads: Sequence[Load],
    *,
    exclude: Sequence[int] = (),
    watch: dict[str, int] | None = None,
) -> Measured:
    """Run `loads` at once and account the server's CPU and end memory around them.

    Also recorded: UDP receive-buffer drops and the CPU that *other* processes used meanwhile
    (anything but the server, dnsperf, `exclude` and this script): a busy neighbour on a
    2-core machine silently skews every number. `watch`: name -> UDP port whose socket's drops
    are recorded.
    """
    watch = watch or {}
    outs = [ld.qfile.with_suffix(f".dnsperf{i}.txt") for i, ld in enumerate(loads)]
    ticks0 = all_cpu_ticks()
    drops0 = udp_rcvbuf_errors()
    sock0 = udp_socket_drops(list(watch.values()))
    cpu0 = tree_cpu_seconds(server_pid)
    procs = []
    for ld, out_path in zip(loads, outs, strict=True):
        with open(out_path, "w") as out:
            procs.append(
                subprocess.Popen(ld.command(), stdout=out, stderr=subprocess.PIPE, text=True)
            )
    errs = [p.communicate()[1] for p in procs]
    cpu1 = tree_cpu_seconds(server_pid)
    memory = tree_memory_mb(server_pid)
    drops1 = udp_rcvbuf_errors()
    sock1 = udp_socket_drops(list(watch.values()))
    ticks1 = all_cpu_ticks()
    results = []
    for ld, p, err, out_path in zip(loads, procs, errs, outs, strict=True):
        text = out_path.read_text()
        out_path.unlink()
        if p.returncode != 0:
            raise RuntimeError(f"dnsperf failed ({p.returncode}): {err}\n{text[-2000:]}")
        results.append(parse_dnsperf(text, ld))
    ours = {os.getpid(), *(p.pid for p in procs), *tree_pids(server_pid), *exclude}
    foreign = sum(t - ticks0.get(p, 0) for p, t in ticks1.items() if p not in ours)
    answered = sum(r.completed for r in results)
    return Measured(
        perf=results,
        cpu_seconds=cpu1 - cpu0,
        cpu_us_per_query=(cpu1 - cpu0) * 1e6 / answered if answered else 0.0,
        udp_rcvbuf_drops=drops1 - drops0,
        socket_drops={k: sock1[p] - sock0[p] for k, p in watch.items()},
        other_procs_cpu_s=foreign / CLK_TCK,
        memory_end=memory,
    )


def run_one(server_pid: int, load: Load) -> dict[str, Any]:
    """One dnsperf `load` against the server, as a flat dict (the small benches' row)."""
    m = measure(server_pid, [load])
    perf = m.perf[0]
    return {"sent": perf.sent, "completed": perf.completed, "lost": perf.lost, "qps": perf.qps,
            "rcodes": perf.rcodes, "cpu_s": m.cpu_seconds,
            "cpu_us_per_query": m.cpu_us_per_query, "other_procs_cpu_s": m.other_procs_cpu_s}
