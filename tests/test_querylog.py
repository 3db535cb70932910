"""The query log: the policy key, the daily salt, the bounded store, the recorder's bounded
queue, and that a logged network's every UDP query reaches the log (no memo, no fast path)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dns.message
import pytest
from prometheus_client import CollectorRegistry

from gateway.config.limits import MemoryLimits, QueryLogLimits
from gateway.errors import ConfigError, ConfigErrors
from gateway.policy.decide import Verdict
from gateway.policy.policyfile import load_policy
from gateway.querylog.recorder import QueryRecorder
from gateway.querylog.salt import FILENAME, DailySalt
from gateway.querylog.store import QueryLogStore
from tests.support.builders import list_index, make_profile, make_resolver

DAY = 86400.0
T0 = 1_780_000_000.0            # 2026-05-28, some time of the day (UTC)


class Clock:
    """The one fake: time."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


POLICY = """\
tiers:
  kids: {block: [adult]}
networks:
  - name: room-2
    cidrs: ["10.0.2.0/24"]
    tier: kids
    query_log: {retention_hours: %s}
"""


def test_query_log_key_on_a_network(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY % 168)
    assert load_policy([path], ["adult"]).networks[0].query_log_hours == 168
    path.write_text(POLICY.replace(" {retention_hours: %s}", " {}"))
    assert load_policy([path], ["adult"]).networks[0].query_log_hours == 24
    path.write_text(POLICY.replace("    query_log: {retention_hours: %s}\n", ""))
    assert load_policy([path], ["adult"]).networks[0].query_log_hours == 0   # off by default
    for bad in ("169", "0", "true", "'24'"):
        path.write_text(POLICY % bad)
        with pytest.raises((ConfigError, ConfigErrors)) as info:
            load_policy([path], ["adult"])
        assert f"{path}:7:" in str(info.value) and "1 to 168" in str(info.value), bad


def test_salt_is_kept_within_a_day_and_replaced_the_next(tmp_path: Path) -> None:
    clock = Clock()
    salt = DailySalt(tmp_path, clock)
    first = salt.client("10.0.2.7", T0)
    assert first == salt.client("10.0.2.7", T0 + 60) != salt.client("10.0.2.8", T0)
    assert "10.0.2.7" not in first and len(first) == 16
    assert (tmp_path / FILENAME).stat().st_mode & 0o777 == 0o600
    # A restart the same day: the same hashes (the salt was saved).
    assert DailySalt(tmp_path, clock).client("10.0.2.7", T0 + 120) == first
    # The next day: a new salt, yesterday's is gone from memory and from the file.
    old = (tmp_path / FILENAME).read_text()
    next_day = salt.client("10.0.2.7", T0 + DAY)
    assert next_day != first
    assert (tmp_path / FILENAME).read_text() != old
    assert DailySalt(tmp_path, clock).client("10.0.2.7", T0 + DAY) == next_day


def _row(t: float, network: str = "room-2", qname: str = "a.example",
         verdict: str = "blocked") -> tuple[float, str, str, str, int, str, str, str]:
    return (t, network, "kids", qname, 1, verdict, "adult", "c0ffee")


def test_store_keeps_at_most_its_rows_oldest_out(tmp_path: Path) -> None:
    store = QueryLogStore(tmp_path / "q.sqlite3", max_rows=100)
    pushed = sum(store.add([_row(T0 + i, qname=f"n{i}.example") for i in range(j, j + 30)])
                 for j in range(0, 300, 30))
    assert pushed == 200 and store.rows == 100
    names = [f.qname for f in store.search(limit=1000)]
    assert names[0] == "n299.example" and names[-1] == "n200.example"
    store.close()
    assert QueryLogStore(tmp_path / "q.sqlite3", 100).rows == 100   # counted again on open


def test_store_search_and_purge(tmp_path: Path) -> None:
    store = QueryLogStore(tmp_path / "q.sqlite3", max_rows=1000)
    store.add([_row(T0 - 30 * 3600, qname="old.example"), _row(T0, qname="50%_off.example"),
               _row(T0, qname="5000.example", verdict="allowed"),
               _row(T0, network="gone", qname="x.example")])
    assert [f.qname for f in store.search(name="50%_")] == ["50%_off.example"]   # literal
    assert [f.qname for f in store.search(verdict="allowed")] == ["5000.example"]
    assert [f.qname for f in store.search(since=T0 - 3600, network="room-2",
                                          verdict="blocked")] == ["50%_off.example"]
    assert [f.qname for f in store.search(until=T0 - 3600)] == ["old.example"]
    # room-2 keeps 24 h; a network no longer logged keeps the default 24 h as well.
    assert store.purge(T0, {"room-2": 24}, 24) == 1
    assert store.purge(T0 + 25 * 3600, {"room-2": 48}, 24) == 1       # "gone"'s row
    assert store.rows == 2


async def test_recorder_batches_hashes_and_bounds_its_queue(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    clock = Clock()
    recorder = QueryRecorder(tmp_path, QueryLogLimits(pending=5), registry, clock)
    hook = recorder.hook("room-2", "kids")
    for i in range(8):
        hook(b"a.example", 1, Verdict(True, "policy", "adult"), f"10.0.2.{i}")
    assert registry.get_sample_value("safegate_querylog_dropped_total",
                                     {"reason": "pending"}) == 3
    await recorder.flush()
    found = recorder.store.search()
    assert len(found) == 5 and {f.verdict for f in found} == {"blocked"}
    assert all(not f.client.startswith("10.") for f in found)
    assert registry.get_sample_value("safegate_querylog_rows") == 5
    assert registry.get_sample_value("safegate_querylog_written_total") == 5
    stop = asyncio.Event()
    stop.set()
    await recorder.run(stop, lambda: {"room-2": 24}, 24)    # final flush, then closed


def test_a_logged_network_logs_every_udp_query_even_repeated_blocked_ones() -> None:
    calls: list[tuple[bytes, int, bool, str]] = []

    def hook(qname: bytes, qtype: int, verdict: Verdict, client: str) -> None:
        calls.append((qname, qtype, verdict.blocked, client))

    index = list_index({b"adult.example": "adult"})
    plain = make_resolver(make_profile(["adult"], index=index))
    logged = make_resolver(make_profile(["adult"], index=index, log=hook, reply_memo=0))
    query = dns.message.make_query("adult.example", "A", use_edns=False).to_wire()
    for _ in range(3):
        assert plain.handle(query, "127.0.0.1", "udp") == logged.handle(query, "127.0.0.1",
                                                                         "udp")
    assert calls == [(b"adult.example", 1, True, "127.0.0.1")] * 3
    assert len(plain.view.clients.lookup("127.0.0.1").replies) == 1   # memoized
    assert MemoryLimits().reply_memo > 0
