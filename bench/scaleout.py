"""ISP scale-out on one machine: N SafeGate nodes behind dnsdist, QPS vs N and a node killed.

What runs (all on loopback): a real unbound upstream (tests/support/unbound.py), SafeGate nodes
on 127.0.0.11, .12, .13 (one process each), and Debian's dnsdist on 127.0.0.10 with the
shipped deploy/dnsdist/dnsdist.conf (settings from environment variables), querying the nodes
from 127.0.0.2 with PROXY v2 (that address is each node's dns.trusted_frontends). dnsperf sends
its queries to dnsdist from a subscriber's address, so every answer went through the
subscriber's policy on some node.

Why the numbers are not capacity: this is a 2-core VM. dnsperf, dnsdist, unbound and every
SafeGate node share the same two cores, so adding nodes adds processes competing for them.
The runs show the front end's overhead and that the path keeps working as nodes are added and
killed; an ISP's nodes each have their own cores.

Run: `.venv/bin/python bench/scaleout.py [--duration 10]`. Prints tables and writes JSON to
bench/out/scaleout.json. tests/test_scaleout.py imports the cluster helpers from here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.dns_compare import (  # noqa: E402
    CLK_TCK,
    all_cpu_ticks,
    tree_cpu_seconds,
    tree_pids,
)
from tests.support.dnsdist import Dnsdist, launch_dnsdist  # noqa: E402
from tests.support.procs import (  # noqa: E402
    SafeGateProcess,
    free_port,
    write_gateway_config,
)
from tests.support.unbound import UnboundServer, start_unbound  # noqa: E402

SHIPPED_CONF = ROOT / "deploy" / "dnsdist" / "dnsdist.conf"
OUT = ROOT / "bench" / "out"

FRONT_LISTEN = "127.0.0.10"    # where subscribers (dnsperf, the test) query dnsdist
FRONT_SOURCE = "127.0.0.2"     # dnsdist's source towards the nodes: their trusted front end
NODE_ADDRESSES = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
KIDS_SUBSCRIBER = "127.0.8.5"  # subscribers.csv: kids, filtered (EDE 17)
ISP_CUSTOMER = "127.0.8.6"     # no subscriber line: the isp network's tier (adults)

# The front end's own address is an allowlist-only tier that allows nothing, as
# deploy/dnsdist/README.md recommends: dnsdist's health probe (PROXY LOCAL header, so placed
# by dnsdist's address) is answered NXDOMAIN by the node itself, without the upstream.
POLICY = """\
tiers:
  kids: {block: [adult, gambling], answer: nxdomain}
  adults: {block: [adult], answer: nxdomain}
  frontend: {block: [], default: block, answer: nxdomain}
networks:
  - {name: frontends, cidrs: ["127.0.0.2/32"], tier: frontend}
  - {name: isp, cidrs: ["127.0.8.0/24"], tier: adults}
"""
SUBSCRIBERS = "prefix,tier,filtered\n127.0.8.5,kids,yes\n"
LISTS_YAML = """\
categories:
  adult: [{path: adult.txt, format: domains}]
  gambling: [{path: gambling.txt, format: domains}]
"""
N_BLOCKED = 1000               # b{i}.gamble.test: blocked for kids (suffix of gamble.test)
N_CACHED = 1000                # c{i}.cached.test: served by unbound, then from node caches


def cached_name(i: int) -> str:
    return f"c{i}.cached.test"


def blocked_name(i: int) -> str:
    return f"b{i}.gamble.test"


def upstream_records() -> list[str]:
    """Extra unbound data: the allowed names the bench asks for."""
    return [f"{cached_name(i)}. 3600 IN A 192.0.2.{i % 250 + 1}" for i in range(N_CACHED)]


def write_node_config(directory: Path, address: str, upstream_port: int) -> Path:
    """gateway.yaml for one node: DNS, web and metrics on `address`, trusting FRONT_SOURCE."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "subscribers.csv").write_text(SUBSCRIBERS)
    return write_gateway_config(
        directory, upstream_port=upstream_port, policies={"isp.yaml": POLICY},
        lists={"adult.txt": "adult.example\n", "gambling.txt": "gamble.test\n"},
        lists_yaml=LISTS_YAML, ipv6=False,
        extra={"subscribers": "subscribers.csv",
               "dns": {"listen": [f"{address}:{free_port(v6=False)}"],
                       "trusted_frontends": [f"{FRONT_SOURCE}/32"], "proxy_protocol": True},
               "web": {"listen": f"{address}:{free_port(v6=False, udp=False)}"},
               "metrics": {"listen": f"{address}:{free_port(v6=False, udp=False)}"}})


def start_nodes(workdir: Path, count: int, upstream_port: int,
                *, log_level: str = "info") -> list[SafeGateProcess]:
    """Start `count` nodes at once and wait until each is ready (lists loaded, DNS bound)."""
    nodes: list[SafeGateProcess] = []
    try:
        for address in NODE_ADDRESSES[:count]:
            config = write_node_config(workdir / f"node-{address}", address, upstream_port)
            nodes.append(SafeGateProcess().start(config, wait_ready=False, log_level=log_level))
        for node in nodes:
            node.wait_ready(30)
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return nodes


def node_target(node: SafeGateProcess) -> str:
    """The node's dns.listen address as dnsdist's newServer wants it."""
    host, port = node.dns_addrs[0]
    return f"{host}:{port}"


@dataclass
class Front:
    """dnsdist with the shipped config, and its JSON API (server states, per-node counts)."""

    dnsdist: Dnsdist
    api: str
    api_key: str

    def servers(self) -> dict[str, dict[str, Any]]:
        """name -> dnsdist's view of that backend (state, queries, ...)."""
        req = urllib.request.Request(f"{self.api}/api/v1/servers/localhost",
                                     headers={"X-API-Key": self.api_key})
        with urllib.request.urlopen(req, timeout=2) as resp:
            data = json.load(resp)
        return {s["name"]: s for s in data["servers"]}

    def states(self) -> dict[str, str]:
        return {name: str(s["state"]).lower() for name, s in self.servers().items()}

    def wait_states(self, want: dict[str, str], timeout: float = 10.0) -> float:
        """Poll every 20 ms until each named node has the wanted state; seconds it took."""
        t0 = time.monotonic()
        last: dict[str, str] = {}
        while time.monotonic() - t0 < timeout:
            last = self.states()
            if all(last.get(name) == state for name, state in want.items()):
                return time.monotonic() - t0
            time.sleep(0.02)
        raise TimeoutError(f"dnsdist states {last}, wanted {want} within {timeout}s\n"
                           f"{self.dnsdist.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.dnsdist.stop()


def front_env(nodes: Sequence[SafeGateProcess], port: int, web_port: int,
              api_key: str) -> dict[str, str]:
    """The shipped config's settings for this loopback simulation."""
    return {
        "SAFEGATE_DNSDIST_LISTEN": f"{FRONT_LISTEN}:{port}",
        "SAFEGATE_DNSDIST_ACL": "127.0.0.0/8",
        "SAFEGATE_NODES": ",".join(node_target(n) for n in nodes),
        "SAFEGATE_DNSDIST_SOURCE": FRONT_SOURCE,
        "SAFEGATE_DNSDIST_WEB": f"127.0.0.1:{web_port}",
        "SAFEGATE_DNSDIST_API_KEY": api_key,
    }


def start_front(workdir: Path, nodes: Sequence[SafeGateProcess]) -> Front:
    """dnsdist from deploy/dnsdist/dnsdist.conf in front of `nodes`, every node marked up."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port(v6=False)
    web_port = free_port(v6=False, udp=False)
    api_key = secrets.token_hex(16)
    dd = launch_dnsdist(SHIPPED_CONF, workdir / "dnsdist.log", listen=FRONT_LISTEN, port=port,
                        env=front_env(nodes, port, web_port, api_key))
    front = Front(dd, f"http://127.0.0.1:{web_port}", api_key)
    try:
        front.wait_states({f"safegate-{i + 1}": "up" for i in range(len(nodes))})
    except BaseException:
        front.stop()
        raise
    return front


# ---------------------------------------------------------------- dnsperf


@dataclass
class PerfResult:
    nodes: int
    label: str
    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    avg_latency_ms: float = 0.0
    rcodes: str = ""
    per_node_queries: dict[str, int] = field(default_factory=dict)
    notes: dict[str, float] = field(default_factory=dict)


def _num(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


def write_queries(path: Path) -> Path:
    """80 % allowed names (cached after the first pass), 20 % names blocked for kids."""
    lines = []
    for i in range(N_CACHED):
        lines.append(f"{cached_name(i)} A\n")
        if i % 4 == 0:
            lines.append(f"{blocked_name(i)} A\n")
    path.write_text("".join(lines))
    return path


def dnsperf(target: tuple[str, int], qfile: Path, out: Path, *, duration: float | None = None,
            runs: int | None = None, rate: int | None = None, source: str = KIDS_SUBSCRIBER,
            timeout: float = 1.0, ours: Sequence[int] = ()) -> tuple[str, float]:
    """Run dnsperf against target (dnsdist, or a node directly) from `source`.

    Returns its report and the CPU seconds that processes other than dnsperf and `ours` used
    meanwhile: this 2-core VM is shared, and a busy neighbour skews every number.
    """
    cmd = ["dnsperf", "-s", target[0], "-p", str(target[1]),
           "-a", source, "-d", str(qfile), "-c", "8", "-q", "200", "-t", str(timeout)]
    cmd += ["-n", str(runs)] if runs else ["-l", str(duration)]
    if rate:
        cmd += ["-Q", str(rate)]
    ticks0 = all_cpu_ticks()
    with out.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        proc.wait()
    ticks1 = all_cpu_ticks()
    text = out.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({proc.returncode}):\n{text[-2000:]}")
    mine = {os.getpid(), proc.pid}
    for pid in ours:
        mine.update(tree_pids(pid))
    foreign = sum(t - ticks0.get(p, 0) for p, t in ticks1.items() if p not in mine)
    return text, foreign / CLK_TCK


def parse(report: tuple[str, float], nodes: int, label: str) -> PerfResult:
    text, foreign_cpu = report
    res = PerfResult(nodes=nodes, label=label)
    res.notes["other_processes_cpu_s"] = round(foreign_cpu, 1)
    res.sent = int(_num(r"Queries sent:\s+(\d+)", text))
    res.completed = int(_num(r"Queries completed:\s+(\d+)", text))
    res.lost = int(_num(r"Queries lost:\s+(\d+)", text))
    res.qps = _num(r"Queries per second:\s+([\d.]+)", text)
    res.avg_latency_ms = _num(r"Average Latency \(s\):\s+([\d.]+)", text) * 1000
    m = re.search(r"Response codes:\s+(.*)", text)
    res.rcodes = m.group(1).strip() if m else ""
    return res


def node_counts(front: Front) -> dict[str, int]:
    return {name: int(s.get("queries", 0)) for name, s in front.servers().items()}


def _cpu(front: Front, nodes: Sequence[SafeGateProcess]) -> dict[str, float]:
    """CPU seconds used so far by dnsdist and by all nodes together."""
    return {"dnsdist": tree_cpu_seconds(front.dnsdist.proc.pid),
            "nodes": sum(tree_cpu_seconds(n.pid) for n in nodes)}


def throughput(workdir: Path, upstream: UnboundServer, count: int,
               args: argparse.Namespace) -> list[PerfResult]:
    """QPS through dnsdist with `count` nodes (after one warming pass over the names)."""
    base = workdir / f"n{count}"
    nodes = start_nodes(base, count, upstream.port)
    front = start_front(base / "dnsdist", nodes)
    try:
        qfile = write_queries(base / "queries.txt")
        target = (front.dnsdist.address, front.dnsdist.port)
        ours = [front.dnsdist.proc.pid, upstream.pid, *(n.pid for n in nodes)]
        dnsperf(target, qfile, base / "warm.txt", runs=1, rate=5000)
        runs = [(target, "through dnsdist")]
        if count == 1:   # the same node without dnsdist: what the front end costs
            runs.insert(0, (nodes[0].dns_addrs[0], "direct, no dnsdist"))
        out: list[PerfResult] = []
        for i, (where, label) in enumerate(runs):
            before, cpu0 = node_counts(front), _cpu(front, nodes)
            res = parse(dnsperf(where, qfile, base / f"peak-{i}.txt", duration=args.duration,
                                ours=ours), count, label)
            after, cpu1 = node_counts(front), _cpu(front, nodes)
            res.per_node_queries = {k: after[k] - before.get(k, 0) for k in after}
            if res.completed:   # CPU per answered query: steadier than QPS on a shared VM
                for key in cpu1:
                    res.notes[f"{key}_cpu_us_per_query"] = round(
                        (cpu1[key] - cpu0[key]) * 1e6 / res.completed, 1)
            out.append(res)
        return out
    finally:
        front.stop()
        for node in nodes:
            node.kill()


def kill_one(workdir: Path, upstream: UnboundServer, args: argparse.Namespace,
             sig: signal.Signals) -> PerfResult:
    """3 nodes at a fixed offered rate; one gets `sig` mid-run; lost queries, time to 'down'.

    SIGKILL: the port closes, dnsdist's next probe gets "connection refused". SIGSTOP: the
    node hangs with its socket open (like a wedged process or a machine gone from the
    network), so probes time out: the slower case.
    """
    base = workdir / f"kill-{sig.name}"
    nodes = start_nodes(base, 3, upstream.port)
    front = start_front(base / "dnsdist", nodes)
    try:
        qfile = write_queries(base / "queries.txt")
        target = (front.dnsdist.address, front.dnsdist.port)
        dnsperf(target, qfile, base / "warm.txt", runs=1, rate=5000)
        marks: dict[str, float] = {}

        def killer() -> None:
            time.sleep(args.kill_after)
            victim = nodes[0]
            assert victim.proc is not None
            victim.proc.send_signal(sig)
            marks["killed"] = time.monotonic()
            marks["down"] = marks["killed"] + front.wait_states({"safegate-1": "down"}, 15)

        thread = threading.Thread(target=killer)
        before = node_counts(front)
        thread.start()
        ours = [front.dnsdist.proc.pid, upstream.pid, *(n.pid for n in nodes)]
        res = parse(dnsperf(target, qfile, base / "kill.txt", duration=args.kill_duration,
                            rate=args.kill_rate, ours=ours), 3, f"{sig.name} one of 3")
        thread.join()
        after = node_counts(front)
        res.per_node_queries = {k: after[k] - before.get(k, 0) for k in after}
        res.notes["seconds_until_marked_down"] = round(marks["down"] - marks["killed"], 3)
        res.notes["offered_qps"] = args.kill_rate
        res.notes["killed_after_s"] = args.kill_after
        return res
    finally:
        front.stop()
        for node in nodes:
            node.kill()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per QPS run")
    ap.add_argument("--kill-duration", type=float, default=12.0)
    ap.add_argument("--kill-after", type=float, default=4.0, help="seconds into the run")
    ap.add_argument("--kill-rate", type=int, default=5000, help="offered QPS in the kill run")
    ap.add_argument("--nodes", type=int, nargs="*", default=[1, 2, 3])
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = OUT / "scaleout"
    workdir.mkdir(parents=True, exist_ok=True)
    upstream = start_unbound(workdir, upstream_records(), ipv6=False)
    results: list[PerfResult] = []
    try:
        for count in args.nodes:
            for r in throughput(workdir, upstream, count, args):
                results.append(r)
                print(f"{count} node(s), {r.label}: {r.qps:9.0f} qps  "
                      f"avg {r.avg_latency_ms:.2f} ms  lost {r.lost}/{r.sent}  "
                      f"per node {r.per_node_queries}  [{r.rcodes}]  {r.notes}", flush=True)
        for sig in (signal.SIGKILL, signal.SIGSTOP):
            k = kill_one(workdir, upstream, args, sig)
            results.append(k)
            print(f"{sig.name}: lost {k.lost}/{k.sent} at {k.notes['offered_qps']} qps; "
                  f"marked down {k.notes['seconds_until_marked_down']} s after the signal; "
                  f"per node {k.per_node_queries}  [{k.rcodes}]  other processes' CPU "
                  f"{k.notes['other_processes_cpu_s']} s", flush=True)
    finally:
        upstream.stop()
    (OUT / "scaleout.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
