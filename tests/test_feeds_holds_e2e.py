"""Issue #13: a big update never freezes urgent orders (real publisher and gateway processes).

A 1,500-entry image-hash import, then an urgent domain order. Published with --force, the
import travels with its `forced` ids and no gateway holds it; published without (the
publisher's own max_change allows it, the gateway's default one does not), the import is held
on the gateway and visible there, and the urgent order is enforced anyway, with no
`safegate feeds confirm` anywhere. The regulator's latency histogram keeps sub-second times.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.feeds import NAME, acked, ede_of, entry, gateway_extra, sample_of
from tests.support.procs import REPO_ROOT, SafeGateProcess
from tests.support.publisher import PublisherProcess, start_publisher
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

IMPORT = 1500
URGENT = "adult.example"     # resolves upstream until ordered (tests/support/unbound.py)


def hash_import(path: Path) -> Path:
    """IMPORT sha256 entries: digests of synthetic bytes (never of real material)."""
    basis = {"authority": "Bộ Công an", "decision": "77/QĐ-BCA", "date": "2026-11-20"}
    entries = [{"id": f"IMG-{i:05d}", "type": "sha256",
                "value": hashlib.sha256(f"synthetic-{i}".encode()).hexdigest(),
                "categories": ["csam"], "mandatory": True, "legal_basis": basis}
               for i in range(IMPORT)]
    path.write_text(json.dumps({"entries": entries}))
    return path


def add(pub: PublisherProcess, *args: str) -> None:
    result = pub.feed("add", *args)
    assert result.returncode == 0, result.stderr


def metric(gw: SafeGateProcess, name: str, **labels: str) -> float | None:
    return sample_of(gw.metrics_text(), name, **labels)


def start(tmp_path: Path, unbound: ub.UnboundServer, safegate_factory: Any,
          **publisher: Any) -> tuple[PublisherProcess, SafeGateProcess]:
    """A publisher with one order in force at a gateway that has no feed_guard section."""
    pub = start_publisher(tmp_path / "publisher", gateways=("gw-a",), **publisher)
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
                          lists_yaml=LISTS_YAML, extra=gateway_extra(pub, "gw-a"))
    add(pub, "--file", _file(tmp_path / "first.json", [entry("BCA-1")]))
    wait_for(lambda: ede_of(gw.dns_port, NAME) == 16, 30, what="the first order enforced")
    return pub, gw


def _file(path: Path, entries: list[dict[str, Any]]) -> str:
    path.write_text(json.dumps(entries))
    return str(path)


def urgent(tmp_path: Path) -> str:
    """The urgent order, issued_at left to the publisher (now, to the millisecond)."""
    e = entry("BCA-URGENT", URGENT)
    del e["issued_at"]
    return _file(tmp_path / "urgent.json", [e])


def test_a_forced_import_is_not_held_and_the_urgent_order_follows(
        tmp_path: Path, unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    pub, gw = start(tmp_path, unbound, safegate_factory)
    try:
        add(pub, "--file", str(hash_import(tmp_path / "import.json")), "--force")
        add(pub, "--file", urgent(tmp_path))
        wait_for(lambda: ede_of(gw.dns_port, URGENT) == 16, 60,
                 what="the urgent order blocked at DNS, no confirm anywhere")
        feed = {"feed": "central"}
        assert metric(gw, "safegate_feed_serial", **feed) == 3
        assert metric(gw, "safegate_feed_held_updates", **feed) == 0
        assert metric(gw, "safegate_feed_held_entries", **feed) == 0
        assert metric(gw, "safegate_feed_rejected_total", reason="guard", **feed) == 0
        assert gw.config is not None
        ledger = gw.config.parent / "var" / "ledger.sqlite3"
        with sqlite3.connect(ledger) as db:
            stored = db.execute("SELECT COUNT(*) FROM entries WHERE type='sha256'").fetchone()
        assert stored[0] == IMPORT          # the import is in force (for the proxy)

        # Sub-second times end to end: the publisher's histogram sums exactly what the
        # gateway measured (issued_at and verified_at to the millisecond, not whole seconds).
        wait_for(lambda: acked(pub, "BCA-URGENT", "gw-a") and acked(pub, "BCA-1", "gw-a"), 30,
                 what="both orders acked as verified")
        with sqlite3.connect(ledger) as db:
            measured = db.execute("SELECT SUM(verified_at - issued_at) FROM entries WHERE "
                                  "verified_at IS NOT NULL").fetchone()[0]
        text = pub.request("GET", "/metrics").body.decode()
        total = sample_of(text, "safegate_publisher_enforcement_latency_seconds_sum",
                          gateway="gw-a")
        assert sample_of(text, "safegate_publisher_enforcement_latency_seconds_count",
                         gateway="gw-a") == 2
        assert total == pytest.approx(measured, abs=0.005)
        promtool = subprocess.run(["promtool", "check", "metrics"], input=text,
                                  capture_output=True, text=True, timeout=30, check=False)
        assert "error" not in promtool.stderr.lower(), promtool.stderr
    finally:
        pub.kill()


def test_an_unforced_import_is_held_and_the_urgent_order_applies_anyway(
        tmp_path: Path, unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    # The publisher's max_change lets the import through; the gateway's default one (no
    # feed_guard section: 1,000 entries or 10 %) holds it.
    pub, gw = start(tmp_path, unbound, safegate_factory,
                    extra={"max_change": {"ratio": 0.1, "entries": 5000}})
    try:
        add(pub, "--file", str(hash_import(tmp_path / "import.json")))
        feed = {"feed": "central"}
        wait_for(lambda: metric(gw, "safegate_feed_held_entries", **feed) == IMPORT, 60,
                 what="the import held on the gateway")
        add(pub, "--file", urgent(tmp_path))
        wait_for(lambda: ede_of(gw.dns_port, URGENT) == 16, 60,
                 what="the urgent order blocked at DNS while the import is held")
        assert metric(gw, "safegate_feed_serial", **feed) == 3
        assert metric(gw, "safegate_feed_held_updates", **feed) == 1
        assert metric(gw, "safegate_feed_held_entries", **feed) == IMPORT
        assert gw.config is not None
        status = subprocess.run(
            [sys.executable, "-m", "gateway", "feeds", "status", "-c", str(gw.config)],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False)
        assert status.returncode == 0, status.stderr
        assert f"HELD: {IMPORT} changes (update 2, limit 1000)" in status.stdout
        assert "IMG-00000" in status.stdout
        ledger = gw.config.parent / "var" / "ledger.sqlite3"
        with sqlite3.connect(ledger) as db:
            stored = db.execute("SELECT COUNT(*) FROM entries WHERE type='sha256'").fetchone()
        assert stored[0] == 0               # held: out of force
        wait_for(lambda: acked(pub, "BCA-URGENT", "gw-a"), 30, what="the urgent order acked")

        confirm = subprocess.run(
            [sys.executable, "-m", "gateway", "feeds", "confirm", "-c", str(gw.config),
             "--feed", "central"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
            check=False)
        assert confirm.returncode == 0, confirm.stderr
        wait_for(lambda: metric(gw, "safegate_feed_held_entries", **feed) == 0, 30,
                 what="the held import applied once confirmed")
        assert metric(gw, "safegate_feed_held_updates", **feed) == 0
        assert ede_of(gw.dns_port, URGENT) == 16
    finally:
        pub.kill()
