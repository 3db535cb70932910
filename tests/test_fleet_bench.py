"""The fleet benchmark's harness works (bench/fleet.py at 20 gateways, the real processes).

Not a measurement: it checks that every phase completes with every ack delivered (none lost
across the publisher's SIGKILL and restart), that the publisher behind nginx answered each
document about once per serial rather than once per gateway, and that a join of stateless
gateways cost the publisher one snapshot. The figures come from `make bench-fleet`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.fleetsim import gateway_id, gateway_token
from gateway.publisher.tokens import TokenIndex
from tests.support.procs import REPO_ROOT

pytestmark = pytest.mark.integration

GATEWAYS = 20


def test_fleet_bench_runs_every_phase_and_loses_no_ack(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    run = subprocess.run(
        [sys.executable, "bench/fleet.py", "--gateways", str(GATEWAYS), "--per-process", "10",
         "--burst", "5", "--join", "3", "--join-entries", "500", "--poll", "0.1",
         "--long-poll", "20", "--timeout", "120", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    one, burst, restart, join = (result[k] for k in ("one_entry", "burst", "restart", "join"))
    assert one["acked"] == burst["acked"] == restart["acked"] == GATEWAYS
    assert restart["lost_acks"] == 0 and "restarted_at_s" in restart
    # One serial, twenty gateways: the publisher built and sent the diff once or twice
    # (a straggler may ask a second base), and no snapshot.
    assert one["publisher"]["diff_requests"] <= 2
    assert one["publisher"]["snapshot_requests"] == 0
    assert burst["publisher"]["snapshot_requests"] == 0
    assert burst["publisher"]["diff_requests"] <= burst["serials"]
    assert join["joined"] == 3 and not join["errors"]
    assert join["publisher_snapshot_requests"] == 1
    assert join["nginx_feed_bytes"] >= 3 * join["publisher_snapshot_bytes"]


def test_token_index_finds_exactly_the_gateway_whose_token_it_is() -> None:
    """The publisher's ack authentication is one lookup, whatever the number of gateways
    (the fleet bench found the old comparison with every token costing 2.3 ms per ack at
    10,000 gateways); still only an exact token matches."""
    tokens = {gateway_id(n): gateway_token(n) for n in range(10_000)}
    index = TokenIndex(tokens)
    assert index.gateway(gateway_token(4321)) == gateway_id(4321)
    assert index.gateway(gateway_token(9999)) == gateway_id(9999)
    for wrong in ("", gateway_token(4321)[:-1], gateway_token(4321) + "x",
                  gateway_token(4321).upper(), gateway_id(4321), "\udcff"):
        assert index.gateway(wrong) is None
