"""Soak (issue #10): minutes at 70% of peak with reloads and feed updates; RSS and fds flat?

All real processes on loopback, as in bench/dns_compare.py and bench/feed_latency.py: an
upstream unbound (tests/support/unbound.py plus --cached-names c{i}.cached.test records), the
feed publisher (`safegate feed serve`) and one SafeGate gateway following it, whose policy
blocks a real list (--blocklist, default HaGeZi Light, 86k names from /work/shared/data).

1. Peak: one pass over the cached names (warm), then dnsperf unthrottled for --peak-seconds
   on the mix; the soak rate is --load-fraction (0.7) of that, unless --qps is given.
2. Each minute: dnsperf -l 60 -Q RATE on a fresh mix file (20% blocked names drawn from the
   list, 75% cached popular names, 5% names never asked before under miss.test, which unbound
   answers NXDOMAIN), and meanwhile
     - one policy reload: the policy file gets a new `deny` name, then SIGHUP; measured until
       that name is answered blocked (EDE 15),
     - one feed update: `safegate feed add` of a new mandatory entry on the publisher;
       measured until the gateway answers it blocked (EDE 16).
   After the slice: the gateway's VmRSS and open descriptors (/proc/PID/fd), summed over its
   process tree, and dnsperf's sent/lost/average latency. p99 comes from a prober beside
   dnsperf (20 queries/s of the same mix, its own latencies): dnsperf 2.10 has no histogram
   option, and -v (a line per query) writes hundreds of MB a minute from the load core.
   Also per minute: the CPU seconds other processes used meanwhile (a busy neighbour on a
   shared machine moves every number; dns_compare.py reports the same).
3. Verdict: RSS and fds of the last 5 minutes against minutes 2-6.

Run: `make soak SOAK_ARGS="--minutes 30"` or `.venv/bin/python bench/soak.py --minutes 3`.
Prints a markdown table; writes bench/out/soak-STAMP.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.message
import dns.query

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.dns_compare import (  # noqa: E402
    CLK_TCK,
    all_cpu_ticks,
    cached_name,
    percentiles,
    tree_pids,
    tree_rss_mb,
    versions,
)
from tests.support.procs import (  # noqa: E402
    SafeGateProcess,
    safegate_command,
    write_gateway_config,
)
from tests.support.publisher import PublisherProcess, start_publisher  # noqa: E402
from tests.support.unbound import UnboundServer, start_unbound  # noqa: E402

OUT = ROOT / "bench" / "out"
DEFAULT_BLOCKLIST = Path("/work/shared/data/hagezi/light.domains.txt")
GATEWAY_ID = "gw-soak"
FEED = "central"
EDE_BLOCKED, EDE_CENSORED = 15, 16
SLICE = 60  # seconds per dnsperf run: one table row


def policy_text(deny: str) -> str:
    return f"""\
tiers:
  soak: {{block: [ads], answer: nxdomain}}
networks:
  - {{name: loopback, cidrs: ["127.0.0.0/8"], tier: soak, deny: ["{deny}"]}}
"""


def read_blocklist(path: Path) -> list[str]:
    names = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            names.append(line)
    return names


def mix_file(path: Path, lines: int, blocked: Sequence[str], n_cached: int, tag: str,
             seed: int) -> Path:
    """20% blocked (from the list), 75% cached, 5% unique misses; `tag` keeps misses unique
    across the soak's minutes."""
    rng = random.Random(f"{seed}:{tag}")
    out = []
    miss = 0
    for _ in range(lines):
        x = rng.random()
        if x < 0.20:
            out.append(f"{rng.choice(blocked)} A\n")
        elif x < 0.95:
            out.append(f"{cached_name(rng.randrange(n_cached))} A\n")
        else:
            out.append(f"m{miss}.{tag}.miss.test A\n")
            miss += 1
    path.write_text("".join(out))
    return path


# ---------------------------------------------------------------- measurement


def tree_fds(root: int) -> int:
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):  # the process just exited
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def ede_codes(name: str, port: int) -> list[int] | None:
    """EDE codes of the gateway's answer for `name` (None when it did not answer)."""
    q = dns.message.make_query(name, "A", use_edns=0, payload=1232)
    try:
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=1.0)
    except (dns.exception.Timeout, OSError):
        return None
    return [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)]


def wait_blocked(name: str, port: int, code: int, t0: float, timeout: float = 45.0
                 ) -> float | None:
    """Seconds from t0 until `name` is answered with EDE `code`; None if not within timeout."""
    while time.monotonic() - t0 < timeout:
        codes = ede_codes(name, port)
        if codes and code in codes:
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


class Prober(threading.Thread):
    """p99 source: dnsperf reports only average latency, and its -v line per query would mean
    hundreds of MB a minute written from the load core. This sends --probe-qps queries a
    second of the same mix (its own unique misses) from its own socket, one at a time, and
    keeps its own latencies; `take()` hands over those since the last call."""

    def __init__(self, port: int, blocked: Sequence[str], n_cached: int, qps: float,
                 seed: int) -> None:
        super().__init__(daemon=True)
        self.port, self.blocked, self.n_cached, self.qps = port, blocked, n_cached, qps
        self.rng = random.Random(f"{seed}:prober")
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.lost = 0

    def _pick(self, i: int) -> str:
        x = self.rng.random()
        if x < 0.20:
            return self.rng.choice(self.blocked)
        if x < 0.95:
            return cached_name(self.rng.randrange(self.n_cached))
        return f"p{i}.probe.miss.test"

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("127.0.0.1", self.port))
            next_at, i = time.monotonic(), 0
            while not self.stop.is_set():
                q = dns.message.make_query(self._pick(i), "A")
                wire_q, i = q.to_wire(), i + 1
                t0 = time.perf_counter()
                sock.send(wire_q)
                latency = _await_reply(sock, wire_q[:2], t0, 2.0)
                with self.lock:
                    if latency is None:
                        self.lost += 1
                    else:
                        self.latencies.append(latency)
                next_at += 1 / self.qps
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def take(self) -> dict[str, float]:
        with self.lock:
            lat, lost = sorted(self.latencies), self.lost
            self.latencies, self.lost = [], 0
        if not lat:
            return {"n": 0, "lost": lost}

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000

        return {"n": len(lat), "lost": lost, "p50": pct(50), "p99": pct(99),
                "max": lat[-1] * 1000}


def _await_reply(sock: socket.socket, qid: bytes, sent: float, timeout: float
                 ) -> float | None:
    """Seconds from `sent` to the reply with this ID (stale replies skipped); None: timeout."""
    deadline = sent + timeout
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(65535)
        except (TimeoutError, OSError):
            return None
        if data[:2] == qid:
            return time.perf_counter() - sent


def run_dnsperf(port: int, qfile: Path, *, args: argparse.Namespace, seconds: int | None = None,
                runs: int | None = None, rate: int | None = None,
                verbose_to: Path | None = None) -> dict[str, Any]:
    """One dnsperf run on the load core; its summary numbers (and percentiles with -v)."""
    cmd = ["taskset", "-c", str(args.load_cpu), "dnsperf", "-s", "127.0.0.1", "-p", str(port),
           "-d", str(qfile), "-c", str(args.clients), "-q", str(args.outstanding), "-t", "2"]
    cmd += ["-n", str(runs)] if runs else ["-l", str(seconds)]
    if rate:
        cmd += ["-Q", str(rate)]
    if verbose_to:
        cmd += ["-v"]
    out_path = verbose_to or qfile.with_suffix(".dnsperf.txt")
    with open(out_path, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, check=False)
    text = out_path.read_text()
    out_path.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({proc.returncode}): {proc.stderr}\n{text[-2000:]}")
    summary = text[text.rfind("Statistics:"):]

    def num(label: str) -> float:
        for line in summary.splitlines():
            if line.strip().startswith(label):
                return float(line.split(":", 1)[1].split()[0])
        return 0.0

    res: dict[str, Any] = {
        "sent": int(num("Queries sent")), "completed": int(num("Queries completed")),
        "lost": int(num("Queries lost")), "qps": num("Queries per second"),
        "avg_ms": num("Average Latency (s)") * 1000,
    }
    if verbose_to:
        res["latency_ms"] = percentiles(text)
    return res


# ---------------------------------------------------------------- processes


def start_all(workdir: Path, blocklist: Path, args: argparse.Namespace
              ) -> tuple[UnboundServer, PublisherProcess, SafeGateProcess, Path]:
    upstream = start_unbound(
        workdir, [f"{cached_name(i)}. 3600 IN A 192.0.2.{i % 250 + 1}"
                  for i in range(args.cached_names)],
        ipv6=False, taskset_cpu=args.load_cpu,
        extra_config=["so-rcvbuf: 8m", "so-sndbuf: 8m"])
    pub: PublisherProcess | None = None
    try:
        pub = start_publisher(workdir / "publisher", gateways=(GATEWAY_ID,),
                              extra={"max_change": {"ratio": 0.1, "entries": 1000}})
        gwdir = workdir / "gateway"
        # RRL off: dnsperf is one loopback source sending tens of thousands of identical
        # answers a second; RRL would (rightly) drop them and the soak would measure RRL.
        cfg = write_gateway_config(
            gwdir, upstream_port=upstream.port, policies={"soak.yaml": policy_text("r0.soak.test")},
            lists={}, lists_yaml=f"categories:\n  ads:\n    - {{path: {blocklist.name}, "
                                 "format: domains}\n",
            ipv6=False,
            extra={"dns": {"cache": {"size": 20000}},
                   "gateway": {"id": GATEWAY_ID, "token": pub.setup.gateway_tokens[GATEWAY_ID]},
                   "feeds": [{"name": FEED, "url": f"{pub.url}/v1/feed", "type": "safegate",
                              "public_key": str(pub.setup.public_key), "interval": 60,
                              "long_poll": 30, "acks": True}],
                   "feed_guard": {"max_change": {"ratio": 0.1, "entries": 10_000_000}},
                   "limits": {"rrl": {"enabled": False}}})
        shutil.copyfile(blocklist, gwdir / "blocklists" / blocklist.name)
        gw = SafeGateProcess()
        cmd = ["taskset", "-c", str(args.server_cpu),
               *safegate_command(cfg, log_level=args.log_level)]
        gw.start(cfg, command=cmd, timeout=120)
    except BaseException:
        if pub is not None:
            pub.kill()
        upstream.stop()
        raise
    return upstream, pub, gw, gwdir / "policies" / "soak.yaml"


def feed_add(pub: PublisherProcess, name: str, eid: str) -> subprocess.CompletedProcess[str]:
    return pub.feed("add", "--type", "domain", "--value", name, "--category", "csam",
                    "--mandatory", "--authority", "Soak authority", "--decision", "SOAK/2026",
                    "--date", "2026-11-20", "--id", eid)


# ---------------------------------------------------------------- the soak


def at(t0: float, offset: float, stop: threading.Event) -> bool:
    """Sleep until t0+offset; False if the soak is being stopped."""
    delay = t0 + offset - time.monotonic()
    return not (delay > 0 and stop.wait(delay))


def minute_events(m: int, t0: float, gw: SafeGateProcess, pub: PublisherProcess,
                  policy: Path, stop: threading.Event) -> dict[str, Any]:
    """The reload at +15 s and the feed update at +35 s of minute `m` (in a thread)."""
    ev: dict[str, Any] = {}
    if not at(t0, 15, stop):
        return ev
    deny = f"r{m + 1}.soak.test"
    policy.write_text(policy_text(deny))
    t = time.monotonic()
    gw.reload()
    ev["reload_s"] = wait_blocked(deny, gw.dns_port, EDE_BLOCKED, t)
    if not at(t0, 35, stop):
        return ev
    name = f"f{m + 1}.soak.test"
    t = time.monotonic()
    r = feed_add(pub, name, f"SOAK-{m + 1}")
    if r.returncode != 0:
        ev["feed_error"] = (r.stderr or r.stdout)[-500:]
        return ev
    ev["feed_s"] = wait_blocked(name, gw.dns_port, EDE_CENSORED, t)
    return ev


def verdict(rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """RSS and fds of the last 5 minutes against minutes 2-6 (1-based, as in the table).

    The windows never overlap: a run shorter than 11 minutes compares what it has after the
    baseline (under 7 minutes: minute 2, or 1, against the last minute), and says so.
    """
    if len(rows) >= 7:
        base, last = rows[1:6], rows[max(6, len(rows) - 5):]
        what = f"minutes 2-6 vs {last[0]['minute']}-{last[-1]['minute']}"
    else:
        base, last = rows[1:2] or rows[:1], rows[-1:]
        what = f"minute {base[0]['minute']} vs {last[0]['minute']} (short run)"

    def mx(rs: list[dict[str, Any]], k: str) -> float:
        return max(float(r[k]) for r in rs)

    rss_b, rss_l = mx(base, "rss_mb"), mx(last, "rss_mb")
    fd_b, fd_l = mx(base, "fds"), mx(last, "fds")
    # Flat: the later window's peak within 10% (+2 MB) of the baseline's peak; fds within 5.
    rss_flat = rss_l <= rss_b * 1.10 + 2
    fds_flat = fd_l <= fd_b + 5
    line = (f"RSS {'flat' if rss_flat else 'GROWING'} ({rss_b:.1f} -> {rss_l:.1f} MB, "
            f"{100 * (rss_l - rss_b) / rss_b:+.1f}%), fds {'flat' if fds_flat else 'GROWING'} "
            f"({fd_b:.0f} -> {fd_l:.0f}); peaks of {what}")
    return line, {"rss_flat": rss_flat, "fds_flat": fds_flat, "rss_base_mb": rss_b,
                  "rss_last_mb": rss_l, "fds_base": fd_b, "fds_last": fd_l, "windows": what}


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| minute | RSS MB | fds | sent | lost | p99 ms (prober) | avg ms (dnsperf) "
           "| answered qps | reload s | feed s | other CPU s |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['minute']} | {r['rss_mb']:.1f} | {r['fds']} | {r['sent']:,} | "
                   f"{r['lost']:,} | {fmt(r.get('p99_ms'), '.2f')} | {r['avg_ms']:.2f} | "
                   f"{r['qps']:,.0f} | "
                   f"{fmt(r.get('reload_s'), '.2f')} | {fmt(r.get('feed_s'), '.2f')} | "
                   f"{fmt(r.get('other_cpu_s'))} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--qps", type=int, default=None, help="soak rate (default: a fraction of "
                    "the peak measured first)")
    ap.add_argument("--load-fraction", type=float, default=0.7)
    ap.add_argument("--peak-seconds", type=int, default=10)
    ap.add_argument("--blocklist", type=Path, default=DEFAULT_BLOCKLIST,
                    help="a `domains` list; the blocked 20%% of queries are drawn from it")
    ap.add_argument("--cached-names", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--outstanding", type=int, default=100)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--probe-qps", type=float, default=20.0, help="the p99 prober's rate")
    args = ap.parse_args(argv)

    for tool in ("dnsperf", "taskset"):
        if not shutil.which(tool):
            print(f"missing {tool}: run `make deps-apt`", file=sys.stderr)
            return 2
    if not args.blocklist.is_file():
        print(f"{args.blocklist}: no such list (give --blocklist PATH, a domains list)",
              file=sys.stderr)
        return 2
    blocked = read_blocklist(args.blocklist)
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = OUT / f"soak-work-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "machine": versions(), "params": {**vars(args),
                                                                 "blocklist": str(args.blocklist)},
                               "blocklist_names": len(blocked), "minutes": [], "errors": []}
    upstream, pub, gw, policy = start_all(workdir, args.blocklist, args)
    stop = threading.Event()
    prober: Prober | None = None
    pool = ThreadPoolExecutor(max_workers=2)
    results["start"] = {"rss_mb": tree_rss_mb(gw.pid), "fds": tree_fds(gw.pid)}
    print(f"gateway pid {gw.pid} ready: RSS {tree_rss_mb(gw.pid):.1f} MB, fds {tree_fds(gw.pid)}, "
          f"{len(blocked):,} blocked names from {args.blocklist}", flush=True)
    try:
        cached_q = workdir / "q-cached.txt"
        cached_q.write_text("".join(f"{cached_name(i)} A\n" for i in range(args.cached_names)))
        run_dnsperf(gw.dns_port, cached_q, args=args, runs=1, rate=5000)
        rate = args.qps
        if rate is None:
            peak_q = mix_file(workdir / "q-peak.txt", 2_000_000, blocked, args.cached_names,
                              "peak", args.seed)
            peak = run_dnsperf(gw.dns_port, peak_q, args=args, seconds=args.peak_seconds)
            peak_q.unlink()
            rate = max(100, int(peak["qps"] * args.load_fraction))
            results["peak"] = peak
            print(f"peak {peak['qps']:,.0f} qps (lost {peak['lost']}); soak at {rate:,} qps",
                  flush=True)
        results["rate_qps"] = rate
        lines = int(rate * SLICE * 1.1) + 1000  # never wraps: the misses stay unique

        def make(m: int) -> Path:
            return mix_file(workdir / f"q-{m}.txt", lines, blocked, args.cached_names,
                            f"s{m}", args.seed)

        next_file: Future[Path] = pool.submit(make, 0)
        prober = Prober(gw.dns_port, blocked, args.cached_names, args.probe_qps, args.seed)
        prober.start()
        print(table([]), flush=True)
        for m in range(args.minutes):
            qfile = next_file.result()
            if m + 1 < args.minutes:
                next_file = pool.submit(make, m + 1)
            t0 = time.monotonic()
            ticks0 = all_cpu_ticks()
            events = pool.submit(minute_events, m, t0, gw, pub, policy, stop)
            perf = run_dnsperf(gw.dns_port, qfile, args=args, seconds=SLICE, rate=rate)
            probe = prober.take()
            # CPU that other processes (not this script's tree) used meanwhile: on a shared
            # machine a busy neighbour moves every number (live processes only, approximate).
            ours = set(tree_pids(os.getpid()))
            other_s = sum(t - ticks0.get(p, 0) for p, t in all_cpu_ticks().items()
                          if p not in ours) / CLK_TCK
            qfile.unlink()
            ev = events.result()
            if not gw.running():
                results["errors"].append(f"gateway exited in minute {m + 1}: "
                                         f"{gw.stderr_text()[-3000:]}")
                break
            row = {"minute": m + 1, "rss_mb": round(tree_rss_mb(gw.pid), 1),
                   "fds": tree_fds(gw.pid), "sent": perf["sent"],
                   "completed": perf["completed"], "lost": perf["lost"],
                   "qps": perf["qps"], "avg_ms": perf["avg_ms"],
                   "p99_ms": probe.get("p99"), "probe": probe,
                   "other_cpu_s": round(other_s, 1), **ev}
            for key in ("reload_s", "feed_s"):
                if key in ev and ev[key] is None:
                    results["errors"].append(f"minute {m + 1}: {key[:-2]} not seen within 45 s")
            if "feed_error" in ev:
                results["errors"].append(f"minute {m + 1}: feed add failed: {ev['feed_error']}")
            results["minutes"].append(row)
            print(table([row]).split("\n")[-1], flush=True)
    except KeyboardInterrupt:
        results["errors"].append("interrupted")
    finally:
        stop.set()
        if prober is not None:
            prober.stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for name, fn in (("gateway", lambda: gw.stop(timeout=15)), ("publisher", pub.stop)):
            try:
                fn()
            except AssertionError as exc:
                results["errors"].append(f"{name} stop: {str(exc)[-2000:]}")
        gw.kill()
        pub.kill()
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    rows = results["minutes"]
    print("\n" + table(rows))
    if rows:
        line, detail = verdict(rows)
        results["verdict"] = {"text": line, **detail}
        print(f"\nVerdict: {line}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = OUT / f"soak-{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"JSON: {path}")
    for err in results["errors"]:
        print(f"error: {err}", file=sys.stderr)
    return 1 if results["errors"] else 0



if __name__ == "__main__":
    sys.exit(main())
