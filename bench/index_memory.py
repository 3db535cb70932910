"""Benchmark the list index at scale: compile time, serving-process RSS, lookups per second.

Not a test: run by hand (`python bench/index_memory.py --sizes 1000000 5000000`) and paste or
write (`--out FILE`) the numbers for docs/performance.md. For each size it
  1. writes N synthetic names across four category files (2% of names in two categories,
     so merged combos exist), plus a lists.yaml;
  2. runs `python -m gateway.lists.compile` as a subprocess, as the server does, and records
     its wall time, CPU time and peak RSS;
  3. in a FRESH process: RSS after importing what a server imports, after ListIndex.open, and
     after touching every page of the mapping (worst case), then match() rates for hits,
     subdomain hits and misses;
  4. for comparison, the RSS a plain Python set of the same names costs.
Synthetic names are under the reserved `.test` TLD with realistic shapes (2-4 labels,
~20 bytes); no real domain is generated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import string
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("adult", "gambling", "games", "ads")
TARGET_MB = {1_000_000: 80, 5_000_000: 150}

PROBE = textwrap.dedent(
    """
    import json, os, sys, time
    def rss():
        fields = {}
        with open("/proc/self/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile"):
                    fields[k] = int(v.split()[0]) / 1024
        return fields
    out = {"start": rss()}
    import gateway.lists.index as index_mod
    import aiohttp, prometheus_client, dnslib, yaml, asyncio  # what a server has loaded
    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    import gateway.lists.compile, gateway.lists.catalog  # noqa: F401
    out["imports"] = rss()
    t = time.perf_counter()
    idx = index_mod.ListIndex.open(sys.argv[1])
    out["open_seconds"] = time.perf_counter() - t
    out["opened"] = rss()
    mv = memoryview(idx._buffer)
    mv[::4096].tobytes()  # touch every page: the worst case for RSS
    mv.release()
    out["touched"] = rss()
    hits = [line.strip().encode() for line in open(sys.argv[2])]
    subs = [b"www." + h for h in hits]
    misses = [b"www.nx%d.example.org" % i for i in range(len(hits))]
    match = idx.match
    for name, keys in (("hit", hits), ("subdomain_hit", subs), ("miss", misses)):
        for k in keys[:1000]:
            match(k)
        assert name == "miss" or all(match(k) for k in keys[:1000]), name
        t, c = time.perf_counter(), time.process_time()
        for k in keys:
            match(k)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        out[name] = {"n": len(keys), "us_wall": wall / len(keys) * 1e6,
                     "us_cpu": cpu / len(keys) * 1e6}
    out["final"] = rss()
    print(json.dumps(out))
    """
)

SET_PROBE = textwrap.dedent(
    """
    import json, sys
    def rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    before = rss()
    names = set()
    for path in sys.argv[1:]:
        with open(path) as f:
            names.update(line.strip() for line in f)
    print(json.dumps({"names": len(names), "mb": rss() - before}))
    """
)


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def label(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(lo, hi)))


def generate(n: int, workdir: Path, seed: int = 1) -> tuple[Path, Path]:
    """Category files with n distinct names in all, lists.yaml, and a sample of hits."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    seconds = [label(rng, 3, 10) for _ in range(5000)]
    files = [open(workdir / f"{c}.domains", "w") for c in CATEGORIES]  # noqa: SIM115
    sample_every = max(1, n // 100_000)
    sample = []
    try:
        for i in range(n):
            parts = [label(rng, 4, 12), rng.choice(seconds)]
            if i % 3 == 0:
                parts.insert(0, rng.choice(("www", "m", "cdn", "api")))
            name = ".".join(parts) + f"{i:x}.test"  # the hex suffix makes names distinct
            f = files[i % len(files)]
            f.write(name + "\n")
            if i % 50 == 0:  # 2% of names also in the next category: merged combos
                files[(i + 1) % len(files)].write(name + "\n")
            if i % sample_every == 0:
                sample.append(name)
    finally:
        for f in files:
            f.close()
    lists = workdir / "lists.yaml"
    lists.write_text("categories:\n" + "".join(
        f"  {c}:\n    - {{path: {c}.domains, format: domains}}\n" for c in CATEGORIES))
    sample_path = workdir / "sample.txt"
    sample_path.write_text("\n".join(sample) + "\n")
    return lists, sample_path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH", "")) if p)
    return e


def compile_index(lists: Path, out: Path) -> dict[str, Any]:
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.lists.compile", str(lists), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"compile failed: {stderr.decode()}")
    summary = json.loads(stdout)
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "inner_seconds": summary["seconds"],
        "entries": summary["entries"],
        "file_mb": out.stat().st_size / 2**20,
    }


def probe(index: Path, sample: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(index), str(sample)],
                          capture_output=True, text=True, env=env(), check=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def set_rss(workdir: Path) -> dict[str, Any]:
    paths = [str(workdir / f"{c}.domains") for c in CATEGORIES]
    proc = subprocess.run([sys.executable, "-c", SET_PROBE, *paths], capture_output=True,
                          text=True, check=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def report(runs: list[dict[str, Any]], mach: dict[str, str]) -> str:
    lines = [
        "## List index: compile time, memory and lookup cost",
        "",
        f"Measured with `bench/index_memory.py` on {mach['nproc']} x {mach['cpu']}, "
        f"Python {mach['python']} ({mach['platform']}); load average at start "
        f"{mach['loadavg']}. The machine is shared (other benchmarks may have been running), "
        "so each figure is the best of several runs and CPU time is given beside wall time. "
        "Compile CPU time includes its worker processes.",
        "",
        "| names | compile wall / CPU | compile peak RSS | index file | serving RSS: imports "
        "-> opened -> all pages touched | target | Python set of the names |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        c, p = r["compile"], r["probe"]
        target = TARGET_MB.get(r["n"])
        final = p["touched"]["VmRSS"]
        verdict = "" if target is None else f"< {target} MB: {'PASS' if final < target else 'FAIL'}"
        set_mb = f"+{r['set']['mb']:.0f} MB" if r.get("set") else "not measured"
        lines.append(
            f"| {r['n']:,} | {c['wall']:.2f} s / {c['cpu']:.2f} s | {c['peak_rss_mb']:.0f} MB "
            f"| {c['file_mb']:.1f} MB | {p['imports']['VmRSS']:.1f} -> {p['opened']['VmRSS']:.1f}"
            f" -> {final:.1f} MB | {verdict} | {set_mb} |"
        )
    lines += [
        "",
        "Lookups (`ListIndex.match`, one call per query name; every suffix level is hashed "
        "and probed), µs per call, wall / CPU:",
        "",
        "| names | listed name (hit at level 0) | `www.` + listed name (hit at level 1) "
        "| miss, 4 labels | index open |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        p = r["probe"]
        cells = [f"{p[k]['us_wall']:.2f} / {p[k]['us_cpu']:.2f}"
                 for k in ("hit", "subdomain_hit", "miss")]
        lines.append(f"| {r['n']:,} | {' | '.join(cells)} | {p['open_seconds'] * 1e3:.2f} ms |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/safegate-bench-index"))
    ap.add_argument("--out", type=Path, help="write the markdown report here")
    ap.add_argument("--no-set", action="store_true", help="skip the Python set comparison")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; best is shown")
    args = ap.parse_args()
    mach = machine()
    runs = []
    for n in args.sizes:
        work = args.workdir / str(n)
        lists, sample = generate(n, work)
        index = work / "lists.sgidx"
        # best of --repeat: the machine may be shared, and the best run is the one least
        # disturbed by others (all runs are kept in the JSON on stderr)
        comps = [compile_index(lists, index) for _ in range(args.repeat)]
        probes = [probe(index, sample) for _ in range(args.repeat)]
        comp = min(comps, key=lambda c: c["wall"])
        best = min(probes, key=lambda p: p["hit"]["us_wall"])
        run: dict[str, Any] = {"n": n, "compile": comp, "probe": best,
                               "all_compiles": comps}
        if not args.no_set:
            run["set"] = set_rss(work)
        runs.append(run)
        print(json.dumps(run), file=sys.stderr)
    text = report(runs, mach)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
