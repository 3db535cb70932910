"""Ordinary traffic under a random-subdomain ("water torture") flood (issue #12 workload f).

    .venv/bin/python bench/flood_mix.py [--duration 10] [--flood-rate 10000]

One client stream of ordinary queries (half cached names, half blocked names) is measured
twice with dnsperf: alone, then while a second dnsperf sends 100% unique `x{i}.y{i}.flood.test`
names whose authority (a small asyncio server behind unbound's stub-zone) answers each after
--authority-delay seconds. Reported: the ordinary stream's QPS and p99 in both runs, their
ratio, what happened to the flood (rcodes), the gateway's CPU and its RSS at the end of each
run. Layout as bench/dns_compare.py: the gateway pinned to --server-cpu, dnsperf, unbound and
the authority on --load-cpu. Gateway limits are the defaults (limits.upstream.inflight 1024,
inflight_per_zone 64, dns.cache.size 20,000); RRL is off (dnsperf is one source).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rrset  # noqa: E402

from bench.dns_compare import (  # noqa: E402
    BENCH_POLICY,
    bench_lists_yaml,
    blocked_name,
    cached_name,
    run_dnsperf,
    tree_cpu_seconds,
    tree_rss_mb,
    wait_answering,
)
from tests.support.procs import (  # noqa: E402
    SafeGateProcess,
    safegate_command,
    write_gateway_config,
)
from tests.support.unbound import start_unbound  # noqa: E402

OUT = ROOT / "bench" / "out"


class SlowAuthority(asyncio.DatagramProtocol):
    """flood.test's authority: NXDOMAIN + SOA for every name, `delay` seconds late."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.queries = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        r.set_rcode(dns.rcode.NXDOMAIN)
        r.authority.append(dns.rrset.from_text(
            "flood.test.", 60, "IN", "SOA", "ns.flood.test. h.flood.test. 1 3600 600 86400 60"))
        wire = r.to_wire()
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay, lambda: self.transport and self.transport.sendto(wire, addr))


def start_authority(delay: float) -> tuple[SlowAuthority, int]:
    proto = SlowAuthority(delay)
    ready = threading.Event()
    port: list[int] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        transport, _ = loop.run_until_complete(loop.create_datagram_endpoint(
            lambda: proto, local_addr=("127.0.0.1", 0)))
        port.append(transport.get_extra_info("sockname")[1])
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return proto, port[0]


def start_flood(port: int, qfile: Path, args: argparse.Namespace, seconds: int
                ) -> subprocess.Popen[bytes]:
    with open(qfile.parent / "flood.dnsperf.txt", "w") as out:
        return subprocess.Popen(
            ["taskset", "-c", str(args.load_cpu), "dnsperf", "-s", "127.0.0.1", "-p", str(port),
             "-d", str(qfile), "-c", "1", "-q", "500", "-Q", str(args.flood_rate),
             "-l", str(seconds), "-t", "2"], stdout=out, stderr=subprocess.STDOUT)


def flood_summary(workdir: Path) -> dict[str, str]:
    text = (workdir / "flood.dnsperf.txt").read_text()
    return {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.strip().startswith(("Queries sent", "Queries completed", "Queries lost",
                                        "Response codes", "Queries per second"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=100_000, help="blocklist size")
    ap.add_argument("--cached-names", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--outstanding", type=int, default=100)
    ap.add_argument("--flood-rate", type=int, default=10_000, help="flood queries per second")
    ap.add_argument("--authority-delay", type=float, default=0.2)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.load_cpu})   # this script (and the authority thread) too

    workdir = OUT / "work-flood"
    subprocess.run(["rm", "-rf", str(workdir)], check=True)
    (workdir / "safegate").mkdir(parents=True)
    rng = random.Random(1)
    blocked = [blocked_name(i) for i in range(args.names)]
    list_path = workdir / "bench-blocklist.domains"
    list_path.write_text("\n".join(blocked) + "\n")
    ordinary = workdir / "q-ordinary.txt"
    ordinary.write_text("".join(
        f"{cached_name(rng.randrange(args.cached_names)) if i % 2 else rng.choice(blocked)} A\n"
        for i in range(200_000)))
    flood = workdir / "q-flood.txt"
    flood.write_text("".join(f"x{i}.y{i}.flood.test A\n"
                             for i in range(args.flood_rate * (args.duration + 5))))
    authority, auth_port = start_authority(args.authority_delay)
    upstream = start_unbound(
        workdir, [f"{cached_name(i)}. 3600 IN A 192.0.2.{i % 250 + 1}"
                  for i in range(args.cached_names)],
        ipv6=False, taskset_cpu=args.load_cpu,
        extra_config=["so-rcvbuf: 8m", "so-sndbuf: 8m", "qname-minimisation: no",
                      'local-zone: "flood.test." transparent',
                      "stub-zone:", '  name: "flood.test."', f"  stub-addr: 127.0.0.1@{auth_port}",
                      "server:"])
    args.exclude_pids = [upstream.pid]
    config = write_gateway_config(
        workdir / "safegate", upstream_port=upstream.port,
        policies={"bench.yaml": BENCH_POLICY}, lists={},
        lists_yaml=bench_lists_yaml(list_path),
        extra={"limits": {"rrl": {"enabled": False}}}, ipv6=False)
    (workdir / "safegate" / "blocklists" / list_path.name).write_bytes(list_path.read_bytes())
    sg = SafeGateProcess()
    cmd = ["taskset", "-c", str(args.server_cpu), *safegate_command(config, log_level="info")]
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "label": args.label,
                               "params": {k: v for k, v in vars(args).items()
                                          if k != "exclude_pids"}}
    try:
        sg.start(config, command=cmd, timeout=300)
        wait_answering(sg.dns_port, cached_name(0), 30, sg.running)
        run_dnsperf("safegate", sg.pid, sg.dns_port, ordinary, args=args, runs=1)   # warm
        for phase in ("alone", "flooded"):
            flooder = None
            if phase == "flooded":
                flooder = start_flood(sg.dns_port, flood, args, args.duration + 4)
                time.sleep(2)   # let the flood fill the zone's share first
            cpu0 = tree_cpu_seconds(sg.pid)
            t0 = time.monotonic()
            res = run_dnsperf("safegate", sg.pid, sg.dns_port, ordinary, args=args,
                              verbose_to=workdir / f"ordinary-{phase}.txt")
            wall = time.monotonic() - t0
            cpu = tree_cpu_seconds(sg.pid) - cpu0
            entry: dict[str, Any] = {
                "qps": res.qps, "completed": res.completed, "lost": res.lost,
                "rcodes": res.rcodes, "latency_ms": res.latency_ms,
                "cpu_us_per_query": res.cpu_us_per_query,
                "gateway_cpu_share": cpu / wall, "rss_mb_end": tree_rss_mb(sg.pid),
                "other_procs_cpu_s": res.other_procs_cpu_s}
            if flooder is not None:
                flooder.wait()
                entry["flood"] = flood_summary(workdir)
                entry["authority_queries"] = authority.queries
            results[phase] = entry
            print(phase, json.dumps(entry, indent=1), flush=True)
        # The flood alone: the gateway's CPU per flood query (most refused at the zone share).
        cpu0 = tree_cpu_seconds(sg.pid)
        start_flood(sg.dns_port, flood, args, args.duration).wait()
        cpu = tree_cpu_seconds(sg.pid) - cpu0
        fl = flood_summary(workdir)
        done = int(fl.get("Queries completed", "0").split()[0])
        results["flood_only"] = {**fl, "cpu_us_per_flood_query": cpu * 1e6 / done if done else 0,
                                 "rss_mb_end": tree_rss_mb(sg.pid)}
        print("flood_only", json.dumps(results["flood_only"], indent=1), flush=True)
        metrics = sg.metrics_text()
        results["metrics"] = [line for line in metrics.splitlines()
                              if line.startswith(("safegate_upstream_dropped",
                                                  "safegate_cache_segment", "safegate_cache_ent",
                                                  "safegate_cache_promotions"))]
    finally:
        try:
            sg.stop(timeout=10)
        finally:
            sg.kill()
            upstream.stop()
    alone, flooded = results["alone"], results["flooded"]
    results["qps_ratio"] = flooded["qps"] / alone["qps"] if alone["qps"] else 0.0
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"flood_mix-{args.label or 'run'}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"ordinary stream: {alone['qps']:.0f} qps alone, {flooded['qps']:.0f} flooded "
          f"({results['qps_ratio']:.2f}x); p99 {alone['latency_ms'].get('p99', 0):.2f} -> "
          f"{flooded['latency_ms'].get('p99', 0):.2f} ms; CPU-us/query ordinary "
          f"{alone['cpu_us_per_query']:.1f}, flood "
          f"{results['flood_only']['cpu_us_per_flood_query']:.1f}; gateway CPU share "
          f"{alone['gateway_cpu_share']:.2f} / {flooded['gateway_cpu_share']:.2f}; RSS end "
          f"{results['flood_only']['rss_mb_end']:.1f} MB -> {out}")
    for line in results["metrics"]:
        print(" ", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
