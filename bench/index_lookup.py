"""ListIndex.match cost, C lookup vs pure Python, on a 1M-name index (issue #12 item 2).

Not a test: run by hand (`python bench/index_lookup.py`; build the C lookup first with
`make compile`). It compiles one index of N names: every real blocklist name found in
../shared/data (hagezi, StevenBlack, hostsVN lists) plus synthetic `b{i}.blk{i % 1000}.test`
names up to N. Then, in a fresh process per path (so RSS is that path's alone), it times
match() per call (CPU time, best of 5, minus the same loop calling len()) over uniform
draws from
  synthetic  the synthetic names (a hit at offset 0, 3 levels walked)
  real       the real blocklist names
  sub-hit    `www.` + a real name (a hit one level down)
  miss       Umbrella top-100k names not on the list (the full walk, no hit)
and records RSS after open and after the draws (the mapping's touched pages count).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
REAL_LISTS = ("hagezi/light.domains.txt", "hagezi/nsfw.wildcard-onlydomains.txt",
              "stevenblack/unified.domains.txt", "stevenblack/porn-only.domains.txt",
              "stevenblack/gambling-only.domains.txt", "vn/hostsVN-adult.domains.txt",
              "vn/hostsVN-gambling.domains.txt", "vn/hostsVN-threat.domains.txt")
ALLOWED = b"abcdefghijklmnopqrstuvwxyz0123456789-._"

PROBE = textwrap.dedent("""
    import json, random, sys, time
    from gateway.lists.index import ListIndex
    def rss():
        out = {}
        for line in open("/proc/self/status"):
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(val.split()[0]) / 1024
        return out
    def mapped(path):  # resident KiB of the index file's mapping, in MB
        total, inside = 0, False
        for line in open("/proc/self/smaps"):
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
        return total / 1024
    path, pure, draws, sets = sys.argv[1], sys.argv[2] == "pure", int(sys.argv[3]), sys.argv[4]
    sets = json.loads(open(sets).read())
    before = rss()
    idx = ListIndex.open(path, pure=pure)
    assert idx.accelerated == (not pure), "C lookup not built: run `make compile`"
    opened = rss()
    rng = random.Random(1)
    result = {"path": "pure" if pure else "C", "rss_before_mb": before, "rss_open_mb": opened}
    for name, keys in sets.items():
        keys = [k.encode() for k in keys]
        stream = [keys[rng.randrange(len(keys))] for _ in range(draws)]
        hits = sum(1 for k in stream[:1000] if idx.match(k))
        cost = {}
        for what, call in (("loop", len), ("match", idx.match)):
            best = float("inf")
            for _ in range(5):  # CPU time, best of 5: the machine is shared
                t0 = time.process_time()
                for k in stream:
                    call(k)
                best = min(best, time.process_time() - t0)
            cost[what] = best / draws * 1e6
        result[name] = {"us_per_match": round(cost["match"] - cost["loop"], 3),
                        "us_loop": round(cost["loop"], 3), "hit_share": hits / 1000}
    result["rss_after_mb"] = rss()
    result["index_resident_mb"] = mapped(path)
    print(json.dumps(result))
""")


def real_names() -> list[bytes]:
    """Domain names from the real lists (domains or hosts format), lowercased, deduplicated."""
    seen: set[bytes] = set()
    for rel in REAL_LISTS:
        path = DATA / rel
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            fields = line.split(b"#", 1)[0].split()
            if not fields:
                continue
            name = fields[-1].lower().rstrip(b".")
            if b"." in name and not name.strip(ALLOWED) and name not in (b"0.0.0.0",):
                seen.add(name)
    return sorted(seen)


def build(path: Path, names: int) -> tuple[dict[str, list[str]], int]:
    from gateway.lists import SCOPE_BOTH, Action, Rule
    from gateway.lists.index_builder import IndexBuilder

    real = real_names()[: names]
    synthetic = [b"b%d.blk%d.test" % (i, i % 1000) for i in range(names - len(real))]
    listed = set(real)
    umbrella = (DATA / "popularity" / "umbrella-top-100k.txt").read_bytes().split()
    misses = [n for n in umbrella if n not in listed and b"." in n][:50_000]
    with IndexBuilder(tmp_dir=path.parent) as b:
        b.add_many(real, Rule("adult", SCOPE_BOTH, Action.DEFAULT, False))
        b.add_many(synthetic, Rule("gambling", SCOPE_BOTH, Action.DEFAULT, False))
        b.add_many(synthetic[::50], Rule("ads", SCOPE_BOTH, Action.DEFAULT, False))  # combos
        b.write(path)
    sample = random.Random(0)
    return {"synthetic": [n.decode() for n in sample.sample(synthetic, 50_000)],
            "real": [n.decode() for n in sample.sample(real, min(50_000, len(real)))],
            "sub-hit": ["www." + n.decode() for n in sample.sample(real, min(50_000, len(real)))],
            "miss": [n.decode() for n in misses]}, len(real)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--draws", type=int, default=200_000)
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="sg-lookup-") as tmp:
        path = Path(tmp) / "bench.sgidx"
        t0 = time.perf_counter()
        sets, n_real = build(path, args.names)
        built = time.perf_counter() - t0
        (Path(tmp) / "sets.json").write_text(json.dumps(sets))
        runs = [json.loads(subprocess.run(
            [sys.executable, "-c", PROBE, str(path), mode, str(args.draws),
             str(Path(tmp) / "sets.json")], env=env, check=True, capture_output=True,
            text=True).stdout) for mode in ("pure", "c")]
        report = {"names": args.names, "real_names": n_real,
                  "index_bytes": path.stat().st_size, "build_s": round(built, 1), "runs": runs}
    print(f"{args.names} names, {n_real} of them real ({report['index_bytes'] / 1e6:.1f} MB index, "
          f"built in {built:.0f} s); CPU us per match(), best of 5 x {args.draws} uniform draws")
    print(f"{'path':6} " + " ".join(f"{k:>10}" for k in sets) + "   RSS open/after MB")
    for run in runs:
        print(f"{run['path']:6} " + " ".join(f"{run[k]['us_per_match']:>10.2f}" for k in sets)
              + f"   {run['rss_open_mb']['VmRSS']:.1f} / {run['rss_after_mb']['VmRSS']:.1f}"
              + f" (index mapping {run['index_resident_mb']:.1f})")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
