"""Long fuzzing run (issue #10): tests/test_fuzz.py's mutators for minutes or hours.

One real unbound and one real gateway (`python -m gateway run`, debug log) on loopback,
configured exactly as in tests/test_fuzz.py (tests/support/fuzzing.py `gateway_config`).
Rounds until --minutes are up; round r covers, all from one --seed:
  wire      4*R mutated queries through the parser in-process (fuzzing.check_wire)
  upstream  2*R mutated upstream replies through the cache reader (fuzzing.check_upstream)
  udp       R mutated datagrams at the gateway (fuzzing.run_udp)
  tcp       R/6 TCP streams with framing lies (fuzzing.run_tcp)
After every round the gateway must still run and its stderr must hold no traceback or
`bug:` line; if it died, the crash is recorded with the round's case ranges, and a fresh
gateway takes over. Every finding names `SEED:KIND:INDEX`; `--replay SEED:KIND:INDEX` rebuilds
that case, checks it in-process, and (udp/tcp) sends it alone to a fresh gateway.

Run: `.venv/bin/python bench/fuzz.py --minutes 10 [--seed N] [--round 2000]`.
Writes bench/out/fuzz-STAMP.json; exit status 1 when anything was found.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import fuzzing  # noqa: E402
from tests.support.procs import SafeGateProcess, write_gateway_config  # noqa: E402
from tests.support.unbound import UnboundServer, start_unbound  # noqa: E402

OUT = ROOT / "bench" / "out"


class Gateway:
    """The gateway under fuzz; remembers how much of its stderr was already checked."""

    def __init__(self, workdir: Path, upstream: UnboundServer, log_level: str) -> None:
        self.config = write_gateway_config(workdir, **fuzzing.gateway_config(upstream.port))
        self.log_level = log_level
        self.proc = SafeGateProcess()
        self.checked = 0
        self.starts = 0

    def start(self) -> None:
        self.proc = SafeGateProcess().start(self.config, log_level=self.log_level, timeout=60)
        self.checked = len(self.proc.stderr_text())
        self.starts += 1

    @property
    def target(self) -> tuple[str, int]:
        return ("127.0.0.1", self.proc.dns_port)

    def new_problems(self) -> list[str]:
        text = self.proc.stderr_text()
        fresh, self.checked = text[self.checked:], len(text)
        return fuzzing.gateway_log_problems(fresh)

    def stop(self) -> None:
        try:
            self.proc.stop(timeout=10)
        finally:
            self.proc.kill()


def fuzz_round(seed: int, r: int, size: int, gw: Gateway) -> tuple[dict[str, Any],
                                                                   list[fuzzing.Finding]]:
    """One round of every kind; (counts, findings)."""
    findings: list[fuzzing.Finding] = []
    rng = random.Random(f"{seed}:wire-extra:{r}")
    for i in range(r * size * 4, (r + 1) * size * 4):
        case = fuzzing.wire_case(seed, i)
        findings += [fuzzing.Finding(case.describe(seed), p) for p in fuzzing.check_wire(case, rng)]
    for i in range(r * size * 2, (r + 1) * size * 2):
        case, question = fuzzing.upstream_case(seed, i)
        findings += [fuzzing.Finding(case.describe(seed), p)
                     for p in fuzzing.check_upstream(case, question)]
    udp = [fuzzing.udp_case(seed, i, fuzzing.FRONTEND) for i in range(r * size, (r + 1) * size)]
    udp_stats, found = fuzzing.run_udp(udp, gw.target, seed)
    findings += found
    n_tcp = max(size // 6, 1)
    tcp = [fuzzing.tcp_case(seed, i, fuzzing.FRONTEND) for i in range(r * n_tcp, (r + 1) * n_tcp)]
    tcp_stats, found = fuzzing.run_tcp(tcp, gw.target, seed)
    findings += found
    counts = {"wire": size * 4, "upstream": size * 2, "udp_sent": udp_stats.sent,
              "udp_answered": udp_stats.answered, "udp_unanswered": udp_stats.unanswered,
              "tcp_connections": tcp_stats.tcp_connections, "tcp_frames": tcp_stats.tcp_frames,
              "tcp_replies": tcp_stats.tcp_replies,
              "udp_range": [r * size, (r + 1) * size], "tcp_range": [r * n_tcp, (r + 1) * n_tcp]}
    return counts, findings


def replay(spec: str, workdir: Path, log_level: str) -> int:
    case = fuzzing.replay(spec, fuzzing.FRONTEND)
    seed = int(spec.split(":")[0])
    print(case.describe(seed))
    if case.kind == "wire":
        problems = fuzzing.check_wire(case, random.Random(f"{seed}:wire-extra"))
    elif case.kind == "upstream":
        problems = fuzzing.check_upstream(*fuzzing.upstream_case(seed, case.index))
    else:
        upstream = start_unbound(workdir, ipv6=False)
        gw = Gateway(workdir / "gateway", upstream, log_level)
        try:
            gw.start()
            run = fuzzing.run_udp if case.kind == "udp" else fuzzing.run_tcp
            stats, found = run([case], gw.target, seed)
            print(stats)
            problems = [f.problem for f in found] + gw.new_problems()
            if not gw.proc.running():
                problems.append(f"gateway exited:\n{gw.proc.stderr_text()[-3000:]}")
        finally:
            gw.stop()
            upstream.stop()
    print("\n".join(problems) if problems else "no problem found")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=None, help="default: random, printed")
    ap.add_argument("--round", type=int, default=2000, help="datagrams per round")
    ap.add_argument("--replay", metavar="SEED:KIND:INDEX", help="rebuild and check one case")
    ap.add_argument("--log-level", default="debug", help="the gateway's (debug logs the "
                    "tracebacks of packets the query path could not parse)")
    args = ap.parse_args(argv)

    workdir = OUT / f"fuzz-work-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    if args.replay:
        try:
            return replay(args.replay, workdir, args.log_level)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    print(f"fuzz seed {seed} (rerun with --seed {seed}), {args.minutes} min, "
          f"{args.round} datagrams per round", flush=True)
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seed": seed,
                               "params": vars(args), "rounds": [], "findings": [],
                               "crashes": [], "log_problems": []}
    upstream = start_unbound(workdir, ipv6=False)
    gw = Gateway(workdir / "gateway", upstream, args.log_level)
    deadline = time.monotonic() + args.minutes * 60
    r = 0
    try:
        gw.start()
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            counts, findings = fuzz_round(seed, r, args.round, gw)
            counts["seconds"] = round(time.monotonic() - t0, 1)
            results["rounds"].append(counts)
            results["findings"] += [asdict(f) for f in findings]
            for problem in gw.new_problems():
                results["log_problems"].append({"round": r, "log": problem})
            alive = gw.proc.running()
            print(f"round {r}: udp {counts['udp_answered']}/{counts['udp_sent']} answered, "
                  f"tcp {counts['tcp_replies']}/{counts['tcp_frames']} frames answered, "
                  f"{len(findings)} findings, {counts['seconds']}s"
                  + ("" if alive else "  GATEWAY DIED"), flush=True)
            for f in findings[:3]:
                print(f"  {f}", flush=True)
            if not alive:
                results["crashes"].append({
                    "round": r, "udp_range": counts["udp_range"], "tcp_range": counts["tcp_range"],
                    "seed": seed, "exit": gw.proc.proc.returncode if gw.proc.proc else None,
                    "stderr_tail": gw.proc.stderr_text()[-5000:]})
                gw.start()
            r += 1
    finally:
        gw.stop()
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    found = len(results["findings"]) + len(results["crashes"]) + len(results["log_problems"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = OUT / f"fuzz-{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{r} rounds, seed {seed}: {len(results['findings'])} findings, "
          f"{len(results['crashes'])} crashes, {len(results['log_problems'])} logged "
          f"tracebacks\nJSON: {path}")
    for f in results["findings"][:10]:
        print(f"- {f['problem']}\n    {f['case']}")
    for c in results["crashes"]:
        print(f"- gateway died in round {c['round']} (seed {seed}, udp cases {c['udp_range']}, "
              f"tcp cases {c['tcp_range']})")
    for p in results["log_problems"][:5]:
        print(f"- round {p['round']} logged:\n{p['log']}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
