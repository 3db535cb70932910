"""Fleet scale: thousands of gateways (the real feed client, ledger, ack outbox) against one
publisher behind a caching nginx (issue #13 items 4 and 5; figures in docs/fleet-scale.md).

All real processes on loopback: the publisher (`python -m gateway feed serve`, one SQLite
file, the gateways and their tokens in publisher.yaml), Debian's nginx as the caching reverse
proxy of docs/feeds-contract.md, and worker processes (bench/fleetsim.py) each running
--per-process simulated gateways in one event loop, every one with its own identity, token,
state directory (on /dev/shm) and ledger, following the feed by serial with long polls.

Phases (times are from the moment the publishing POST returned; "acked" is when the
publisher's database holds the gateway's verified ack, polled every --poll seconds):
1. start-up: every gateway fetches its first snapshot (through nginx);
2. one entry: time until 50 / 99 / 100 % of gateways acked it;
3. burst: --burst entries, one serial each, back to back: time until 50 / 99 / 100 % of
   gateways acked all of them;
4. restart: one entry; once a quarter of the fleet acked, the publisher is killed (SIGKILL)
   and started again; every gateway's ack must arrive (lost acks = gateways minus acks);
5. join: a second publisher with a --join-entries feed, behind its own nginx; --join
   gateways with no state fetch its head and snapshot at once and verify both signatures
   (fetch and verify only: applying a 100k-entry feed in 10,000 simulated gateways would need
   ~400 GB of RAM here). Bytes the publisher sent vs bytes nginx sent.
Throughout: the publisher's own request counters (safegate_publisher_feed_requests_total by
kind) and its RSS (sampled, plus VmHWM at the end).

Run: `make bench-fleet` or `.venv/bin/python bench/fleet.py --gateways 1000`. Writes JSON to
bench/out/fleet-N.json and prints a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fleetsim import gateway_id, gateway_token  # noqa: E402
from tests.support.nginx_cache import start_caching_nginx  # noqa: E402
from tests.support.publisher import (  # noqa: E402
    PublisherProcess,
    write_publisher_config,
)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry(rid: str, value: str) -> dict[str, Any]:
    return {"id": rid, "type": "domain", "value": value, "categories": ["csam"],
            "mandatory": True, "issued_at": now_iso(),
            "legal_basis": {"authority": "Bộ Công an", "decision": "123/QĐ-BCA",
                            "date": "2026-11-20"}}


class RssSampler:
    """The publisher's VmRSS every half second (across restarts: the pid is re-read)."""

    def __init__(self, pid: Callable[[], int | None]) -> None:
        self.pid = pid
        self.peak_kb = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self.peak_kb = max(self.peak_kb, status_kb(self.pid(), "VmRSS"))


def status_kb(pid: int | None, field: str) -> int:
    if pid is None:
        return 0
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


class Cpu:
    """CPU seconds used by the publisher, nginx (workers) and the fleet workers per phase."""

    def __init__(self, pub: PublisherProcess, nginx_pid: int, workers: list[int]) -> None:
        self.pub = pub
        self.nginx = [nginx_pid, *children(nginx_pid)]
        self.workers = workers

    def now(self) -> dict[str, float]:
        return {"publisher": cpu_seconds(self.pub.proc.pid if self.pub.proc else None),
                "nginx": sum(cpu_seconds(p) for p in self.nginx),
                "fleet_workers": sum(cpu_seconds(p) for p in self.workers)}

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before[k], 2) for k in after}


class Workers:
    """The worker processes and the last status line of each."""

    def __init__(self, n: int, per: int, url: str, pubkey: Path, state: Path, logs: Path,
                 long_poll: float) -> None:
        self.status: dict[int, dict[str, Any]] = {}
        self.procs: list[subprocess.Popen[str]] = []
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for w, first in enumerate(range(0, n, per)):
            count = min(per, n - first)
            err = open(logs / f"worker-{w}.log", "w")   # noqa: SIM115 (lives as long as it)
            p = subprocess.Popen(
                [sys.executable, "-m", "bench.fleetsim", "--first", str(first), "--count",
                 str(count), "--url", url, "--public-key", str(pubkey), "--state", str(state),
                 "--long-poll", str(long_poll)], stdout=subprocess.PIPE, stderr=err, text=True,
                cwd=ROOT, env=env)
            self.procs.append(p)
            threading.Thread(target=self._read, args=(w, p), daemon=True).start()

    def _read(self, w: int, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            try:
                self.status[w] = json.loads(line)
            except ValueError:
                continue

    def at(self, serial: int) -> int:
        """Gateways whose applied serial is `serial` or newer."""
        return sum(n for st in self.status.values() for s, n in st["serials"].items()
                   if int(s) >= serial)

    def rejected(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for st in self.status.values():
            for k, v in st["rejected"].items():
                out[k] = out.get(k, 0) + v
        return out

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"a fleet worker exited with {p.returncode}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def wait(what: str, cond: Callable[[], bool], timeout: float, poll: float = 0.2,
         alive: Callable[[], None] | None = None) -> float:
    start = time.monotonic()
    while not cond():
        if alive is not None:
            alive()
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"not within {timeout:.0f}s: {what}")
        time.sleep(poll)
    return time.monotonic() - start


SCRAPES: list[tuple[float, int]] = []   # (seconds, bytes) of each /metrics scrape


def feed_counters(pub: PublisherProcess) -> dict[str, float]:
    """safegate_publisher_feed_{requests (200s), bytes} by kind from the publisher."""
    t0 = time.monotonic()
    text = pub.request("GET", "/metrics", timeout=120).body.decode()
    SCRAPES.append((round(time.monotonic() - t0, 2), len(text)))
    out: dict[str, float] = {}
    for kind, value in re.findall(r'safegate_publisher_feed_requests_total\{kind="(\w+)",'
                                  r'status="200"\} (\S+)', text):
        out[f"{kind}_requests"] = float(value)
    for kind, value in re.findall(r'safegate_publisher_feed_bytes_total\{kind="(\w+)"\} '
                                  r'(\S+)', text):
        out[f"{kind}_bytes"] = float(value)
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


class AckWatch:
    """Polls the publisher's database (read-only) for verified acks of given entries."""

    def __init__(self, db: Path, gateways: int, poll: float) -> None:
        self.db = db
        self.gateways = gateways
        self.poll = poll

    def _counts(self, ids: list[str]) -> list[int]:
        """Per gateway that acked any: how many of `ids` it acked verified."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            marks = ",".join("?" * len(ids))
            return [r[0] for r in conn.execute(
                f"SELECT count(*) FROM acks WHERE entry_id IN ({marks}) AND verified_at IS NOT "
                "NULL GROUP BY gateway", ids)]
        finally:
            conn.close()

    def complete(self, ids: list[str]) -> int:
        return sum(1 for c in self._counts(ids) if c == len(ids))

    def track(self, ids: list[str], t0: float, timeout: float,
              on_tick: Callable[[int], None] | None = None,
              poll: float | None = None) -> dict[str, Any]:
        """Seconds from t0 until 50 / 99 / 100 % of gateways acked all `ids`."""
        marks = {"p50": math.ceil(self.gateways * 0.5), "p99": math.ceil(self.gateways * 0.99),
                 "p100": self.gateways}
        out: dict[str, Any] = {}
        done = 0
        while len(out) < len(marks):
            done = self.complete(ids)
            t = time.monotonic() - t0
            for name, need in marks.items():
                if name not in out and done >= need:
                    out[name] = round(t, 2)
            if on_tick is not None:
                on_tick(done)
            if t > timeout:
                break
            time.sleep(self.poll if poll is None else poll)
        out["acked"] = done
        return out


def publish(pub: PublisherProcess, entries: list[dict[str, Any]]) -> int:
    r = pub.request("POST", "/v1/entries", body={"entries": entries, "force": True},
                    token=pub.setup.admin_token, timeout=600)
    if r.status != 201:
        raise RuntimeError(f"publish failed: {r.status} {r.body[:300]!r}")
    return int(r.json()["serial"])


def write_config(directory: Path, n: int) -> PublisherProcess:
    gws = [{"id": gateway_id(i), "token": gateway_token(i)} for i in range(n)]
    setup = write_publisher_config(directory, gateways=(), extra={"gateways": gws})
    return PublisherProcess(setup)


def phase_fleet(args: argparse.Namespace, work: Path, state: Path, result: dict[str, Any]
                ) -> None:
    n = args.gateways
    pub = write_config(work / "pub", n).start(timeout=120)
    sampler = RssSampler(lambda: pub.proc.pid if pub.proc else None)
    nginx = start_caching_nginx(work / "nginx", pub.url.removeprefix("http://"),
                                worker_connections=n + 4096, workers=2)
    workers: Workers | None = None
    try:
        serial = publish(pub, [entry(f"S-{i}", f"s{i}.fleet.test")
                               for i in range(args.base_entries)])
        db = pub.setup.directory / "var" / "publisher.sqlite3"
        acks = AckWatch(db, n, args.poll)
        t0 = time.monotonic()
        workers = Workers(n, args.per_process, nginx.url + "/v1/feed",
                          pub.setup.public_key, state, work, args.long_poll)
        ws = workers
        result["loadavg_startup"] = os.getloadavg()
        result["startup_s"] = round(wait("every gateway applied the first snapshot",
                                         lambda: ws.at(serial) >= n, args.timeout,
                                         alive=ws.check_alive), 2)
        wait("the start-up acks", lambda: acks.complete([f"S-{i}" for i in
                                                          range(args.base_entries)]) >= n,
             args.timeout, poll=args.poll)
        result["startup_acked_s"] = round(time.monotonic() - t0, 2)
        print(f"start-up: {n} gateways at serial {serial} in {result['startup_s']}s, acked "
              f"in {result['startup_acked_s']}s", flush=True)
        time.sleep(2)   # every gateway back in its long poll
        cpu = Cpu(pub, nginx.proc.pid, [p.pid for p in workers.procs])

        before, cpu0 = feed_counters(pub), cpu.now()
        t0 = time.monotonic()
        publish(pub, [entry("ONE-1", "one.fleet.test")])
        one = acks.track(["ONE-1"], t0, args.timeout)
        one["cpu_s"] = Cpu.used(cpu0, cpu.now())
        one["publisher"] = delta(feed_counters(pub), before)
        result["one_entry"] = one
        print(f"one entry: {one}", flush=True)
        time.sleep(2)

        before, cpu0 = feed_counters(pub), cpu.now()
        ids = [f"B-{i}" for i in range(args.burst)]
        t0 = time.monotonic()
        for rid in ids:
            publish(pub, [entry(rid, f"{rid.lower()}.fleet.test")])
        published = time.monotonic() - t0
        burst = acks.track(ids, t0, args.timeout)
        burst["publish_s"] = round(published, 2)
        burst["cpu_s"] = Cpu.used(cpu0, cpu.now())
        burst["serials"] = args.burst
        burst["publisher"] = delta(feed_counters(pub), before)
        result["burst"] = burst
        print(f"burst of {args.burst}: {burst}", flush=True)
        time.sleep(2)

        t0 = time.monotonic()
        publish(pub, [entry("R-1", "restart.fleet.test")])
        killed: dict[str, Any] = {}

        def kill_once(done: int) -> None:
            # As soon as acks flow (a quarter of the fleet for big fleets): the rest are in
            # flight or still to be sent when the publisher dies.
            if not killed and done >= max(1, n // 4):
                killed["acked_before_kill"] = done
                killed["at_s"] = round(time.monotonic() - t0, 2)
                killed["vmhwm_kb_before"] = status_kb(pub.proc.pid if pub.proc else None,
                                                      "VmHWM")
                pub.kill()   # SIGKILL
                time.sleep(1.0)
                pub.start(timeout=120)
                killed["restarted_at_s"] = round(time.monotonic() - t0, 2)

        restart = acks.track(["R-1"], t0, args.timeout, on_tick=kill_once, poll=0.05)
        restart.update(killed)
        restart["lost_acks"] = n - restart["acked"]
        restart["kill_was_mid_flow"] = killed.get("acked_before_kill", n) < n
        result["restart"] = restart
        print(f"restart: {restart}", flush=True)
        result["gateway_state_bytes"] = sum(f.stat().st_size for f in state.rglob("*")
                                            if f.is_file())
        result["gateway_rejected"] = workers.rejected()
        result["publisher_rss_kb_end"] = status_kb(pub.proc.pid if pub.proc else None, "VmRSS")
        result["publisher_vmhwm_kb_end"] = status_kb(pub.proc.pid if pub.proc else None,
                                                     "VmHWM")
        result["publisher_rss_kb_peak_sampled"] = sampler.peak_kb
        result["publisher_totals_since_restart"] = feed_counters(pub)
        result["nginx_feed_bytes"] = nginx.bytes_sent()
        result["nginx_feed_requests"] = sum(1 for f in nginx.log_lines()
                                            if f[1].startswith("/v1/feed/"))
    finally:
        sampler.stop.set()
        if workers is not None:
            workers.stop()
        nginx.stop()
        pub.kill()


def phase_join(args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    pub = write_config(work / "pub-join", 1)
    store_db = pub.setup.directory / "var" / "publisher.sqlite3"
    sys.path.insert(0, str(ROOT))
    from gateway.feedformat.document import make_entry
    from gateway.publisher.store import Store
    store = Store(store_db)
    batch = [make_entry(entry(f"J-{i}", f"j{i}.join.fleet.test"))
             for i in range(args.join_entries)]
    store.add_entries(batch)
    store.close()
    pub.start(timeout=120)
    nginx = start_caching_nginx(work / "nginx-join", pub.url.removeprefix("http://"),
                                worker_connections=args.join + 4096, workers=2)
    peak = RssSampler(lambda: pub.proc.pid if pub.proc else None)
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        t0 = time.monotonic()
        procs = []
        for first in range(0, args.join, args.per_process):
            count = min(args.per_process, args.join - first)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.fleetsim", "--join", "--count", str(count),
                 "--url", nginx.url + "/v1/feed", "--public-key", str(pub.setup.public_key),
                 "--state", str(work), "--in-flight", str(args.in_flight)],
                stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env))
        outs = [json.loads(p.communicate(timeout=args.timeout * 10)[0].strip().splitlines()[-1])
                for p in procs]
        took = time.monotonic() - t0
        counters = feed_counters(pub)
        result["join"] = {
            "gateways": args.join, "entries": args.join_entries, "seconds": round(took, 2),
            "joined": sum(o["joined"] for o in outs),
            "errors": [o["errors"] for o in outs if o["errors"]],
            "gateway_bytes": sum(o["bytes"] for o in outs),
            "publisher_snapshot_requests": counters.get("snapshot_requests", 0),
            "publisher_snapshot_bytes": counters.get("snapshot_bytes", 0),
            "publisher_head_requests": counters.get("head_requests", 0),
            "nginx_feed_bytes": nginx.bytes_sent(),
            "publisher_vmhwm_kb": status_kb(pub.proc.pid if pub.proc else None, "VmHWM"),
            "publisher_rss_kb_peak_sampled": peak.peak_kb,
        }
        print(f"join: {result['join']}", flush=True)
    finally:
        peak.stop.set()
        nginx.stop()
        pub.kill()


def summary(r: dict[str, Any]) -> str:
    """The run as the markdown lines of docs/fleet-scale.md."""
    def times(p: dict[str, Any]) -> str:
        return " / ".join(f"{p.get(k, 'n/a')}" for k in ("p50", "p99", "p100")) + " s"

    def pub(p: dict[str, Any]) -> str:
        c = p.get("publisher", {})
        return (f"{int(c.get('head_requests', 0))} head, {int(c.get('diff_requests', 0))} diff,"
                f" {int(c.get('snapshot_requests', 0))} snapshot")

    def cpu(p: dict[str, Any]) -> str:
        c = p.get("cpu_s", {})
        return (f"publisher {c.get('publisher', 'n/a')} s, nginx {c.get('nginx', 'n/a')} s, "
                f"gateways {c.get('fleet_workers', 'n/a')} s")

    lines = [f"- {r['gateways']} gateways ({r['per_process']} per process), {r['started']}, "
             f"load average {r['loadavg_start'][0]:.1f} at start, {r['loadavg_end'][0]:.1f} "
             "at end"]
    if "one_entry" in r:
        one, burst, rs = r["one_entry"], r["burst"], r["restart"]
        lines += [
            f"- start-up (first snapshot, through nginx): {r['startup_s']} s, all acked "
            f"{r['startup_acked_s']} s",
            f"- one entry acked by 50 / 99 / 100 %: {times(one)}; publisher answered "
            f"{pub(one)}; CPU {cpu(one)}",
            f"- burst of {burst['serials']} entries (one serial each, published in "
            f"{burst['publish_s']} s), all acked by 50 / 99 / 100 %: {times(burst)}; publisher "
            f"answered {pub(burst)}; CPU {cpu(burst)}",
            f"- publisher SIGKILLed {rs.get('at_s')} s after an entry with "
            f"{rs.get('acked_before_kill')} acks in, back at {rs.get('restarted_at_s')} s: "
            f"acked by 50 / 99 / 100 % {times(rs)}; lost acks: {rs['lost_acks']}",
            f"- publisher RSS: peak sampled {r['publisher_rss_kb_peak_sampled'] / 1024:.0f} MB, "
            f"VmHWM before the kill {rs.get('vmhwm_kb_before', 0) / 1024:.0f} MB; nginx sent "
            f"{r['nginx_feed_bytes'] / 1e6:.1f} MB of feed in {r['nginx_feed_requests']} "
            "answers"]
    if "join" in r:
        j = r["join"]
        lines.append(
            f"- join: {j['joined']} of {j['gateways']} stateless gateways fetched and verified "
            f"the {j['entries']}-entry snapshot in {j['seconds']} s; publisher sent "
            f"{int(j['publisher_snapshot_requests'])} snapshot "
            f"({j['publisher_snapshot_bytes'] / 1e6:.1f} MB), nginx sent "
            f"{j['nginx_feed_bytes'] / 1e9:.2f} GB; publisher VmHWM "
            f"{j['publisher_vmhwm_kb'] / 1024:.0f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--per-process", type=int, default=1000)
    ap.add_argument("--base-entries", type=int, default=10)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--long-poll", type=float, default=30.0)
    ap.add_argument("--join", type=int, default=None,
                    help="gateways joining the big feed (default: --gateways; 0 skips)")
    ap.add_argument("--join-entries", type=int, default=100_000)
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--poll", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--skip-fleet", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (logs, nginx access log and cache)")
    args = ap.parse_args(argv)
    if args.join is None:
        args.join = args.gateways
    result: dict[str, Any] = {
        "gateways": args.gateways, "per_process": args.per_process, "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(), "started": now_iso(),
        "burst_entries": args.burst, "long_poll": args.long_poll}
    work = Path(tempfile.mkdtemp(prefix="safegate-fleet-"))
    state = Path(tempfile.mkdtemp(prefix="safegate-fleet-gw-",
                                  dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        if not args.skip_fleet:
            phase_fleet(args, work, state, result)
        if args.join:
            phase_join(args, work, result)
    finally:
        result["metrics_scrapes_s_bytes"] = SCRAPES
        result["loadavg_end"] = os.getloadavg()
        result["finished"] = now_iso()
        shutil.rmtree(state, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)   # nginx's cache holds GBs after a join
        out = args.out or ROOT / "bench" / "out" / f"fleet-{args.gateways}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        with contextlib.suppress(KeyError, TypeError):
            print(summary(result))
        print(f"written to {out}" + (f"; work dir {work}" if args.keep else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
