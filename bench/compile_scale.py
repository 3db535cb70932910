"""Benchmark the list compiler on national-size lists: load time, peak RSS, index bytes/name.

Not a test: run by hand (`python bench/compile_scale.py --sizes 1000000 5000000 17500000`)
and paste or write (`--out FILE`) the table for docs/performance.md ("National-size lists").
For each size it writes N synthetic names under `.test` (index_memory.py's generator: four
category files, 2% of names in two categories), runs `python -m gateway.lists.compile` as the
server does, and polls /proc every 20 ms for the RSS of the compiler's whole process tree
(parent + parse workers, summed): the figure a 1 GB machine must fit. It also reports the
CPU time of the compiler and its workers, the index size per name, and match() cost on the
result. `--format rpz` publishes the same names as four RPZ zones (`name CNAME .`, as a
national list exchanged in RPZ would be) instead of plain domain files.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_memory import env, generate, machine

PAGE = os.sysconf("SC_PAGE_SIZE")

LOOKUP = textwrap.dedent(
    """
    import json, sys, time
    from gateway.lists.index import ListIndex
    idx = ListIndex.open(sys.argv[1])
    hits = [line.strip().encode() for line in open(sys.argv[2])][:50000]
    misses = [b"www.nx%d.example.org" % i for i in range(len(hits))]
    out = {}
    for name, keys in (("hit", hits), ("miss", misses)):
        assert name == "miss" or all(idx.match(k) for k in keys), name
        t = time.process_time()
        for k in keys:
            idx.match(k)
        out[name] = (time.process_time() - t) / len(keys) * 1e6
    print(json.dumps(out))
    """
)


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (0 for any that already exited)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def to_rpz(lists: Path) -> Path:
    """The catalog's domain files rewritten as RPZ zones, and a lists.yaml naming them."""
    work = lists.parent
    rpz_lists = work / "lists-rpz.yaml"
    if rpz_lists.exists():
        return rpz_lists
    entries = []
    for domains in sorted(work.glob("*.domains")):
        zone = domains.with_suffix(".rpz")
        with open(domains) as src, open(zone, "w") as dst:
            dst.write(f"$TTL 3600\n@ SOA localhost. root.localhost. 1 43200 3600 259200 3600\n"
                      f"  NS  localhost.\n; {domains.stem}: synthetic names, reserved TLD\n")
            dst.writelines(line.rstrip("\n") + " CNAME .\n" for line in src)
        entries.append(f"  {domains.stem}:\n    - {{path: {zone.name}, format: rpz}}\n")
    rpz_lists.write_text("categories:\n" + "".join(entries))
    return rpz_lists


def compile_once(lists: Path, out: Path) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.lists.compile", str(lists), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - t
    stdout, stderr = proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers are reaped by the compiler
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"compile failed: {stderr.decode()}")
    summary = json.loads(stdout)
    size = out.stat().st_size
    return {
        "wall": wall,
        "cpu": cpu,
        "input_mb": sum(p.stat().st_size for p in lists.parent.glob(
            "*.rpz" if lists.name == "lists-rpz.yaml" else "*.domains")) / 2**20,
        "peak_tree_mb": peak / 2**20,
        "entries": summary["entries"],
        "rules": summary["rules"],
        "index_mb": size / 2**20,
        "bytes_per_name": size / summary["entries"],
    }


def lookups(index: Path, sample: Path) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", LOOKUP, str(index), str(sample)],
                          capture_output=True, text=True, env=env(), check=True)
    result: dict[str, float] = json.loads(proc.stdout)
    return result


def commit() -> str:
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/safegate-compile-scale"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--format", choices=("domains", "rpz"), default="domains",
                        help="publish the names as domain files (default) or RPZ zones")
    args = parser.parse_args()
    mach = machine()
    rows = []
    for n in args.sizes:
        work = args.workdir / str(n)
        lists = work / "lists.yaml"
        sample = work / "sample.txt"
        if not lists.exists() or not sample.exists():
            lists, sample = generate(n, work)
        if args.format == "rpz":
            lists = to_rpz(lists)
        result = compile_once(lists, work / "index.sgidx")
        result |= {"names": n, "lookup_us": lookups(work / "index.sgidx", sample)}
        rows.append(result)
        print(json.dumps(result), file=sys.stderr)
    lines = [
        f"Measured with `bench/compile_scale.py` at commit {commit()} on {mach['nproc']} x "
        f"{mach['cpu']}, Python {mach['python']}; load average at start {mach['loadavg']}"
        f" (shared machine: times are indicative). Lists published as {args.format}.",
        "",
        "| names (lines) | input | index entries | load (compile) wall | CPU, compiler + "
        "workers | peak RSS, compiler + workers | index file | bytes per name |"
        " match() hit / miss, µs CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['names']:,} ({r['rules']:,}) | {r['input_mb']:.0f} MB | {r['entries']:,} | "
            f"{r['wall']:.1f} s | {r['cpu']:.1f} s | "
            f"{r['peak_tree_mb']:.0f} MB | {r['index_mb']:.1f} MB | {r['bytes_per_name']:.2f} | "
            f"{r['lookup_us']['hit']:.2f} / {r['lookup_us']['miss']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
