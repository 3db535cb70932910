"""The data and query files of bench/dns_compare.py: the 1M-name list and workloads (a)-(f).

Pure (no servers, no dnsperf) so tests/test_bench_workloads.py can pin it. Everything is
deterministic for a seed except the per-run tags that keep "unique" names unique: the upstream
is shared by all servers in one run, so a miss for one server must not be a cache hit for the
next one.

The list is the real category lists in /work/shared/data (adult, gambling, dating, drugs...)
PLUS synthetic names `b{i}.blk{i%1000}.test` up to the requested size: the ranked names of
workload (e) that a real list blocks are then blocked by every server, as they would be at an
ISP, while the size matches the issue's 1M names.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

DATA = Path("/work/shared/data")

# Real category lists (see DATA/README.md for sources and licences). Parsed by `read_names`,
# which understands domains, hosts and adblock `||name^` lines.
CATEGORY_FILES = (
    "hagezi/nsfw.wildcard-onlydomains.txt",
    "hagezi/gambling-medium.adblock.txt",
    "stevenblack/porn-only.domains.txt",
    "stevenblack/gambling-only.domains.txt",
    "ut1/gambling.domains",
    "ut1/dating.domains",
    "ut1/drogue.domains",
    "ut1/agressif.domains",
    "vn/hostsVN-adult.domains.txt",
    "vn/hostsVN-gambling.domains.txt",
)
RANKINGS = {
    "umbrella": "popularity/umbrella-top-100k.txt",  # FQDNs from DNS traffic: closest to a stream
    "tranco": "popularity/tranco-top-50k.csv",  # registrable domains, `rank,domain`
}

# Names every server can take in every format: LDH labels, at least two of them, and not in
# a special-use TLD that unbound answers itself (its built-in local zones).
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")
SPECIAL_TLDS = frozenset(
    {"arpa", "local", "localhost", "invalid", "test", "example", "onion", "home", "lan", "corp"}
)

CACHED_ZONE = "cached.test"
MISS_ZONE = "miss.test"
FLOOD_ZONE = "flood.test"


def valid_name(name: str) -> bool:
    """True for a name all three servers and the upstream accept as list entry or local-data."""
    if len(name) > 253 or not _NAME_RE.match(name):
        return False
    return name.rsplit(".", 1)[1] not in SPECIAL_TLDS


def read_names(path: Path) -> Iterator[str]:
    """Names of one list file: domains, hosts (`0.0.0.0 name`), adblock (`||name^`), csv."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.strip()
            if not line or line[0] in "#![" or "##" in line or "#@#" in line or "#?#" in line:
                continue  # comments, headers, adblock cosmetic rules
            line = line.split("#", 1)[0].strip()  # hosts/domains inline comment
            if line.startswith("||"):
                line = line[2:].split("^", 1)[0]
            elif "," in line:
                line = line.rsplit(",", 1)[1]
            else:
                line = line.split()[-1]
            name = line.rstrip(".").lower()
            if valid_name(name):
                yield name


def blocked_name(i: int) -> str:
    return f"b{i}.blk{i % 1000}.test"


def cached_name(i: int) -> str:
    return f"c{i}.{CACHED_ZONE}"


def build_blocklist(n: int, real_files: Iterable[Path] = ()) -> list[str]:
    """`n` distinct names: the real lists first (deduplicated, in file order), then synthetic.

    If the real lists alone hold more than `n` names, the first `n` are kept (small runs).
    """
    seen: dict[str, None] = {}
    for path in real_files:
        for name in read_names(path):
            seen.setdefault(name)
            if len(seen) >= n:
                return list(seen)
    names = list(seen)
    names.extend(blocked_name(i) for i in range(n - len(names)))
    return names


def is_blocked(name: str, blocked: set[str] | frozenset[str]) -> bool:
    """Suffix match, as all three servers apply the list: the name or any parent is listed."""
    labels = name.split(".")
    return any(".".join(labels[i:]) in blocked for i in range(len(labels)))


def read_ranking(path: Path) -> list[str]:
    """Ranked names, best first, valid and deduplicated (the rank is the position)."""
    return list(dict.fromkeys(read_names(path)))


def zipf_cum_weights(n: int, s: float = 1.0) -> list[float]:
    """Cumulative weights of ranks 1..n with weight(r) = 1 / r**s."""
    return list(itertools.accumulate(1.0 / r**s for r in range(1, n + 1)))


def zipf_stream(ranked: Sequence[str], lines: int, *, s: float = 1.0, seed: int = 5) -> list[str]:
    """`lines` names drawn from `ranked` with P(rank r) ~ 1/r**s (Zipf-like, as DNS traffic)."""
    cum = zipf_cum_weights(len(ranked), s)
    rng = random.Random(seed)
    total = cum[-1]
    hi = len(ranked) - 1
    return [ranked[min(hi, bisect.bisect(cum, rng.random() * total))] for _ in range(lines)]


def uniform_draws(names: Sequence[str], lines: int, *, seed: int = 3) -> list[str]:
    """`lines` uniform draws with replacement from the whole list (workload a)."""
    rng = random.Random(seed)
    n = len(names)
    return [names[int(rng.random() * n)] for _ in range(lines)]


def sample_distinct(names: Sequence[str], k: int, *, seed: int = 1) -> list[str]:
    """k distinct names (workload b: today's 10k blocked names)."""
    return random.Random(seed).sample(list(names), min(k, len(names)))


def miss_name(i: int, tag: str) -> str:
    """A never-seen name; the upstream answers NXDOMAIN at once."""
    return f"m{i}.{tag}.{MISS_ZONE}"


def flood_name(i: int, tag: str) -> str:
    """Random-subdomain flood name, answered (slowly) by bench/slow_auth.py via the upstream."""
    return f"r{i:x}{i * 2654435761 % 2**32:08x}.{tag}.{FLOOD_ZONE}"


def mix_stream(
    blocked: Sequence[str],
    cached: Sequence[str],
    lines: int,
    tag: str,
    *,
    shares: tuple[float, float, float] = (0.20, 0.75, 0.05),
    seed: int = 2,
) -> list[str]:
    """Workload (d): blocked (uniform from the whole list) / cached / unique misses, shuffled."""
    n_blk = round(lines * shares[0])
    n_miss = round(lines * shares[2])
    kinds = [1] * n_blk + [2] * n_miss + [0] * (lines - n_blk - n_miss)
    rng = random.Random(seed)
    rng.shuffle(kinds)
    miss = itertools.count()
    nb, nc = len(blocked), len(cached)
    out: list[str] = []
    for k in kinds:
        if k == 0:
            out.append(cached[int(rng.random() * nc)])
        elif k == 1:
            out.append(blocked[int(rng.random() * nb)])
        else:
            out.append(miss_name(next(miss), tag))
    return out


def ordinary_stream(
    blocked10k: Sequence[str], cached: Sequence[str], lines: int, *, seed: int = 4
) -> list[str]:
    """Workload (f) stream 2: half cached, half blocked (the 10k set), i.e. answered locally."""
    rng = random.Random(seed)
    return [rng.choice(cached if i % 2 else blocked10k) for i in range(lines)]


def write_queries(path: Path, names: Iterable[str], rdtype: str = "A") -> Path:
    """dnsperf query file: one `NAME TYPE` a line."""
    with open(path, "w") as fh:
        fh.writelines(f"{n} {rdtype}\n" for n in names)
    return path


def write_safegate_list(path: Path, names: Iterable[str]) -> None:
    """`domains` format: one name a line, suffix match."""
    with open(path, "w") as fh:
        fh.writelines(f"{n}\n" for n in names)


def write_dnsmasq_conf(path: Path, names: Iterable[str]) -> None:
    """`address=/name/` (no address): NXDOMAIN for the name and every subdomain."""
    with open(path, "w") as fh:
        fh.writelines(f"address=/{n}/\n" for n in names)


def write_unbound_zones(path: Path, names: Iterable[str]) -> None:
    """unbound `server:` include: always_nxdomain for the name and every subdomain."""
    with open(path, "w") as fh:
        fh.write("server:\n")
        fh.writelines(f'  local-zone: "{n}." always_nxdomain\n' for n in names)


def upstream_records(names: Iterable[str], ttl: int = 3600) -> list[str]:
    """A records the upstream answers positively: cached names and the ranked stream's names."""
    return [f"{n}. {ttl} IN A 192.0.2.{i % 250 + 1}" for i, n in enumerate(names)]
