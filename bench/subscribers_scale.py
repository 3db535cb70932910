"""How subscriber identity scales: load time, memory and lookup cost for N subscribers.

    python bench/subscribers_scale.py                 # 1,000 and 1,000,000 subscribers
    python bench/subscribers_scale.py --sizes 1000 100000 1000000

Each size runs in a fresh child process (so RSS is that size's alone). The file mixes what an
ISP hands out: IPv6 /56 and /48 delegations, /64s, IPv4 /32s and a few IPv4 /29s, in four
tiers, 5 % of them `filtered`. Lookups use addresses inside the listed prefixes, uncached
(PrefixMap._lookup) and through the per-address memo the server uses (PrefixMap.lookup).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TIERS = ("mam-non", "tieu-hoc", "thcs", "thpt")


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def write_file(path: Path, n: int, rng: random.Random) -> list[str]:
    """The subscribers CSV; returns sample addresses inside listed prefixes."""
    samples: list[str] = []
    with path.open("w") as f:
        f.write("prefix,tier,filtered\n")
        for i in range(n):
            kind = i % 10
            tier = TIERS[rng.randrange(4)]
            filtered = "yes" if rng.random() < 0.05 else ""
            if kind < 4:      # /56: 2001:db8:XXXX:XX00::/56 (i spread over 2^24)
                hi = i * 7919 % (1 << 24)
                a, b = hi >> 8, hi & 0xFF
                prefix = f"2001:db8:{a:x}:{b:x}00::/56"
                sample = f"2001:db8:{a:x}:{b:x}{rng.randrange(256):02x}::1"
            elif kind < 5:    # /48 in 2a00::/16-ish space
                prefix = f"2a00:{i >> 16:x}:{i & 0xFFFF:x}::/48"
                sample = f"2a00:{i >> 16:x}:{i & 0xFFFF:x}:{rng.randrange(65536):x}::9"
            elif kind < 7:    # /64
                prefix = f"2001:db9:{i >> 16:x}:{i & 0xFFFF:x}::/64"
                sample = f"2001:db9:{i >> 16:x}:{i & 0xFFFF:x}::{rng.randrange(65536):x}"
            elif kind < 9:    # IPv4 /32 in 10.0.0.0/8
                ip = (10 << 24) | (i * 2654435761 % (1 << 24))
                prefix = f"{ip >> 24}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}"
                sample = prefix
            else:             # IPv4 /29 in 100.64.0.0/10 (CGNAT)
                ip = (100 << 24) | (64 << 16) | ((i * 8) % (1 << 22))
                prefix = f"{ip >> 24}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}/29"
                sample = f"{ip >> 24}.{ip >> 16 & 255}.{ip >> 8 & 255}.{(ip & 255) + 3}"
            f.write(f"{prefix},{tier},{filtered}\n")
            if len(samples) < 200_000 and rng.random() < 0.2:
                samples.append(sample)
    return samples


def one_size(n: int) -> dict[str, float]:
    """Runs inside a fresh process."""
    import ipaddress

    from gateway.policy.netindex import PrefixMap
    from gateway.policy.subscribers import load_subscribers

    rng = random.Random(n)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "subscribers.csv"
        samples = write_file(path, n, rng)
        size_mb = path.stat().st_size / 1e6
        before = rss_kib()
        t0 = time.perf_counter()
        subs = load_subscribers(path)
        load_s = time.perf_counter() - t0
        after = rss_kib()
    # A few networks as a school/ISP config would have, plus the subscriber layer.
    nets = [(ipaddress.ip_network("10.0.0.0/8"), "isp-v4"),
            (ipaddress.ip_network("2001:db8::/32"), "isp-v6")]
    pm: PrefixMap[object] = PrefixMap(nets, [(subs.tables, subs.profiles)])
    rng.shuffle(samples)
    probe = samples[:100_000]
    t0 = time.perf_counter()
    found = sum(1 for a in probe if pm._lookup(a) is not None)
    uncached_ns = (time.perf_counter() - t0) / len(probe) * 1e9
    hot = probe[:1000]
    for a in hot:
        pm.lookup(a)
    t0 = time.perf_counter()
    for _ in range(100):
        for a in hot:
            pm.lookup(a)
    memo_ns = (time.perf_counter() - t0) / (100 * len(hot)) * 1e9
    return {"subscribers": subs.count, "profiles": len(subs.profiles), "file_mb": size_mb,
            "load_s": load_s, "rss_mb": (after - before) / 1024,
            "lookup_uncached_ns": uncached_ns, "lookup_memo_ns": memo_ns,
            "found_ratio": found / len(probe)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one)))
        return 0
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out))
    print("| subscribers | profiles | file | load | RSS added | lookup (uncached) | "
          "lookup (memo) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['subscribers']:,} | {r['profiles']} | {r['file_mb']:.1f} MB | "
              f"{r['load_s']:.2f} s | {r['rss_mb']:.0f} MB | {r['lookup_uncached_ns']:.0f} ns | "
              f"{r['lookup_memo_ns']:.0f} ns |")
        assert r["found_ratio"] == 1.0, r
    return 0


if __name__ == "__main__":
    sys.exit(main())
