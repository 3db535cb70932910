"""Central feed latency: publish -> blocked -> verified per entry, and a 100k-entry batch.

One run, all real processes on loopback (issue #3 point 9): an upstream unbound
(tests/support/unbound.py), the publisher (`python -m gateway feed serve`, fresh keys) and a
SafeGate gateway (`python -m gateway run`) following it (type safegate, long_poll 30, acks on).

1. Single entries: --entries mandatory `domain` entries (e{i}.feedbench.test), added one at a
   time through the publisher's admin HTTP API (POST /v1/entries; the API rather than
   `safegate feed add` so a process start-up is not counted), a random 50-200 ms gap between
   them. Per entry: (a) add -> the first DNS answer from the gateway that is blocked with EDE 16
   (queried every ~5 ms from 127.0.0.1), (b) add -> the publisher shows the gateway's ack with
   verified_at (GET /v1/entries/{id}, every ~10 ms). "add" is the moment the POST returned.
2. Batch: --batch entries in one POST (force), then all of them removed in one publisher
   transaction. Neither the CLI nor the API removes a batch (`feed remove` and DELETE take one
   id, one serial each), so the bench writes the publisher database directly, exactly as
   Store.remove_entry does for one id; the running publisher notices within 100 ms, as it does
   for CLI writes. Measured: the publisher's insert time (POST duration), add -> the gateway's
   `safegate_feed_serial{feed}` shows the serial, add -> a sample of names blocked (or, on
   removal, answered normally), add -> the sample's acks show verified_at, the gateway's RSS,
   and its event-loop stall: a pacer sends a query for an already blocked (decision-cached)
   name every 10 ms the whole time and the slowest answers are reported.

The gateway's feed_guard allows the batch (max_change entries 10M): with the default limit the
batch would be held for `safegate feeds confirm`, which is not what is measured here.

Run: `make bench-feeds` or `.venv/bin/python bench/feed_latency.py [--entries 200]
[--batch 100000]`. Prints a table; writes JSON to bench/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.message
import dns.query

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.procs import SafeGateProcess, write_gateway_config  # noqa: E402
from tests.support.publisher import ADMIN_TOKEN, PublisherProcess, start_publisher  # noqa: E402
from tests.support.unbound import UnboundServer, start_unbound  # noqa: E402

OUT = ROOT / "bench" / "out"
FEED = "central"
GATEWAY_ID = "gw-bench"
EDE_CENSORED = 16
BASIS = {"authority": "Bench authority", "decision": "BENCH/2026", "date": "2026-11-20"}
STALL_EVERY = 0.010

POLICY = """\
tiers:
  kids: {block: [], answer: nxdomain}
networks:
  - {name: loopback, cidrs: ["127.0.0.0/8"], tier: kids}
"""


def single_name(i: int) -> str:
    return f"e{i}.feedbench.test"


def batch_name(i: int) -> str:
    return f"b{i}.batch.feedbench.test"


def entry(eid: str, name: str) -> dict[str, Any]:
    return {"id": eid, "type": "domain", "value": name, "categories": ["csam"],
            "mandatory": True, "legal_basis": BASIS}


# ---------------------------------------------------------------- small helpers


def pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in ms of values in seconds."""
    return {"n": len(values), "p50": pct(values, 50) * 1000, "p90": pct(values, 90) * 1000,
            "p99": pct(values, 99) * 1000, "max": max(values, default=float("nan")) * 1000}


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS since start) in MB."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def first_line(cmd: Sequence[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "unbound": first_line([shutil.which("unbound") or "/usr/sbin/unbound", "-V"]),
        "safegate_git": first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        "uptime_at_start": first_line(["uptime"]),
        "loadavg_at_start": Path("/proc/loadavg").read_text().strip(),
    }


def query(port: int, name: str, timeout: float = 1.0) -> dns.message.Message:
    q = dns.message.make_query(name, "A", use_edns=0, payload=1232)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


def censored(msg: dns.message.Message) -> bool:
    return any(isinstance(o, dns.edns.EDEOption) and o.code == EDE_CENSORED for o in msg.options)


def is_blocked(port: int, name: str) -> bool:
    try:
        return censored(query(port, name))
    except (dns.exception.DNSException, OSError):
        return False


def poll_until(check: Callable[[], bool], every: float, timeout: float) -> float | None:
    """Seconds (monotonic) when `check` first held, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.monotonic()
        if time.monotonic() > deadline:
            return None
        time.sleep(every)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", re.M)
    m = pattern.search(text)
    return float(m.group(1)) if m else None


# ---------------------------------------------------------------- stall monitor


class StallMonitor:
    """Sends one query every 10 ms regardless of answers; records each answer's latency.

    A paced sender (not query-then-wait) so an event-loop stall shows as its full length: the
    first query sent into the stall waits for all of it.
    """

    def __init__(self, port: int, name: str) -> None:
        self.port = port
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.sent: dict[int, float] = {}
        self.samples: list[tuple[float, float]] = []   # (sent at, latency)
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._recv, daemon=True)]

    def start(self) -> StallMonitor:
        for t in self.threads:
            t.start()
        return self

    def _send(self) -> None:
        qid = 0
        nxt = time.monotonic()
        while not self.stop_flag.is_set():
            qid = (qid + 1) % 65536
            q = dns.message.make_query(self.name, "A", use_edns=0, payload=1232)
            q.id = qid
            with self.lock:
                self.sent[qid] = time.monotonic()
            self.sock.send(q.to_wire())
            nxt += STALL_EVERY
            time.sleep(max(0.0, nxt - time.monotonic()))

    def _recv(self) -> None:
        while not self.stop_flag.is_set() or self.sent:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                if self.stop_flag.is_set():
                    return
                continue
            now = time.monotonic()
            qid = int.from_bytes(data[:2], "big")
            with self.lock:
                t = self.sent.pop(qid, None)
            if t is not None:
                self.samples.append((t, now - t))

    def stop(self, grace: float = 5.0) -> None:
        self.stop_flag.set()
        self.threads[0].join()
        deadline = time.monotonic() + grace
        while self.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        self.threads[1].join(timeout=1)
        self.sock.close()

    def window(self, start: float, end: float) -> dict[str, float]:
        """Answer latencies of queries sent in [start, end); unanswered ones count as lost."""
        lat = [x for t, x in self.samples if start <= t < end]
        lost = sum(1 for t in self.sent.values() if start <= t < end)
        out = summary_ms(lat)
        out.update(lost=lost, over_100ms=sum(1 for x in lat if x > 0.1),
                   over_200ms=sum(1 for x in lat if x > 0.2))
        return out


# ---------------------------------------------------------------- setup


def start_all(workdir: Path, args: argparse.Namespace
              ) -> tuple[UnboundServer, PublisherProcess, SafeGateProcess]:
    upstream = start_unbound(workdir, ipv6=False)
    pub: PublisherProcess | None = None
    try:
        pub = start_publisher(workdir / "publisher", gateways=(GATEWAY_ID,),
                              extra={"max_change": {"ratio": 0.1, "entries": 1000}})
        token = pub.setup.gateway_tokens[GATEWAY_ID]
        cfg = write_gateway_config(
            workdir / "gateway", upstream_port=upstream.port, policies={"p.yaml": POLICY},
            ipv6=False,
            extra={"gateway": {"id": GATEWAY_ID, "token": token},
                   "feeds": [{"name": FEED, "url": f"{pub.url}/v1/feed", "type": "safegate",
                              "public_key": str(pub.setup.public_key), "interval": 60,
                              "long_poll": 30, "acks": True}],
                   "feed_guard": {"max_change": {"ratio": 0.1, "entries": 10_000_000}}})
        gw = SafeGateProcess().start(cfg, log_level=args.gateway_log_level, timeout=60)
    except BaseException:
        if pub is not None:
            pub.kill()
        upstream.stop()
        raise
    return upstream, pub, gw


def post_entries(pub: PublisherProcess, entries: list[dict[str, Any]], timeout: float = 600
                 ) -> int:
    r = pub.request("POST", "/v1/entries", body={"entries": entries, "force": True},
                    token=ADMIN_TOKEN, timeout=timeout)
    if r.status != 201:
        raise RuntimeError(f"POST /v1/entries: {r.status} {r.body[:300]!r}")
    return int(r.json()["serial"])


def verified_at(pub: PublisherProcess, eid: str) -> str | None:
    try:
        r = pub.request("GET", f"/v1/entries/{eid}", timeout=5)
    except OSError:
        return None
    if r.status != 200:
        return None
    for g in r.json()["gateways"]:
        if g["gateway"] == GATEWAY_ID and g["verified_at"]:
            return str(g["verified_at"])
    return None


def ack_outcome(pub: PublisherProcess, eid: str) -> str:
    r = pub.request("GET", f"/v1/entries/{eid}", timeout=5)
    if r.status != 200:
        return "?"
    return next((str(g["outcome"]) for g in r.json()["gateways"]
                 if g["gateway"] == GATEWAY_ID), "?")


def gateway_serial(gw: SafeGateProcess) -> float | None:
    try:
        return metric_value(gw.metrics_text(), "safegate_feed_serial", feed=FEED)
    except (OSError, AssertionError):
        return None


# ---------------------------------------------------------------- phase 1: single entries


def single_entries(pub: PublisherProcess, gw: SafeGateProcess, n: int, rng: random.Random,
                   timeout: float) -> dict[str, Any]:
    blocked_s: list[float] = []
    verified_s: list[float] = []
    failures: list[str] = []
    for i in range(n):
        eid = f"BENCH-E{i:05d}"
        name = single_name(i)
        post_entries(pub, [entry(eid, name)])
        t_add = time.monotonic()
        t_blocked = poll_until(lambda name=name: is_blocked(gw.dns_port, name), 0.005, timeout)
        if t_blocked is None:
            failures.append(f"{eid}: not blocked after {timeout}s")
            continue
        blocked_s.append(t_blocked - t_add)
        t_ver = poll_until(lambda eid=eid: verified_at(pub, eid) is not None, 0.01, timeout)
        if t_ver is None:
            failures.append(f"{eid}: no verified ack after {timeout}s")
        else:
            verified_s.append(t_ver - t_add)
        if (i + 1) % 50 == 0:
            print(f"   {i + 1}/{n}: blocked p50 {pct(blocked_s, 50) * 1000:.0f} ms, verified "
                  f"p50 {pct(verified_s, 50) * 1000:.0f} ms", flush=True)
        time.sleep(rng.uniform(0.05, 0.2))
    return {"add_to_blocked_ms": summary_ms(blocked_s),
            "add_to_verified_ack_ms": summary_ms(verified_s),
            "raw_blocked_s": blocked_s, "raw_verified_s": verified_s, "failures": failures}


# ---------------------------------------------------------------- phase 2: the batch


def remove_batch_in_db(db: Path, ids: Sequence[str]) -> int:
    """All of `ids` removed under one new serial (Store.remove_entry, batched)."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        serial = int(conn.execute("SELECT value FROM meta WHERE key='serial'").fetchone()[0]) + 1
        conn.execute("UPDATE meta SET value=? WHERE key='serial'", (str(serial),))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        conn.executemany("UPDATE entries SET removed_serial=?, removed_at=? WHERE id=? AND "
                         "removed_serial IS NULL", [(serial, now, i) for i in ids])
        conn.execute("COMMIT")
    finally:
        conn.close()
    return serial


def batch_phase(kind: str, pub: PublisherProcess, gw: SafeGateProcess, ids: list[str],
                names: list[str], args: argparse.Namespace, stall_name: str) -> dict[str, Any]:
    """Add (kind 'add') or remove (kind 'remove') the batch and watch the gateway take it."""
    rng = random.Random(7)
    sample = rng.sample(range(len(ids)), min(20, len(ids)))
    res: dict[str, Any] = {"entries": len(ids), "rss_before_mb": rss_mb(gw.pid)}
    cpu0 = cpu_seconds(gw.pid)
    mon = StallMonitor(gw.dns_port, stall_name).start()
    time.sleep(1.0)   # a baseline of undisturbed answers
    t0 = time.monotonic()
    try:
        if kind == "add":
            batch = [entry(i, n) for i, n in zip(ids, names, strict=True)]
            serial = post_entries(pub, batch)
            res["publisher_insert_s"] = time.monotonic() - t0
            res["publisher_insert_what"] = "POST /v1/entries (parse, validate, insert, commit)"
        else:
            serial = remove_batch_in_db(pub.setup.directory / "var" / "publisher.sqlite3", ids)
            res["publisher_insert_s"] = time.monotonic() - t0
            res["publisher_insert_what"] = "one transaction on the publisher database"
        res["serial"] = serial
        t_serial = poll_until(lambda: (gateway_serial(gw) or 0) >= serial, 0.05, args.timeout)
        res["add_to_gateway_serial_s"] = None if t_serial is None else t_serial - t0
        res["rss_after_apply_mb"] = rss_mb(gw.pid)

        def sample_done() -> bool:
            want = kind == "add"
            return all(is_blocked(gw.dns_port, names[j]) == want for j in sample)

        t_names = poll_until(sample_done, 0.02, args.timeout)
        res["add_to_sample_enforced_s"] = None if t_names is None else t_names - t0
        if kind == "add":
            t_ver = poll_until(lambda: all(verified_at(pub, ids[j]) for j in sample), 0.2,
                               args.verify_timeout)
            res["add_to_sample_verified_ack_s"] = None if t_ver is None else t_ver - t0
        else:
            t_ver = poll_until(lambda: all(ack_outcome(pub, ids[j]) == "removed"
                                           for j in sample), 0.2, args.verify_timeout)
            res["add_to_sample_removed_ack_s"] = None if t_ver is None else t_ver - t0
        t_end = time.monotonic()
        time.sleep(1.0)
    finally:
        mon.stop()
    applied_at = t0 + (res["add_to_gateway_serial_s"] or args.timeout)
    res["stall_baseline_ms"] = mon.window(t0 - 1.0, t0)
    res["stall_until_applied_ms"] = mon.window(t0, applied_at + 0.5)
    res["stall_after_applied_ms"] = mon.window(applied_at + 0.5, t_end)
    res["stall_whole_ms"] = mon.window(t0, t_end + 1.0)
    res["gateway_cpu_s"] = cpu_seconds(gw.pid) - cpu0
    res["rss_after_mb"] = rss_mb(gw.pid)
    return res


# ---------------------------------------------------------------- report


def fmt(v: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


def print_tables(results: dict[str, Any]) -> str:
    lines: list[str] = []
    single = results.get("single")
    if single:
        lines += ["| per entry (n={}) | p50 ms | p90 ms | p99 ms | max ms |".format(
                      single["add_to_blocked_ms"]["n"]),
                  "| --- | ---: | ---: | ---: | ---: |"]
        for label, key in (("add -> blocked at DNS (EDE 16)", "add_to_blocked_ms"),
                           ("add -> verified ack at publisher", "add_to_verified_ack_ms")):
            s = single[key]
            lines.append(f"| {label} | {s['p50']:.0f} | {s['p90']:.0f} | {s['p99']:.0f} "
                         f"| {s['max']:.0f} |")
    for kind in ("batch_add", "batch_remove"):
        b = results.get(kind)
        if not b:
            continue
        verb = "add" if kind == "batch_add" else "remove"
        ack = b.get("add_to_sample_verified_ack_s", b.get("add_to_sample_removed_ack_s"))
        lines += ["", f"| {verb} {b['entries']:,} entries in one batch | value |",
                  "| --- | ---: |",
                  f"| publisher: {b['publisher_insert_what']} | "
                  f"{fmt(b['publisher_insert_s'])} s |",
                  f"| {verb} -> gateway serial (metrics) | {fmt(b['add_to_gateway_serial_s'])} s |",
                  f"| {verb} -> 20 sampled names {'blocked' if verb == 'add' else 'unblocked'} "
                  f"| {fmt(b['add_to_sample_enforced_s'])} s |",
                  f"| {verb} -> 20 sampled acks {'verified' if verb == 'add' else 'removed'} "
                  f"at publisher | {fmt(ack)} s |"]
        for label, key in (("baseline (1 s before)", "stall_baseline_ms"),
                           ("until applied + 0.5 s", "stall_until_applied_ms"),
                           ("after that, until the sampled acks", "stall_after_applied_ms")):
            s = b[key]
            lines.append(f"| DNS every 10 ms, {label}: max / p99 ms, >200 ms, lost | "
                         f"{s['max']:.0f} / {s['p99']:.0f}, {s['over_200ms']}, {s['lost']} |")
        lines += [f"| gateway RSS before -> applied -> end (MB) | "
                  f"{b['rss_before_mb'].get('VmRSS', 0):.0f} -> "
                  f"{b['rss_after_apply_mb'].get('VmRSS', 0):.0f} -> "
                  f"{b['rss_after_mb'].get('VmRSS', 0):.0f} (peak "
                  f"{b['rss_after_mb'].get('VmHWM', 0):.0f}) |",
                  f"| gateway CPU during the phase | {b['gateway_cpu_s']:.1f} s |"]
    text = "\n".join(lines)
    print("\n" + text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=200, help="single entries (phase 1)")
    ap.add_argument("--batch", type=int, default=100_000, help="batch size (0: skip)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds to wait for one entry or a batch to be enforced")
    ap.add_argument("--verify-timeout", type=float, default=900.0,
                    help="seconds to wait for the batch sample's acks")
    ap.add_argument("--gateway-log-level", default="info")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep bench/out/feed-work")
    ap.add_argument("--tag", default="", help="added to the JSON file name")
    args = ap.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    workdir = OUT / "feed-work"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "machine": machine(), "params": vars(args), "errors": {}}
    print(f"load at start: {results['machine']['loadavg_at_start']}", flush=True)
    rng = random.Random(args.seed)
    upstream, pub, gw = start_all(workdir, args)
    ok = False
    try:
        results["gateway_rss_at_start_mb"] = rss_mb(gw.pid)
        print(f"== {args.entries} single entries, one POST each", flush=True)
        results["single"] = single_entries(pub, gw, args.entries, rng, args.timeout)
        if args.batch:
            stall_name = single_name(0)   # blocked since phase 1: a cached decision
            if not is_blocked(gw.dns_port, stall_name):
                raise RuntimeError(f"{stall_name} is not blocked")
            ids = [f"BENCH-B{i:07d}" for i in range(args.batch)]
            names = [batch_name(i) for i in range(args.batch)]
            print(f"== add {args.batch:,} entries in one POST", flush=True)
            results["batch_add"] = batch_phase("add", pub, gw, ids, names, args, stall_name)
            print(f"   {json.dumps(results['batch_add'], default=str)[:600]}", flush=True)
            print(f"== remove {args.batch:,} entries in one transaction", flush=True)
            results["batch_remove"] = batch_phase("remove", pub, gw, ids, names, args,
                                                  stall_name)
        ok = True
    except Exception as exc:
        results["errors"]["run"] = repr(exc)
        print(f"!! {exc!r}", file=sys.stderr)
    finally:
        for what, stop in (("gateway", gw.stop), ("publisher", pub.stop)):
            try:
                stop()
            except Exception as exc:
                results["errors"][what] = str(exc)[-3000:]
                gw.kill()
                pub.kill()
        upstream.stop()
    results["table"] = print_tables(results)
    results["loadavg_at_end"] = Path("/proc/loadavg").read_text().strip()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"feed_latency{'-' + args.tag if args.tag else ''}"
    for path in (OUT / f"{name}-{stamp}.json", OUT / f"{name}-latest.json"):
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nJSON: {OUT / f'{name}-{stamp}.json'}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    if results["errors"]:
        print(f"errors: {json.dumps(results['errors'], indent=2)[:3000]}", file=sys.stderr)
    return 0 if ok and not results["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
