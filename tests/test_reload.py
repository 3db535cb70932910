"""Reloads swap everything atomically under load; a broken change never replaces the running one."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support import unbound as ub
from tests.support.procs import SafeGateProcess
from tests.test_resolver_e2e import LISTS, LISTS_YAML, POLICY

pytestmark = pytest.mark.integration


def blocked(r: dns.message.Message) -> bool:
    return any(isinstance(o, dns.edns.EDEOption) and o.code == 15 for o in r.options)


def address(r: dns.message.Message) -> str | None:
    return r.answer[0][0].address if r.answer else None


class Load(threading.Thread):
    """Queries in a loop from the kids network and records anything wrong."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.count = 0
        self.new_blocked_seen = False

    def run(self) -> None:
        checks = [
            (ub.ALLOWED, lambda r: address(r) == ub.ALLOWED_A and not blocked(r)),
            ("x.adult-site.test", lambda r: blocked(r) and address(r) == "127.0.0.1"),
            # drugs.test gets added to a list during the run: either answer is right, but only
            # one of those two, never SERVFAIL or silence.
            ("drugs.test", lambda r: (blocked(r) and address(r) == "127.0.0.1")
             or (not blocked(r) and address(r) == ub.BLOCKED_TARGET_A)),
        ]
        while not self.stop.is_set():
            for name, ok in checks:
                q = dns.message.make_query(name, "A", use_edns=0)
                try:
                    r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=2)
                except dns.exception.Timeout:
                    self.errors.append(f"{name}: timeout")
                    continue
                self.count += 1
                if r.rcode() != dns.rcode.NOERROR or not ok(r):
                    self.errors.append(f"{name}: {r.rcode()} {r.answer} {r.options}")
                if name == "drugs.test" and blocked(r):
                    self.new_blocked_seen = True


def _config_dir(gw: SafeGateProcess) -> Path:
    assert gw.config is not None
    return gw.config.parent


def test_reload_under_load_sighup_and_file_watch(unbound: ub.UnboundServer,
                                                 safegate_factory: Any) -> None:
    # The load is one source asking the same names as fast as it can: RRL would rightly limit
    # it (limits.rrl), and this test is about reloads.
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
                          lists_yaml=LISTS_YAML, extra={"reload": {"watch_interval": 0.2},
                                                        "limits": {"rrl": {"enabled": False}}})
    base = _config_dir(gw)
    load = Load(gw.dns_port)
    load.start()
    time.sleep(0.5)
    # 1. a list change picked up by the file watcher
    (base / "blocklists" / "adult.txt").write_text(LISTS["adult.txt"] + "drugs.test\n")
    deadline = time.monotonic() + 10
    while not load.new_blocked_seen and time.monotonic() < deadline:
        time.sleep(0.1)
    assert load.new_blocked_seen, "the watcher did not apply the list change"
    # 2. SIGHUP reloads with nothing changed, several times, under the same load
    for _ in range(3):
        gw.reload()
        time.sleep(0.3)
    load.stop.set()
    load.join(5)
    assert load.errors == []
    assert load.count > 100
    text = gw.metrics_text()
    assert 'safegate_config_reloads_total{result="failure"} 0.0' in text
    assert 'safegate_config_last_reload_successful 1.0' in text


def test_broken_change_keeps_the_running_config(unbound: ub.UnboundServer,
                                                safegate_factory: Any) -> None:
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
                          lists_yaml=LISTS_YAML, extra={"reload": {"watch_interval": 0.2}})
    base = _config_dir(gw)
    policy = base / "policies" / "p.yaml"
    policy.write_text(POLICY.replace("block: [adult, gambling]", "blok: [adult, gambling]"))
    deadline = time.monotonic() + 10
    while "result=\"failure\"} 1.0" not in gw.metrics_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = gw.metrics_text()
    assert 'safegate_config_reloads_total{result="failure"} 1.0' in text
    assert "safegate_config_last_reload_successful 0.0" in text
    assert f"{policy}:2: unknown key 'blok' in tier 'kids'" in gw.stderr_text()
    # still enforcing the old policy
    q = dns.message.make_query("x.adult-site.test", "A", use_edns=0)
    assert blocked(dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2))
    # a missing list file is refused the same way
    (base / "blocklists" / "lists.yaml").write_text(LISTS_YAML + "  games:\n"
                                                    "    - {path: nope.txt, format: domains}\n")
    gw.reload()
    deadline = time.monotonic() + 10
    while "result=\"failure\"} 2.0" not in gw.metrics_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "nope.txt" in gw.stderr_text()
    assert blocked(dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2))
    # fixing the file recovers
    policy.write_text(POLICY.replace("kids: {block: [adult, gambling]", "kids: {block: [gambling]"))
    (base / "blocklists" / "lists.yaml").write_text(LISTS_YAML)
    deadline = time.monotonic() + 10
    while blocked(dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2)):
        assert time.monotonic() < deadline, "the fixed policy was not applied"
        time.sleep(0.1)
