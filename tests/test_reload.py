"""Reloads swap everything atomically under load; a broken change never replaces the running one."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.procs import SafeGateProcess
from tests.support.wait import async_wait_for, wait_for

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
    wait_for(lambda: load.count, timeout=10, what="the load's first answers")
    # 1. a list change picked up by the file watcher
    (base / "blocklists" / "adult.txt").write_text(LISTS["adult.txt"] + "drugs.test\n")
    wait_for(lambda: load.new_blocked_seen, what="the watcher applied the list change")
    # 2. SIGHUP applies what the watcher cannot see: the policy now allows drugs.test, in an
    # edit that keeps the file's size, inode and mtime, so only the signal's reload reads it.
    policy = base / "policies" / "p.yaml"
    before = policy.stat()
    text = policy.read_text()
    edited = text.replace('allow: ["ok.adult-site.test"]', 'allow: ["drugs.test"]        ')
    assert edited != text and len(edited) == len(text)
    with policy.open("r+") as f:
        f.write(edited)
    os.utime(policy, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = policy.stat()
    assert ((after.st_mtime_ns, after.st_size, after.st_ino)
            == (before.st_mtime_ns, before.st_size, before.st_ino)), "stat() must not see it"
    assert _drugs_blocked(gw), "nothing but SIGHUP may apply the edit"
    successes = _reloads(gw, "success")
    gw.reload()
    wait_for(lambda: not _drugs_blocked(gw),
             what="SIGHUP applied the policy that allows drugs.test")
    wait_for(lambda: _reloads(gw, "success") == successes + 1, what="one more reload counted",
             interval=0.1)
    # 3. SIGHUP reloads with nothing changed, several times, under the same load
    for n in range(2, 5):
        gw.reload()
        wait_for(lambda n=n: _reloads(gw, "success") == successes + n,
                 interval=0.1,
                 what=f"SIGHUP number {n} counted as a successful reload")
    load.stop.set()
    load.join(5)
    assert load.errors == []
    assert load.count > 100
    text = gw.metrics_text()
    assert 'safegate_config_reloads_total{result="failure"} 0.0' in text
    assert 'safegate_config_last_reload_successful 1.0' in text


def _drugs_blocked(gw: SafeGateProcess) -> bool:
    q = dns.message.make_query("drugs.test", "A", use_edns=0)
    return blocked(dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2))


def _reloads(gw: SafeGateProcess, result: str) -> float:
    m = re.search(rf'^safegate_config_reloads_total{{result="{result}"}} (\S+)$',
                  gw.metrics_text(), re.M)
    assert m, f"no safegate_config_reloads_total{{result={result!r}}} in /metrics"
    return float(m.group(1))


def test_broken_change_keeps_the_running_config(unbound: ub.UnboundServer,
                                                safegate_factory: Any) -> None:
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
                          lists_yaml=LISTS_YAML, extra={"reload": {"watch_interval": 0.2}})
    base = _config_dir(gw)
    policy = base / "policies" / "p.yaml"
    policy.write_text(POLICY.replace("block: [adult, gambling]", "blok: [adult, gambling]"))
    text = _wait_metric(gw, 'safegate_config_reloads_total{result="failure"} 1.0')
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
    _wait_metric(gw, 'safegate_config_reloads_total{result="failure"} 2.0')
    assert "nope.txt" in gw.stderr_text()
    assert blocked(dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2))
    # fixing the file recovers
    policy.write_text(POLICY.replace("kids: {block: [adult, gambling]", "kids: {block: [gambling]"))
    (base / "blocklists" / "lists.yaml").write_text(LISTS_YAML)
    wait_for(lambda: not blocked(dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2)),
             what="the fixed policy was applied")


def _wait_metric(gw: SafeGateProcess, text: str, timeout: float = 20.0) -> str:
    """The metrics page once it contains `text` (polled; the timeout is only an upper bound)."""
    def page() -> str:
        body = gw.metrics_text()
        return body if text in body else ""
    return wait_for(page, timeout=timeout, what=f"{text!r} in the metrics")


def _adult_blocked(gw: SafeGateProcess) -> bool:
    q = dns.message.make_query("x.adult-site.test", "A", use_edns=0)
    r = dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2)
    assert r.rcode() == dns.rcode.NOERROR, r   # never REFUSED: the kids network still exists
    return blocked(r)


def test_a_nul_byte_fails_the_reload_and_the_watcher_keeps_watching(
        unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    """Issue #10 item 6: a NUL byte used to raise outside the reload's error handling, which
    ended the file watcher: no failure counted, and later edits were never picked up."""
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
                          lists_yaml=LISTS_YAML, extra={"reload": {"watch_interval": 0.2}})
    policy = _config_dir(gw) / "policies" / "p.yaml"
    _wait_metric(gw, 'safegate_config_reloads_total{result="failure"} 0.0')
    policy.write_bytes(POLICY.encode().replace(b"teens: {", b"teens: {\x00", 1))
    _wait_metric(gw, 'safegate_config_reloads_total{result="failure"} 1.0')
    assert (f"{policy}:3: non-printable character '\\x00' (#x0000) is not allowed"
            in gw.stderr_text())
    assert _adult_blocked(gw), "the running policy must still answer"
    # a valid edit afterwards is picked up by the same watcher
    policy.write_text(POLICY.replace("kids: {block: [adult, gambling]", "kids: {block: [gambling]"))
    wait_for(lambda: not _adult_blocked(gw),
             what="the same watcher applied the fixed policy (it died if not)")
    assert "safegate_config_last_reload_successful 1.0" in gw.metrics_text()


@pytest.mark.parametrize("text", ["", "# all networks removed\n"])
def test_an_emptied_policy_file_is_a_failed_reload(unbound: ub.UnboundServer,
                                                   safegate_factory: Any, text: str) -> None:
    """Issue #10 item 5: an empty policy file used to reload "successfully" and REFUSE everyone."""
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
                          lists_yaml=LISTS_YAML, extra={"reload": {"watch_interval": 0.2}})
    policy = _config_dir(gw) / "policies" / "p.yaml"
    policy.write_text(text)
    page = _wait_metric(gw, 'safegate_config_reloads_total{result="failure"} 1.0')
    assert "safegate_config_last_reload_successful 0.0" in page
    assert f"{policy}: policy file is empty" in gw.stderr_text()
    assert _adult_blocked(gw)


def test_the_watcher_survives_any_exception_in_a_reload(tmp_path: Path) -> None:
    """Whatever a reload raises (a bug no check foresaw), the watcher counts a failure, logs it
    and keeps watching. The fault is injected: no input is known to cause one any more."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from gateway.runtime.app import Gateway

    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("{}\n")
    gw = Gateway(cfg, CollectorRegistry())
    builds: list[int] = []

    async def broken_build(previous: object) -> Any:
        builds.append(1)
        raise RuntimeError("an unforeseen bug")

    gw.builder.build = broken_build  # type: ignore[method-assign]

    async def scenario() -> None:
        watcher = asyncio.get_running_loop().create_task(gw.watch())
        for n in (1, 2):
            cfg.write_text("{}\n" + "#" * n)   # a change the watcher notices
            await async_wait_for(lambda n=n: watcher.done() or len(builds) >= n,
                                 what=f"build {n} was tried")
            assert not watcher.done(), "the watcher died"
        assert not watcher.done()
        gw._stop.set()
        await watcher
        assert await gw.reload("SIGHUP") is False   # a signal's reload fails the same way

    asyncio.run(scenario())
    assert gw.registry.get_sample_value("safegate_config_reloads_total",
                                        {"result": "failure"}) == 3


def test_the_proxy_reload_survives_any_exception(tmp_path: Path) -> None:
    """The proxy process's rule reload has the same guard (its watcher calls it)."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from gateway.proxy.runner import ProxyProcess

    proxy = ProxyProcess(tmp_path / "gateway.yaml", CollectorRegistry())

    async def broken_build() -> Any:
        raise RuntimeError("an unforeseen bug")

    proxy.build = broken_build  # type: ignore[method-assign]
    assert asyncio.run(proxy.reload("SIGHUP")) is False
    assert proxy.registry.get_sample_value("safegate_proxy_reload_failures_total") == 1
