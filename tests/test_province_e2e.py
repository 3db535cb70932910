"""The province tier with real processes: ministry publisher -> province publisher -> two school
gateways (real unbound upstream), each school subscribed to two signed feeds (the national one
through the province's mirror, and the province's own).

A national order is blocked at both schools and their acks reach the ministry under the
province; a provincial order is blocked at both and acked at the province; a national document
altered on its way through the province is refused by the school (the ministry's signature);
acks waiting for the ministry survive a province restart.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.feeds import NAME, acked, ede_of, entry, sample_of
from tests.support.interposer import Interposer
from tests.support.procs import REPO_ROOT, SafeGateProcess
from tests.support.publisher import (
    ADMIN_TOKEN,
    PublisherProcess,
    gateway_token,
    run_feed,
    start_publisher,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

PROVINCE = "ha-noi"
PROVINCE_TOKEN = "province-ha-noi-token-0123456789"
SCHOOLS = ("thpt-a", "thpt-b")
NATIONAL_NAME = NAME                 # malware.example
PROVINCIAL_NAME = "gamble.test"
TAMPERED_NAME = "drugs.test"


@dataclass
class Tier:
    ministry: PublisherProcess
    province: PublisherProcess
    link: Interposer                 # province -> ministry
    school_b_link: Interposer        # school B -> province, national feed only

    def metrics(self, pub: PublisherProcess) -> str:
        return pub.request("GET", "/metrics").body.decode()


def start_province(directory: Path, ministry: PublisherProcess, link: Interposer,
                   database: str | None = None, limits: dict[str, int] | None = None
                   ) -> PublisherProcess:
    extra: dict[str, Any] = {"upstream": {
        "url": link.url + "/v1/feed", "public_key": str(ministry.setup.public_key),
        "token": PROVINCE_TOKEN, "province": PROVINCE}}
    if database is not None:
        extra["database"] = database
    if limits:
        extra["limits"] = limits
    return start_publisher(directory, gateways=SCHOOLS, extra=extra)


@pytest.fixture
def tier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tier]:
    """The ministry on SQLite, or on PostgreSQL (a national deployment) when the test says
    so with parametrize("tier", ["postgresql"], indirect=True); "all-postgresql" puts the
    province on PostgreSQL too."""
    extra: dict[str, Any] = {"provinces": [
        {"id": PROVINCE, "name": "Hà Nội", "token": PROVINCE_TOKEN}]}
    backend = getattr(request, "param", "sqlite")
    province_db = None
    if backend in ("postgresql", "all-postgresql"):
        extra["database"] = request.getfixturevalue("postgres").new_database("ministry")
    if backend == "all-postgresql":
        province_db = request.getfixturevalue("postgres").new_database("province")
    ministry = start_publisher(tmp_path / "ministry", gateways=(), extra=extra)
    link = Interposer(ministry.url).start()
    province = start_province(tmp_path / "province", ministry, link, province_db)
    school_b_link = Interposer(province.url).start()
    t = Tier(ministry, province, link, school_b_link)
    try:
        yield t
    finally:
        t.province.kill()
        ministry.kill()
        link.stop()
        school_b_link.stop()


def school_extra(tier: Tier, school: str, national_base: str) -> dict[str, Any]:
    return {
        "gateway": {"id": school, "token": gateway_token(school), "report_stats": True},
        "feeds": [
            {"name": "national", "url": national_base + "/v1/national/feed",
             "type": "safegate", "public_key": str(tier.ministry.setup.public_key),
             "interval": 60, "long_poll": 10},
            {"name": "province", "url": tier.province.url + "/v1/feed", "type": "safegate",
             "public_key": str(tier.province.setup.public_key), "interval": 60,
             "long_poll": 10},
        ],
    }


def start_schools(tier: Tier, unbound: ub.UnboundServer, safegate_factory: Any
                  ) -> list[SafeGateProcess]:
    bases = (tier.province.url, tier.school_b_link.url)
    return [safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                             lists=LISTS, lists_yaml=LISTS_YAML,
                             extra=school_extra(tier, school, base))
            for school, base in zip(SCHOOLS, bases, strict=True)]


def order(pub: PublisherProcess, rid: str, value: str) -> None:
    r = pub.request("POST", "/v1/entries", body={"entries": [entry(rid, value)]},
                    token=ADMIN_TOKEN)
    assert r.status == 201, r.body


@pytest.mark.parametrize("tier", ["sqlite", "postgresql"], indirect=True)
def test_orders_from_ministry_and_province_reach_both_schools_and_are_acked_where_issued(
        tier: Tier, unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    schools = start_schools(tier, unbound, safegate_factory)
    for gw in schools:
        assert ede_of(gw.dns_port, NATIONAL_NAME) is None
    order(tier.ministry, "BCA-2026-0001", NATIONAL_NAME)
    order(tier.province, "HN-2026-0001", PROVINCIAL_NAME)
    for gw in schools:
        for name in (NATIONAL_NAME, PROVINCIAL_NAME):
            wait_for(lambda gw=gw, name=name: ede_of(gw.dns_port, name) == 16, 30.0,
                     what=f"{name} blocked (EDE 16) at both schools")
    for school in SCHOOLS:
        wait_for(lambda school=school: acked(tier.ministry, "BCA-2026-0001",
                                             f"{PROVINCE}/{school}"), 30.0,
                 what=f"the ministry has {school}'s verified ack under {PROVINCE}")
        wait_for(lambda school=school: acked(tier.province, "HN-2026-0001", school), 30.0,
                 what=f"the province has {school}'s verified ack")
    # The national order is the ministry's: the province's own feed never had it.
    assert tier.province.request("GET", "/v1/entries/BCA-2026-0001").status == 404
    assert tier.ministry.request("GET", "/v1/entries/HN-2026-0001").status == 404

    m = tier.metrics(tier.ministry)
    for school in SCHOOLS:
        gid = f"{PROVINCE}/{school}"
        assert sample_of(m, "safegate_publisher_gateway_province", gateway=gid,
                         province=PROVINCE) == 1
        assert sample_of(m, "safegate_publisher_gateway_applied_serial", gateway=gid) == 1
        assert sample_of(m, "safegate_publisher_gateway_overdue_entries", gateway=gid) == 0
        assert sample_of(m, "safegate_publisher_enforcement_latency_seconds_count",
                         gateway=gid) == 1
    assert sample_of(m, "safegate_publisher_province_gateways", province=PROVINCE) == 2
    assert sample_of(m, "safegate_publisher_province_gateways_behind", province=PROVINCE) == 0
    assert sample_of(m, "safegate_publisher_province_enforcement_latency_seconds_count",
                     province=PROVINCE) == 2
    assert sample_of(m, "safegate_publisher_province_acks_rejected_total", province=PROVINCE,
                     reason="unknown_entries") == 0
    p = tier.metrics(tier.province)
    assert sample_of(p, "safegate_publisher_mirror_serial") == 1
    assert sample_of(p, "safegate_publisher_gateway_applied_serial", gateway="thpt-a") == 1
    wait_for(lambda: sample_of(tier.metrics(tier.province),
                               "safegate_publisher_upstream_pending_acks") == 0, 30.0,
             what="the province's outbox drained")

    # The ministry's report: both school gateways, and the province pooled.
    today = time.strftime("%Y-%m-%d", time.gmtime())
    out = subprocess.run([sys.executable, "-m", "gateway", "report", "-c",
                          str(tier.ministry.setup.config), "--from", today, "--to", today,
                          "--format", "json", "--tz", "UTC"], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {s["name"] for s in report["sections"]} == {f"{PROVINCE}/{s}" for s in SCHOOLS}
    (prov,) = report["provinces"]
    assert prov["name"] == "Hà Nội (ha-noi)"
    assert prov["mandatory"]["received"] == 2 and prov["mandatory"]["within_deadline"] == 2
    html = subprocess.run([sys.executable, "-m", "gateway", "report", "-c",
                           str(tier.ministry.setup.config), "--from", today, "--to", today,
                           "--format", "html", "--tz", "UTC"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60, check=False)
    assert html.returncode == 0, html.stderr
    assert "Province, all its gateways</span>: Hà Nội (ha-noi)" in html.stdout

    # The province's own view of the national order: which of its schools applied it.
    for school in SCHOOLS:
        assert sample_of(p, "safegate_publisher_national_gateway_applied_serial",
                         gateway=school) == 1
        assert sample_of(p, "safegate_publisher_national_gateway_verified_entries",
                         gateway=school) == 1
        assert sample_of(p, "safegate_publisher_national_gateway_overdue_entries",
                         gateway=school) == 0
    out = subprocess.run([sys.executable, "-m", "gateway", "report", "-c",
                          str(tier.province.setup.config), "--from", today, "--to", today,
                          "--format", "json", "--tz", "UTC"], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    sections = {s["name"]: s for s in json.loads(out.stdout)["sections"]}
    assert set(sections) == set(SCHOOLS)
    for school in SCHOOLS:
        rows = {e["id"]: e for e in sections[school]["entries"]}
        assert set(rows) == {"BCA-2026-0001", "HN-2026-0001"}
        assert rows["BCA-2026-0001"]["authority"] == "Bộ Công an"
        assert rows["BCA-2026-0001"]["verified_at"] and rows["HN-2026-0001"]["verified_at"]
        assert sections[school]["mandatory"]["received"] == 2

    # A national document altered at the province: school B refuses it (bad signature) and
    # keeps what it had; school A, fed the untouched bytes, enforces the new order.
    tier.school_b_link.tamper = (TAMPERED_NAME.encode(), b"drugx.test")
    order(tier.ministry, "BCA-2026-0002", TAMPERED_NAME)
    wait_for(lambda: ede_of(schools[0].dns_port, TAMPERED_NAME) == 16, 30.0,
             what="school A enforces the second national order")
    national = {"feed": "national"}
    wait_for(lambda: (sample_of(schools[1].metrics_text(), "safegate_feed_rejected_total",
                                reason="bad_signature", **national) or 0) >= 1, 30.0,
             what="school B refused the tampered national document")
    assert tier.school_b_link.tampered >= 1
    assert sample_of(schools[1].metrics_text(), "safegate_feed_serial", **national) == 1
    assert ede_of(schools[1].dns_port, TAMPERED_NAME) is None
    assert ede_of(schools[1].dns_port, "drugx.test") is None
    assert ede_of(schools[1].dns_port, NATIONAL_NAME) == 16     # the last good one stays
    tier.school_b_link.tamper = None
    wait_for(lambda: ede_of(schools[1].dns_port, TAMPERED_NAME) == 16, 90.0,
             what="school B catches up once the bytes are the ministry's again")


@pytest.mark.parametrize("tier", ["sqlite", "all-postgresql"], indirect=True)
def test_acks_waiting_for_the_ministry_survive_a_province_restart(
        tmp_path: Path, tier: Tier, unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    schools = start_schools(tier, unbound, safegate_factory)
    tier.link.refuse_posts = True        # the ministry is unreachable for acks
    order(tier.ministry, "BCA-2026-0003", NATIONAL_NAME)
    for gw in schools:
        wait_for(lambda gw=gw: ede_of(gw.dns_port, NATIONAL_NAME) == 16, 30.0,
                 what="blocked at both schools")

    def pending() -> float:
        return sample_of(tier.metrics(tier.province),
                         "safegate_publisher_upstream_pending_acks") or 0

    def schools_acked_to_province() -> bool:
        # each school's gateway-side outbox is empty: the province holds the acks now
        return all(sample_of(gw.metrics_text(), "safegate_feed_outbox_pending") == 0
                   for gw in schools)

    wait_for(lambda: pending() >= 2 and schools_acked_to_province(), 30.0,
             what="the schools' verified acks queued at the province")
    held = pending()
    tier.province.stop()
    tier.province = start_publisher(tier.province.setup.directory)
    assert pending() == held
    tier.link.refuse_posts = False
    for school in SCHOOLS:
        wait_for(lambda school=school: acked(tier.ministry, "BCA-2026-0003",
                                             f"{PROVINCE}/{school}"), 120.0,
                 what=f"{school}'s ack delivered after the restart")
    wait_for(lambda: pending() == 0, 30.0, what="the province's outbox drained")
    assert sample_of(tier.metrics(tier.province), "safegate_publisher_upstream_acks_total",
                     result="refused") == 0


def test_a_ministry_refuses_forwarded_acks_without_a_province_token_and_past_its_budget(
        tmp_path: Path) -> None:
    ministry = start_publisher(tmp_path / "ministry", gateways=("gw-x",), extra={
        "provinces": [{"id": PROVINCE, "name": "Hà Nội", "token": PROVINCE_TOKEN}],
        "limits": {"province_gateways": 2}})
    try:
        order(ministry, "BCA-1", NATIONAL_NAME)

        def ack(school: str, token: str) -> int:
            return ministry.request("POST", "/v1/provinces/acks", token=token, body={
                "gateway": school, "feed": "national", "serial": 1,
                "entries": [{"id": "BCA-1", "outcome": "verified",
                             "received_at": "2026-12-04T00:00:00Z",
                             "applied_at": "2026-12-04T00:00:00Z",
                             "verified_at": "2026-12-04T00:00:01Z"}]}).status

        assert ack("s1", gateway_token("gw-x")) == 401     # a school token is not a province
        assert ack("s1", PROVINCE_TOKEN) == 200
        assert ack("s2", PROVINCE_TOKEN) == 200
        assert ack("s1", PROVINCE_TOKEN) == 200             # known schools always go in
        assert ack("s3", PROVINCE_TOKEN) == 422             # a third school: past the budget
        m = ministry.request("GET", "/metrics").body.decode()
        assert sample_of(m, "safegate_publisher_province_gateways", province=PROVINCE) == 2
        assert sample_of(m, "safegate_publisher_province_acks_rejected_total", province=PROVINCE,
                         reason="province_full") == 1
        assert sample_of(m, "safegate_publisher_gateway_applied_serial",
                         gateway=f"{PROVINCE}/s3") is None
    finally:
        ministry.kill()


def test_bad_upstream_and_provinces_sections_are_named_with_their_line(tmp_path: Path) -> None:
    ministry = tmp_path / "m"
    start = start_publisher(ministry, gateways=("gw-x",))
    start.kill()
    cfg = (ministry / "publisher.yaml").read_text()
    for extra, message in (
            ("upstream:\n  url: ftp://m.example/v1/feed\n  public_key: k.pub\n"
             f"  token: {PROVINCE_TOKEN}\n  province: ha-noi\n", "upstream.url"),
            (f"provinces:\n  - id: Ha Noi\n    token: {PROVINCE_TOKEN}\n", "province id"),
            (f"provinces:\n  - id: hn\n    token: {gateway_token('gw-x')}\n",
             "already used")):
        (ministry / "publisher.yaml").write_text(cfg + extra)
        r = run_feed("serve", "-c", str(ministry / "publisher.yaml"), timeout=30)
        assert r.returncode != 0
        assert "publisher.yaml" in r.stderr and message in r.stderr, r.stderr


@contextlib.contextmanager
def refusing_link(tmp_path: Path, ministry_limits: dict[str, int],
                  province_limits: dict[str, int]
                  ) -> Iterator[tuple[PublisherProcess, Interposer, PublisherProcess]]:
    """(ministry, link, province): the province reaches the ministry through `link`, which
    refuses POSTs until the test says otherwise (acks wait in the province's outbox); the
    ministry has ordered BCA-1 and the province mirrors serial 1."""
    extra: dict[str, Any] = {"provinces": [
        {"id": PROVINCE, "name": "Hà Nội", "token": PROVINCE_TOKEN}]}
    if ministry_limits:
        extra["limits"] = ministry_limits
    ministry = start_publisher(tmp_path / "ministry", gateways=(), extra=extra)
    link = Interposer(ministry.url).start()
    link.refuse_posts = True
    province = start_province(tmp_path / "province", ministry, link, limits=province_limits)
    try:
        order(ministry, "BCA-1", NATIONAL_NAME)
        wait_for(lambda: sample_of(province.request("GET", "/metrics").body.decode(),
                                   "safegate_publisher_mirror_serial") == 1, 30.0,
                 what="the province mirrored serial 1")
        yield ministry, link, province
    finally:
        province.kill()
        ministry.kill()
        link.stop()


def test_a_province_checks_school_acks_and_bounds_what_waits_for_the_ministry(
        tmp_path: Path) -> None:
    """What a school (or anyone holding a school's token) can make a province keep: only acks
    of its own id, for serials and entries of the mirrored national feed, at most
    limits.upstream_pending of them while the ministry is away (then 503: the schools keep
    them), each at most limits.ack_bytes."""
    with refusing_link(tmp_path, {}, {"upstream_pending": 1, "ack_bytes": 4096}) as (
            ministry, link, province):

        def post(school: str, serial: int = 1, rid: str = "BCA-1", pad: str = "") -> int:
            return province.request("POST", "/v1/national/acks", token=gateway_token("thpt-a"),
                                    body={"gateway": school, "feed": "national" + pad,
                                          "serial": serial,
                                          "entries": [{"id": rid, "outcome": "received",
                                                       "received_at": "2026-12-04T00:00:00Z"}]}
                                    ).status

        assert post("thpt-b") == 403                 # another school's id
        assert post("thpt-a", serial=2) == 409       # a serial the ministry never published
        assert post("thpt-a", rid="FAKE-1") == 422   # an entry the national feed never had
        assert post("thpt-a", pad="x" * 5000) == 413
        r = province.request("POST", "/v1/national/acks", body={"gateway": "thpt-a"})
        assert r.status == 401                       # no token
        assert post("thpt-a") == 200
        assert post("thpt-a") == 503                 # one waits already: the school keeps it
        m = province.request("GET", "/metrics").body.decode()
        assert sample_of(m, "safegate_publisher_upstream_pending_acks") == 1
        link.refuse_posts = False
        wait_for(lambda: ministry.request("GET", "/v1/entries/BCA-1").json()["gateways"] != [],
                 60.0, what="the ministry got the one ack")
        (gw,) = ministry.request("GET", "/v1/entries/BCA-1").json()["gateways"]
        assert gw["gateway"] == f"{PROVINCE}/thpt-a" and gw["outcome"] == "received"


def test_a_school_back_after_long_may_ack_a_removal_whose_diff_the_province_dropped(
        tmp_path: Path) -> None:
    """A school offline for a while takes the snapshot and acks the entries it no longer has
    as "removed". The province keeps only limits.mirror_diffs diffs, but remembers every
    national id: refusing such an ack (422) would stall the school's national acks for good."""
    ministry = start_publisher(tmp_path / "ministry", gateways=(), extra={"provinces": [
        {"id": PROVINCE, "name": "Hà Nội", "token": PROVINCE_TOKEN}]})
    province = start_publisher(tmp_path / "province", gateways=SCHOOLS, extra={
        "upstream": {"url": ministry.url + "/v1/feed",
                     "public_key": str(ministry.setup.public_key),
                     "token": PROVINCE_TOKEN, "province": PROVINCE},
        "limits": {"mirror_diffs": 1}})
    try:
        def mirrored(serial: int) -> None:
            wait_for(lambda: sample_of(province.request("GET", "/metrics").body.decode(),
                                       "safegate_publisher_mirror_serial") == serial, 30.0,
                     what=f"the province mirrored serial {serial}")

        order(ministry, "BCA-1", NATIONAL_NAME)
        mirrored(1)
        assert ministry.request("DELETE", "/v1/entries/BCA-1", token=ADMIN_TOKEN).status == 200
        mirrored(2)
        order(ministry, "BCA-2", PROVINCIAL_NAME)
        mirrored(3)
        order(ministry, "BCA-3", TAMPERED_NAME)
        mirrored(4)
        # only the diff 3 -> 4 is kept: BCA-1 is in no document the province serves now
        assert sample_of(province.request("GET", "/metrics").body.decode(),
                         "safegate_publisher_mirror_diffs") == 1
        assert province.request("GET", "/v1/national/feed?since=1").headers.get(
            "X-SafeGate-Full") == "1"

        def post(rid: str, outcome: str) -> int:
            return province.request("POST", "/v1/national/acks", token=gateway_token("thpt-a"),
                                    body={"gateway": "thpt-a", "feed": "national", "serial": 4,
                                          "entries": [{"id": rid, "outcome": outcome,
                                                       "received_at": "2026-12-04T00:00:00Z"}]}
                                    ).status

        assert post("BCA-1", "removed") == 200
        assert post("NEVER-1", "removed") == 422
        wait_for(lambda: any(g["gateway"] == f"{PROVINCE}/thpt-a" and g["outcome"] == "removed"
                             for g in ministry.request("GET", "/v1/entries/BCA-1"
                                                       ).json()["gateways"]),
                 30.0, what="the removal acked at the ministry")
    finally:
        province.kill()
        ministry.kill()


def national_ack(school: str, outcome: str, serial: int = 1, rid: str = "BCA-1"
                 ) -> dict[str, Any]:
    times = {"received_at": "2026-12-04T00:00:00Z"}
    if outcome == "verified":
        times |= {"applied_at": "2026-12-04T00:00:00.25Z",
                  "verified_at": "2026-12-04T00:00:00.5Z"}
    return {"gateway": school, "feed": "national", "serial": serial,
            "entries": [{"id": rid, "outcome": outcome, **times}]}


def test_acks_go_up_in_batches_answered_per_ack_and_one_school_cannot_fill_the_outbox(
        tmp_path: Path) -> None:
    """While the ministry is away, a hostile school (its token posting ack after ack) fills
    only its own share of the province's outbox: the other school's ack still goes in. Back
    online, the ministry gets every ack in one POST, in order, and refuses one of them (the
    province is past limits.province_gateways): only that one is dropped."""
    with refusing_link(tmp_path, {"province_gateways": 1}, {
            "upstream_pending": 10, "upstream_pending_per_school": 3,
            "upstream_batch_acks": 4}) as (ministry, link, province):

        def post(school: str, outcome: str) -> int:
            return province.request("POST", "/v1/national/acks", token=gateway_token(school),
                                    body=national_ack(school, outcome)).status

        assert [post("thpt-a", o) for o in ("received", "verified", "verified")] == [200] * 3
        assert post("thpt-a", "verified") == 503            # its share is full
        assert post("thpt-b", "received") == 200            # the other school is not starved
        m = province.request("GET", "/metrics").body.decode()
        assert sample_of(m, "safegate_publisher_upstream_pending_acks") == 4
        assert sample_of(m, "safegate_publisher_national_acks_deferred_total",
                         reason="school_pending_full") == 1
        assert sample_of(m, "safegate_publisher_national_acks_deferred_total",
                         reason="pending_full") == 0
        assert link.posts == 0
        link.refuse_posts = False
        wait_for(lambda: sample_of(province.request("GET", "/metrics").body.decode(),
                                   "safegate_publisher_upstream_pending_acks") == 0, 90.0,
                 what="the province's outbox drained")
        assert link.posts == 1                               # four acks, one POST
        m = province.request("GET", "/metrics").body.decode()
        assert sample_of(m, "safegate_publisher_upstream_acks_total", result="delivered") == 3
        assert sample_of(m, "safegate_publisher_upstream_acks_total", result="refused") == 1
        assert sample_of(m, "safegate_publisher_upstream_batching") == 1
        (gw,) = ministry.request("GET", "/v1/entries/BCA-1").json()["gateways"]
        # in order: "received" then "verified" (the other order would leave "received")
        assert gw["gateway"] == f"{PROVINCE}/thpt-a" and gw["outcome"] == "verified"
        assert sample_of(ministry.request("GET", "/metrics").body.decode(),
                         "safegate_publisher_province_acks_rejected_total", province=PROVINCE,
                         reason="province_full") == 1


def test_a_ministry_that_refuses_the_batch_gets_one_ack_per_post_and_loses_none(
        tmp_path: Path) -> None:
    """A ministry taking fewer acks per POST than the province sends (or an older one that
    knows only the single form) answers the batch 413/400 without per-ack results: the
    province goes on one ack per POST and drops nothing."""
    with refusing_link(tmp_path, {"upstream_batch_acks": 1}, {}) as (ministry, link, province):
        for school in SCHOOLS:
            assert province.request("POST", "/v1/national/acks", token=gateway_token(school),
                                    body=national_ack(school, "received")).status == 200
        # A POST refused after both acks were stored: the province's next attempt (it sends
        # one at a time) takes both. Opening the link earlier could let a single-ack POST
        # begun before the second ack arrived pass, and no batch would ever be tried.
        refused = link.refused
        wait_for(lambda: link.refused > refused, 90.0, what="a POST refused after both acks")
        link.refuse_posts = False
        wait_for(lambda: sample_of(province.request("GET", "/metrics").body.decode(),
                                   "safegate_publisher_upstream_pending_acks") == 0, 90.0,
                 what="the province's outbox drained")
        m = province.request("GET", "/metrics").body.decode()
        assert sample_of(m, "safegate_publisher_upstream_batching") == 0
        assert sample_of(m, "safegate_publisher_upstream_acks_total", result="delivered") == 2
        assert sample_of(m, "safegate_publisher_upstream_acks_total", result="refused") == 0
        assert link.posts == 3                               # the batch, then one by one
        got = {g["gateway"] for g in ministry.request("GET", "/v1/entries/BCA-1"
                                                      ).json()["gateways"]}
        assert got == {f"{PROVINCE}/{s}" for s in SCHOOLS}
