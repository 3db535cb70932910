"""Where a gateway's memory goes with a 1M-name list, after load and after each workload.

Starts a real unbound and a real gateway (default settings, RRL off), runs the workloads of
tests/support/memload.py one after the other and prints VmRSS/VmHWM after each. With
--tracemalloc the gateway runs under bench/traced_gateway.py and the Python heap after each
step is attributed to the source lines that allocated it (docs/memory.md has the table).

Run: `.venv/bin/python bench/memory_profile.py [--names 1000000] [--tracemalloc]`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import memload  # noqa: E402
from tests.support.procs import SafeGateProcess, safegate_command  # noqa: E402
from tests.support.unbound import start_unbound  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402


def _dump(path: Path, pid: int) -> dict[str, float]:
    """Ask the gateway for its structure sizes (and heap snapshot); wait for the file."""
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR2)
    wait_for(path.exists, timeout=300, what="memory dump")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _heap(snapshot_path: Path, top: int, group: str) -> None:
    snap = tracemalloc.Snapshot.load(str(snapshot_path))
    stats = snap.statistics(group)
    total = sum(s.size for s in stats)
    print(f"   python heap (tracemalloc) {total / 2**20:.1f} MB, top by {group}:")
    for s in stats[:top]:
        where = s.traceback.format(limit=1 if group != "traceback" else 4)
        print(f"     {s.size / 2**20:7.2f} MB {s.count:>9} blocks  {' | '.join(where)}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--group", default="lineno", choices=("lineno", "filename", "traceback"))
    ap.add_argument("--only", nargs="*", default=list(memload.WORKLOADS))
    ap.add_argument("--sizes", action="store_true",
                    help="also ask the gateway for each structure's size (inflates later RSS)")
    ap.add_argument("--trim", action="store_true",
                    help="after each step, also the RSS after glibc's malloc_trim(0)")
    ap.add_argument("--cache-size", type=int, default=None, help="dns.cache.size")
    ap.add_argument("--reply-memo", type=int, default=None, help="limits.memory.reply_memo")
    ap.add_argument("--verdict-memo", type=int, default=None,
                    help="limits.memory.verdict_memo")
    ap.add_argument("--code", type=Path, default=None,
                    help="run the gateway from this tree (e.g. an older commit's `git archive`)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="extra environment for the gateway (e.g. allocator settings)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sg-mem-") as tmp:
        work = Path(tmp)
        list_path = work / "big.domains"
        memload.write_list(list_path, args.names)
        up = start_unbound(work, memload.upstream_records(memload.CACHED_RECORDS), ipv6=False)
        try:
            memory = {k: v for k, v in (("reply_memo", args.reply_memo),
                                         ("verdict_memo", args.verdict_memo)) if v is not None}
            extra: dict[str, object] = {"limits": {"rrl": {"enabled": False}, "memory": memory}}
            if args.cache_size is not None:
                extra["dns"] = {"cache": {"size": args.cache_size}}
            config = memload.gateway_config(work / "gw", list_path, up.port, extra)
            dump = work / "mem.json"
            env = {"SAFEGATE_MEMDUMP": str(dump),
                   "SAFEGATE_TRACEMALLOC_FRAMES": "8" if args.tracemalloc else "0"}
            env.update(kv.split("=", 1) for kv in args.env)
            cmd = safegate_command(config, log_level="warning")
            if args.sizes or args.tracemalloc or args.trim:
                cmd = [sys.executable, str(ROOT / "bench" / "traced_gateway.py"), *cmd[3:]]
            if args.code is not None:  # the gateway runs with cwd = this tree: put DIR first
                code = str(args.code.resolve())
                cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {code!r}); "
                       "from gateway.cli import main; sys.exit(main())", *cmd[3:]]
            t0 = time.monotonic()
            gw = SafeGateProcess().start(config, timeout=300, env=env, command=cmd)
            print(f"ready in {time.monotonic() - t0:.1f} s")
            try:
                def report(step: str) -> None:
                    rss = memload.status_kib(gw.pid) / 1024
                    hwm = memload.status_kib(gw.pid, "VmHWM") / 1024
                    anon = memload.status_kib(gw.pid, "RssAnon") / 1024
                    file = memload.status_kib(gw.pid, "RssFile") / 1024
                    print(f"{step:>10}: VmRSS {rss:6.1f} MB (anon {anon:.1f}, file {file:.1f})"
                          f"  VmHWM {hwm:6.1f} MB", flush=True)
                    if args.trim:
                        os.kill(gw.pid, signal.SIGUSR1)
                        time.sleep(1)  # a bench, not a test: the handler runs within ms
                        print(f"   after malloc_trim: VmRSS "
                              f"{memload.status_kib(gw.pid) / 1024:6.1f} MB", flush=True)
                    if not (args.sizes or args.tracemalloc):
                        return
                    sizes = _dump(dump, gw.pid)
                    print("   " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else
                                            f"{k} {v}" for k, v in sizes.items()), flush=True)
                    if args.tracemalloc:
                        _heap(Path(str(dump) + ".snapshot"), args.top, args.group)

                report("load")
                for name in args.only:
                    t0 = time.monotonic()
                    sent = memload.send(gw.dns_port, memload.WORKLOADS[name](args.names, "p"))
                    print(f"   {name}: {sent} replies in {time.monotonic() - t0:.1f} s")
                    report(name)
            finally:
                gw.stop(timeout=30)
        finally:
            up.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
