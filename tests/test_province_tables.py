"""The province tier's tables on both publisher databases (gateway/publisher/db.py): the
ministry's province_gateways (ProvinceRegistry, and the report reading it), a province's
national_ids and upstream_outbox. A national deployment runs the ministry on PostgreSQL, so
every statement here must mean the same on both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.cli.report import read_province_members
from gateway.feedformat.document import Feed, FeedEntry, LegalBasis
from gateway.publisher.mirror import NationalDoc
from gateway.publisher.national_view import NationalView
from gateway.publisher.provinces import ProvinceRegistry
from gateway.publisher.store import Ack, AckEntry, Store
from gateway.publisher.upstream_acks import NationalIds, UpstreamOutbox


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    return (request.getfixturevalue("postgres").new_database("province")
            if request.param == "postgresql" else tmp_path / "p.sqlite3")


@pytest.fixture
def store(request: pytest.FixtureRequest, target: Path | str) -> Store:
    return opened(request, target)


def opened(request: pytest.FixtureRequest, target: Path | str) -> Store:
    """A connection of its own, as another publisher process (or a restart) has."""
    s = Store(target)
    request.addfinalizer(s.close)
    return s


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_province_registry_admits_up_to_its_limit_and_keeps_known_schools(
        request: pytest.FixtureRequest, target: Path | str, store: Store) -> None:
    assert read_province_members(store.db) == {}        # no table yet: an empty roll-up
    reg = ProvinceRegistry(store.db, ["hue", "ha-noi"], 2, CollectorRegistry())
    assert read_province_members(store.db) == {}
    assert reg.admit("ha-noi", "ha-noi/s1", 1.5)
    assert reg.admit("ha-noi", "ha-noi/s2", 2.5)
    assert reg.admit("ha-noi", "ha-noi/s1", 3.5)        # known: always admitted
    assert not reg.admit("ha-noi", "ha-noi/s3", 4.5)    # the third: past the limit
    assert reg.admit("hue", "hue/s1", 5.5)              # another province has its own budget
    # a second connection (another publisher process) sees the same rows
    other = opened(request, target).db
    again = ProvinceRegistry(other, ["ha-noi", "hue"], 2, CollectorRegistry())
    want = {"ha-noi/s1": "ha-noi", "ha-noi/s2": "ha-noi", "hue/s1": "hue"}
    assert again.gateways() == want
    assert list(again.gateways()) == sorted(want)
    assert read_province_members(other) == want
    # a province removed from publisher.yaml drops out of the roll-up (rows stay)
    assert ProvinceRegistry(store.db, ["hue"], 2, CollectorRegistry()).gateways() == {
        "hue/s1": "hue"}


def test_national_ids_answer_unknown_ids_past_the_parameter_limit(store: Store) -> None:
    ids = NationalIds(store.db)
    ids.add([f"BCA-{i}" for i in range(1200)])
    ids.add(["BCA-1", "BCA-2"])                          # repeats are ignored
    asked = [f"BCA-{i}" for i in range(0, 1300, 7)] + ["NEVER-1", "NEVER-1"]
    assert ids.unknown(asked) == [f"BCA-{i}" for i in range(0, 1300, 7) if i >= 1200] + [
        "NEVER-1"]
    assert ids.unknown([]) == []


def test_upstream_outbox_keeps_bytes_and_order_until_removed(
        request: pytest.FixtureRequest, target: Path | str, store: Store) -> None:
    clock = Clock()
    box = UpstreamOutbox(store.db, clock)
    woken: list[int] = []
    box.listeners.append(lambda: woken.append(1))
    assert box.oldest() is None and box.next_due() is None and box.pending() == 0
    bodies = [b'{"gateway":"s1","serial":1}', b'{"gateway":"s2","serial":1,"x":"\xc3\xa0"}',
              b'{"gateway":"s1","serial":2}']
    for i, body in enumerate(bodies):
        clock.now += 1
        box.add(f"s{i}", body)
    assert box.pending() == 3 and len(woken) == 3
    first = box.oldest()
    assert first is not None
    assert type(first.body) is bytes and first.body == bodies[0]
    assert (first.gateway, first.attempts) == ("s0", 0)
    assert box.next_due() == 1_000_001.0
    box.retry_at(first.id, 2_000_000.0)
    again = box.oldest()
    assert again is not None and again.id == first.id and again.attempts == 1
    assert box.next_due() == 2_000_000.0
    box.remove(first.id)
    second = box.oldest()
    assert second is not None and second.id > first.id and second.body == bodies[1]
    # another connection (a restart) sees what is left, in order, and new ids keep growing
    other = UpstreamOutbox(opened(request, target).db, clock)
    other.add("s9", b"{}")
    left = []
    while (item := other.oldest()) is not None:
        left.append(item.body)
        other.remove(item.id)
    assert left == [bodies[1], bodies[2], b"{}"]


def test_two_ministry_processes_never_admit_past_the_limit(
        request: pytest.FixtureRequest, target: Path | str) -> None:
    """Two publisher processes share the database: the count and the insert are one write
    transaction, so racing admissions cannot exceed limits.province_gateways."""
    import threading

    regs = [ProvinceRegistry(opened(request, target).db, ["ha-noi"], 20, CollectorRegistry())
            for _ in range(2)]
    admitted: list[list[str]] = [[], []]

    def admit(k: int) -> None:
        for i in range(60):
            gw = f"ha-noi/s{k}-{i}"
            if regs[k].admit("ha-noi", gw, float(i)):
                admitted[k].append(gw)

    threads = [threading.Thread(target=admit, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(admitted[0]) + len(admitted[1]) == 20
    assert len(regs[0].gateways()) == 20


def _doc(serial: int, since: int | None, entries: list[FeedEntry],
         removed: tuple[str, ...] = ()) -> NationalDoc:
    feed = Feed(serial, "2026-12-04T10:00:00Z", tuple(entries), removed, since)
    body = json.dumps(feed.to_json()).encode()
    ids = frozenset(e.id for e in entries) | frozenset(removed)
    return NationalDoc(serial, since, body, "", 1_780_000_000.0, ids)


def _national(rid: str, deadline: str | None = None) -> FeedEntry:
    return FeedEntry(rid, "domain", f"{rid.lower()}.example", ("csam",), "block", True,
                     LegalBasis("Bộ Công an", "123/QĐ-BCA", "2026-11-20"),
                     "2026-12-04T09:00:00Z", deadline)


def test_national_view_records_entries_and_school_acks(
        request: pytest.FixtureRequest, target: Path | str, store: Store) -> None:
    """The province's record of national entries (from the mirrored documents) and of its
    schools' acks for them: what its /metrics and `safegate report` read."""
    view = NationalView(store.db)
    view.installed(_doc(1, None, [_national("BCA-1"), _national("BCA-2")]))
    view.installed(_doc(2, 1, [_national("BCA-3", "2026-12-04T09:30:00Z")], ("BCA-2",)))
    now = 1_800_000_000.0            # 2027-01-15: every deadline (issued + 24 h) is past

    def ack(gw: str, serial: int, outcome: str, verified: float | None) -> Ack:
        return Ack(gw, serial, (AckEntry("BCA-1", 10.0, 11.0, verified, outcome),), (), {})

    view.record(ack("s1", 1, "applied", None), now)
    view.record(ack("s1", 2, "verified", 12.5), now)
    view.record(ack("s1", 1, "verified", 99.0), now)     # re-sent: times and serial stay
    view.record(ack("s2", 1, "received", None), now)
    # a restart (another connection) knows which entries are live without any document
    again = NationalView(opened(request, target).db)
    assert again.applied_serials() == {"s1": 2, "s2": 1}
    verified, overdue = again.compliance(["s1", "s2", "s3"], now, 24.0)
    assert verified == {"s1": 1, "s2": 0, "s3": 0}
    assert overdue == {"s1": 1, "s2": 2, "s3": 2}           # BCA-2 removed: not counted
    row = store.db.execute("SELECT verified_at, outcome FROM national_acks WHERE gateway=?",
                           ("s1",)).fetchone()
    assert tuple(row) == (12.5, "verified")
    # a snapshot that no longer lists BCA-1 marks it removed; the row stays for reports
    again.installed(_doc(3, None, [_national("BCA-3", "2026-12-04T09:30:00Z")]))
    assert again.compliance(["s1"], now, 24.0) == ({"s1": 0}, {"s1": 1})
    removed = dict(store.db.execute("SELECT id, removed_at FROM national_entries").fetchall())
    assert removed["BCA-1"] is not None and removed["BCA-3"] is None


def test_a_batch_is_bounded_by_count_and_bytes_and_keeps_order(store: Store) -> None:
    """limits.upstream_batch_acks / upstream_batch_bytes: what one POST to the ministry may
    carry; an ack larger than the byte bound still goes, alone, so nothing is stuck."""
    box = UpstreamOutbox(store.db, Clock())
    for i, size in enumerate((10, 10, 10, 50, 10)):
        box.add(f"s{i}", b"x" * size)
    assert [a.gateway for a in box.oldest_batch(3, 1000)] == ["s0", "s1", "s2"]
    assert [a.gateway for a in box.oldest_batch(10, 35)] == ["s0", "s1", "s2"]
    assert [a.gateway for a in box.oldest_batch(10, 5)] == ["s0"]
    box.remove_many([a.id for a in box.oldest_batch(3, 1000)])
    assert [a.gateway for a in box.oldest_batch(10, 20)] == ["s3"]
    assert box.pending_of("s3") == 1 and box.pending_of("s0") == 0 and box.pending() == 2
