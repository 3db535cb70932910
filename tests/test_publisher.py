"""The feed publisher: config, CLI, HTTP API, acks, metrics, RPZ, and a real process."""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.rdatatype
import dns.zone
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway import cli
from gateway.cli import publisher as cli_publisher
from gateway.config.limits import PublisherLimits
from gateway.errors import ConfigError
from gateway.feedformat.document import FeedEntry, LegalBasis, parse_feed
from gateway.feedformat.rpz import to_rpz
from gateway.feedformat.signing import Verifier, generate_keys, load_signer
from gateway.publisher.app import BUILDER, WATCHER, make_app
from gateway.publisher.config import load_publisher_config
from gateway.publisher.edits import never_block_conflict
from gateway.publisher.store import Store
from tests.support.feedschema import schema_errors
from tests.support.publisher import (
    ADMIN_TOKEN,
    HttpResult,
    PublisherProcess,
    PublisherSetup,
    gateway_token,
    run_feed,
    start_publisher,
    write_publisher_config,
)
from tests.support.wait import async_wait_for, wait_for

PROMTOOL = "/usr/bin/promtool"
T = "2026-11-23T10:00:00Z"


def feed_main(setup: PublisherSetup, verb: str, *args: str) -> int:
    """`safegate feed VERB -c publisher.yaml ARGS` in-process (fast)."""
    return cli.main(["feed", verb, "-c", str(setup.config), *args])


def add_args(value: str, *more: str, mandatory: bool = True) -> list[str]:
    base = ["--type", "domain", "--value", value, "--category", "csam"]
    if mandatory:
        base += ["--mandatory", "--authority", "Authority of Example", "--decision", "7/QD",
                 "--date", "2026-11-20"]
    return base + list(more)


@pytest.fixture(params=["sqlite", "postgresql"])
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> PublisherSetup:
    """publisher.yaml with max_change {ratio: 0.5, entries: 3}; keys made in-process (fast).
    Every test using it runs on both databases: a SQLite file, and a fresh PostgreSQL database
    on the session's private cluster (docs/publisher-ha.md)."""
    generate_keys(tmp_path / "keys")
    extra: dict[str, Any] = {"max_change": {"ratio": 0.5, "entries": 3}}
    if request.param == "postgresql":
        extra["database"] = request.getfixturevalue("postgres").new_database()
    return write_publisher_config(tmp_path, keygen=False, extra=extra)


# ------------------------------------------------------------------ config

@pytest.mark.parametrize(("text", "line", "problem"), [
    ("listen: x\ndatabase: d\nsigning_key: k\nbogus: 1\n", 4, "unknown key 'bogus'"),
    ("database: d\nsigning_key: k\n", 1, "needs 'listen'"),
    ("listen: '127.0.0.1:99999'\ndatabase: d\nsigning_key: k\n", 1, "bad port"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\ngateways:\n  - {id: a, token: short}\n", 5,
     "at least 16 characters"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\ngateways:\n  - {id: A B, token: "
     "tttttttttttttttttttt}\n", 5, "gateway id 'A B'"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\ngateways:\n"
     "  - {id: a, token: tttttttttttttttttttt}\n  - {id: a, token: uuuuuuuuuuuuuuuuuuuu}\n", 6,
     "listed twice"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\ngateways:\n"
     "  - {id: a, token: tttttttttttttttttttt}\n  - {id: b, token: tttttttttttttttttttt}\n", 6,
     "already used"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\nnever_block:\n  - gov.vn\n  - 'bad..name'\n", 6,
     "never_block"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\nmax_change: {ratio: 2}\n", 4,
     "max_change.ratio must be a number between"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\nmax_change:\n  entries: 1.5\n", 5,
     "max_change.entries must be an integer"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\ndiff_history: 0\n", 4, "diff_history"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\ntls: {cert: c}\n", 4, "tls needs 'key'"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\nadmin_token: 'x'\n", 4, "admin_token must"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\nheartbeat: 0\n", 4, "heartbeat must be"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\nlimits:\n  ack_bytes: 0\n", 5,
     "limits.ack_bytes must be an integer"),
    ("listen: ':1'\ndatabase: d\nsigning_key: k\nlimits:\n  series: 3\n", 5,
     "unknown key 'series'"),
])
def test_config_errors_name_file_and_line(tmp_path: Path, text: str, line: int,
                                          problem: str) -> None:
    path = tmp_path / "publisher.yaml"
    path.write_text(text.replace("':1'", "'127.0.0.1:1'"))
    with pytest.raises(ConfigError) as err:
        load_publisher_config(path)
    assert err.value.path == str(path) and err.value.line == line, str(err.value)
    assert problem in str(err.value)


def test_config_defaults_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "publisher.yaml"
    path.parent.mkdir()
    path.write_text("listen: '127.0.0.1:8443'\ndatabase: var/p.sqlite3\n"
                    "signing_key: ../keys/feed.key\n")
    cfg = load_publisher_config(path)
    assert cfg.database == tmp_path / "sub" / "var" / "p.sqlite3"
    assert cfg.signing_key == tmp_path / "keys" / "feed.key"
    assert cfg.never_block == ("gov.vn", "edu.vn")
    assert (cfg.max_change_ratio, cfg.max_change_entries) == (0.10, 1000)
    assert cfg.admin_token is None and cfg.gateways == {} and cfg.overdue_after_hours == 24
    assert cfg.heartbeat == 3600 and cfg.limits == PublisherLimits()
    assert (cfg.limits.ack_bytes, cfg.limits.stats_series) == (4 * 1024 * 1024, 256)


# ------------------------------------------------------------------ guard rails, rpz

def _e(value: str, etype: str = "domain", eid: str = "X", action: str = "block",
       mandatory: bool = True) -> FeedEntry:
    basis = LegalBasis("A", "1", "2026-11-20") if mandatory else None
    return FeedEntry(eid, etype, value, ("csam",), action, mandatory, basis, T)


@pytest.mark.parametrize(("etype", "value", "hit"), [
    ("domain", "gov.vn", "gov.vn"),
    ("domain", "vn", "gov.vn"),                    # a parent covers it
    ("domain", "moh.gov.vn", "gov.vn"),            # under it
    ("domain-exact", "www.moh.gov.vn", "gov.vn"),
    ("domain-exact", "vn", None),                  # exact: only the name itself
    ("url", "https://school.edu.vn/x", "edu.vn"),
    ("domain", "notgov.vn", None),
    ("domain", "gov.vn.example", None),
    ("ip", "192.0.2.1", None),
])
def test_never_block(etype: str, value: str, hit: str | None) -> None:
    assert never_block_conflict(_e(value, etype), ("gov.vn", "edu.vn")) == hit


def test_rpz_zone_parses() -> None:
    entries = [_e("b.example", eid="B-1"), _e("www.a.example", "domain-exact", "A-1"),
               _e("warn.example", eid="W", action="warn"),
               _e("https://u.example/x", "url", "U"),
               _e(".".join(["x" * 60] * 4), eid="LONG")]
    text = to_rpz(entries, serial=42)
    zone = dns.zone.from_text(text, origin="rpz.safegate.invalid", relativize=False)
    soa = zone.get_rdataset("rpz.safegate.invalid.", "SOA")
    assert soa is not None and soa[0].serial == 42
    names = {str(n) for n, rds in zone.iterate_rdatasets(dns.rdatatype.CNAME)}
    assert names == {"b.example.rpz.safegate.invalid.", "*.b.example.rpz.safegate.invalid.",
                     "www.a.example.rpz.safegate.invalid."}
    assert "; B-1 csam" in text and "; LONG: " in text and "warn.example" not in text
    rd = zone.get_rdataset("b.example.rpz.safegate.invalid.", "CNAME")
    assert rd is not None and str(rd[0].target) == "."


# ------------------------------------------------------------------ CLI (in-process)

def test_cli_add_list_remove(setup: PublisherSetup, capsys: pytest.CaptureFixture[str]) -> None:
    assert feed_main(setup, "add", *add_args("Bad.Example", "--id", "REF-1",
                                             "--deadline", "2026-11-24T12:00:00+07:00")) == 0
    out = capsys.readouterr().out
    assert "added REF-1: domain bad.example (csam)" in out and "serial 1" in out
    assert feed_main(setup, "add", *add_args("two.example", mandatory=False)) == 0
    generated = capsys.readouterr().out.split()[1].rstrip(":")
    assert generated.startswith("SG-")
    assert feed_main(setup, "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["serial"] == 2
    assert [e["id"] for e in listed["entries"]] == ["REF-1", generated]
    assert listed["entries"][0]["legal_basis"]["decision"] == "7/QD"
    assert listed["entries"][0]["deadline"] == "2026-11-24T12:00:00+07:00"
    assert feed_main(setup, "remove", "--id", "REF-1") == 0
    assert "serial 3" in capsys.readouterr().out
    assert feed_main(setup, "list") == 0
    out = capsys.readouterr().out
    assert "serial 3, 1 entries" in out and "REF-1" not in out
    assert feed_main(setup, "list", "--all") == 0
    assert "removed@3" in capsys.readouterr().out


def test_cli_add_canonicalises_times(setup: PublisherSetup,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    args = add_args("t.example", "--id", "T", "--deadline", "2026-W48-2T05:00:00+00:00")
    basic = list(args)
    basic[basic.index("2026-11-20")] = "20261120"
    assert feed_main(setup, "add", *basic) == 1  # --date is YYYY-MM-DD, as documented
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert feed_main(setup, "add", *args) == 0
    capsys.readouterr()
    assert feed_main(setup, "list", "--json") == 0
    (entry,) = json.loads(capsys.readouterr().out)["entries"]
    assert entry["deadline"] == "2026-11-24T05:00:00Z"
    assert entry["legal_basis"]["date"] == "2026-11-20"
    assert entry["issued_at"].endswith("Z")


@pytest.mark.parametrize(("args", "message"), [
    (add_args("bad..example"), "bad domain value: empty label (given 'bad..example')"),
    (["--type", "cidr", "--value", "10.0.0.1/8", "--category", "csam"], "bad cidr value"),
    (["--type", "sha256", "--value", "abc", "--category", "csam"], "64 hexadecimal"),
    (["--type", "url", "--value", "ftp://x.example/", "--category", "csam"], "http(s) URL"),
    (["--type", "ip", "--value", "1.2.3", "--category", "csam"], "bad ip value"),
    (["--type", "domain", "--value", "x.example", "--category", "csam", "--mandatory"],
     "needs its legal basis: missing --authority, --decision, --date"),
    (["--type", "domain", "--value", "x.example", "--category", "csam", "--authority", "A"],
     "go together"),
    ([*add_args("x.example")[:-2], "--date", "2026-13-01"], "YYYY-MM-DD"),
    (add_args("x.example", "--deadline", "tomorrow"), "deadline must be an ISO 8601"),
    (["--type", "domain", "--value", "x.example"], "--category is required"),
    (["--value", "x.example", "--category", "csam"], "--type and --value are required"),
    (["--type", "domain", "--value", "X", "--category", "Not OK"], "categories"),
    (add_args("gov.vn"), "would block gov.vn, which is on the never_block list"),
    (add_args("vn"), "would block gov.vn"),
    (add_args("school.edu.vn"), "would block edu.vn"),
])
def test_cli_add_refuses(setup: PublisherSetup, capsys: pytest.CaptureFixture[str],
                         args: list[str], message: str) -> None:
    assert feed_main(setup, "add", *args) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("safegate feed: ")
    assert Store(load_publisher_config(setup.config).database).serial() == 0


def test_cli_duplicate_and_unknown_ids(setup: PublisherSetup,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert feed_main(setup, "add", *add_args("a.example", "--id", "R")) == 0
    assert feed_main(setup, "add", *add_args("b.example", "--id", "R")) == 1
    assert "'R' already exists" in capsys.readouterr().err
    assert feed_main(setup, "remove", "--id", "nope") == 1
    assert "no entry with id 'nope'" in capsys.readouterr().err
    assert feed_main(setup, "remove", "--id", "R") == 0
    assert feed_main(setup, "remove", "--id", "R") == 1
    assert "already removed at serial 2" in capsys.readouterr().err
    assert feed_main(setup, "add", *add_args("b.example", "--id", "R")) == 0  # reuse after remove


def test_cli_max_change_and_force(setup: PublisherSetup, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    # setup: max_change {ratio: 0.5, entries: 3} -> limit max(3, live/2)
    def batch(n: int, prefix: str) -> str:
        path = tmp_path / f"{prefix}.json"
        path.write_text(json.dumps({"entries": [
            {"type": "domain", "value": f"{prefix}{i}.example", "categories": ["adult"]}
            for i in range(n)]}))
        return str(path)

    assert feed_main(setup, "add", "--file", batch(3, "a")) == 0
    assert "serial 1" in capsys.readouterr().out
    assert feed_main(setup, "add", "--file", batch(4, "b")) == 1
    assert "touches 4 entries, more than max_change allows (3 with 3 live entries)" in \
        capsys.readouterr().err
    assert feed_main(setup, "add", "--file", batch(4, "b"), "--force") == 0
    assert "serial 2" in capsys.readouterr().out        # one batch, one serial
    assert feed_main(setup, "add", "--file", batch(4, "c")) == 1   # limit is max(3, 7*0.5)
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    assert feed_main(setup, "add", "--file", str(bad)) == 1
    assert "entry #1 must be a JSON object" in capsys.readouterr().err


def test_cli_config_error_is_file_line(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "publisher.yaml"
    path.write_text("listen: '127.0.0.1:1'\ndatabase: d\nsigning_key: k\nnever_blok: []\n")
    assert cli.main(["feed", "list", "-c", str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"{path}:4: unknown key 'never_blok'")


def test_register_wires_into_a_parser() -> None:
    import argparse
    parser = argparse.ArgumentParser()
    cli_publisher.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["feed", "remove", "-c", "p.yaml", "--id", "X"])
    assert callable(args.func) and args.id == "X"


# ------------------------------------------------------------------ HTTP (in-process)

@dataclass
class Api:
    client: TestClient[Any, Any]
    store: Store
    setup: PublisherSetup
    verifier: Verifier

    async def add(self, *raws: dict[str, Any], force: bool = False,
                  token: str | None = ADMIN_TOKEN) -> Any:
        body: dict[str, Any] = {"entries": list(raws)}
        if force:
            body["force"] = True
        r = await self.client.post("/v1/entries", json=body, headers=_auth(token))
        return r.status, await r.json()

    async def feed(self, query: str = "", **headers: str) -> tuple[int, Any, bytes]:
        r = await self.client.get("/v1/feed" + query, headers=headers)
        return r.status, r.headers, await r.read()


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def dom(value: str, eid: str | None = None, mandatory: bool = False, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "domain", "value": value, "categories": ["csam"], **kw}
    if eid:
        out["id"] = eid
    if mandatory:
        out.update(mandatory=True, legal_basis={"authority": "A", "decision": "1",
                                                "date": "2026-11-20"})
    return out


@pytest.fixture
async def api(setup: PublisherSetup) -> AsyncIterator[Api]:
    config = load_publisher_config(setup.config)
    store = Store(config.database)
    app = make_app(store, load_signer(config.signing_key), config, CollectorRegistry(),
                   poll_interval=0.02)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Api(client, store, setup, Verifier.from_files([setup.public_key]))
    finally:
        await client.close()
        store.close()


async def test_full_diff_304_and_signature(api: Api) -> None:
    assert (await api.add(dom("a.example", "A"), dom("b.example", "B")))[0] == 201
    assert (await api.add(dom("c.example", "C")))[0] == 201
    assert (await api.client.delete("/v1/entries/A", headers=_auth(ADMIN_TOKEN))).status == 200
    status, headers, body = await api.feed()
    assert status == 200 and headers["ETag"] == '"3"'
    api.verifier.verify(body, headers["SafeGate-Signature"])
    assert schema_errors(json.loads(body)) == []
    full = parse_feed(body)
    assert (full.serial, full.since, [e.id for e in full.entries]) == (3, None, ["B", "C"])

    status, headers, body = await api.feed("?since=1")
    api.verifier.verify(body, headers["SafeGate-Signature"])
    assert schema_errors(json.loads(body)) == []
    diff = parse_feed(body)
    assert (diff.since, [e.id for e in diff.entries], diff.removed) == (1, ["C"], ("A",))
    assert "X-SafeGate-Full" not in headers

    assert (await api.feed("?since=3"))[0] == 304
    assert (await api.feed(**{"If-None-Match": '"3"'}))[0] == 304
    assert (await api.feed(**{"If-None-Match": '"2"'}))[0] == 200
    status, _, body = await api.feed("?since=4")
    assert status == 400 and b"newer than the feed" in body
    for bad in ("?since=-1", "?since=x", "?since=%C2%B2", "?wait=abc", "?wait=-1", "?wait=nan"):
        assert (await api.feed(bad))[0] == 400, bad


async def test_force_travels_in_the_signed_documents(api: Api) -> None:
    """Edits made with force list their ids in the documents' `forced` (signed, schema-valid);
    other edits do not, and a diff carries only the forced changes in its range."""
    assert (await api.add(dom("a.example", "A")))[0] == 201                       # serial 1
    big = [dom(f"n{i}.example", f"N{i}") for i in range(4)]
    assert (await api.add(*big, force=True))[0] == 201                            # serial 2
    assert (await api.add(dom("u.example", "U")))[0] == 201                       # serial 3
    r = await api.client.delete("/v1/entries/A?force=1", headers=_auth(ADMIN_TOKEN))
    assert r.status == 200                                                        # serial 4
    _, headers, body = await api.feed("?since=1")
    api.verifier.verify(body, headers["SafeGate-Signature"])
    assert schema_errors(json.loads(body)) == []
    assert parse_feed(body).forced == ("A", "N0", "N1", "N2", "N3")
    assert parse_feed((await api.feed("?since=2"))[2]).forced == ("A",)
    assert (await api.feed("?since=3"))[2].count(b'"forced"') == 1
    full = parse_feed((await api.feed())[2])
    assert full.forced == ("N0", "N1", "N2", "N3")
    assert b'"forced"' not in (await api.feed("?since=2"))[2].replace(b'"forced":["A"]', b"")


async def test_old_since_gets_full_snapshot(api: Api, setup: PublisherSetup) -> None:
    assert load_publisher_config(setup.config).diff_history == 1000
    assert api.client.app is not None
    api.client.app[BUILDER].diff_history = 1
    for i in range(3):
        await api.add(dom(f"x{i}.example", f"X{i}"))
    status, headers, body = await api.feed("?since=1")
    assert status == 200 and headers["X-SafeGate-Full"] == "1"
    assert parse_feed(body).since is None and len(parse_feed(body).entries) == 3
    _, headers, body = await api.feed("?since=2")
    assert "X-SafeGate-Full" not in headers and parse_feed(body).since == 2


async def test_long_poll(api: Api) -> None:
    await api.add(dom("a.example", "A"))
    watcher = api.client.server.app[WATCHER]
    waiting = 0
    wait_beyond = watcher.wait_beyond

    async def counted(threshold: int, timeout: float) -> bool:
        # Observe (not replace) the wait: the test must know the request is parked in it.
        nonlocal waiting
        waiting += 1
        try:
            return await wait_beyond(threshold, timeout)
        finally:
            waiting -= 1

    watcher.wait_beyond = counted  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await api.feed("?since=1&wait=0.3"))[0] == 304
    assert loop.time() - t0 >= 0.3, "a long poll with nothing new waits its full time"

    # The poll may wait 60 s, far longer than this test waits for it: a 200 can only be the
    # write waking it, and the write happens only once the poll is parked in the wait.
    poll = asyncio.create_task(api.feed("?since=1&wait=60"))
    await async_wait_for(lambda: waiting == 1, what="the long poll is waiting")
    # a write from "elsewhere": straight into SQLite, as the CLI does
    other = Store(api.store.path)
    other.add_entries([_e("late.example", eid="LATE", mandatory=False)])
    other.close()
    status, _, body = await asyncio.wait_for(poll, 20)
    assert status == 200
    assert [e.id for e in parse_feed(body).entries] == ["LATE"]
    assert waiting == 0
    status, _, _ = await api.feed("?wait=60", **{"If-None-Match": '"1"'})
    assert status == 200                          # ETag already stale: answered at once
    assert waiting == 0, "a stale ETag must not wait at all"


async def test_write_api_auth_and_guard_rails(api: Api) -> None:
    assert (await api.add(dom("a.example"), token=None))[0] == 401
    assert (await api.add(dom("a.example"), token=gateway_token("gw-a")))[0] == 401
    status, body = await api.add(dom("moh.gov.vn"))
    assert status == 422 and "never_block" in body["error"]
    status, body = await api.add(dom("a..example"))
    assert status == 400 and "bad domain value" in body["error"]
    status, body = await api.add({"type": "domain", "value": "x.example", "categories": ["c"],
                                  "mandatory": True})
    assert status == 400 and "legal_basis" in body["error"]
    status, body = await api.add(*[dom(f"n{i}.example") for i in range(4)])
    assert status == 422 and "max_change" in body["error"]
    status, body = await api.add(*[dom(f"n{i}.example") for i in range(4)], force=True)
    assert status == 201 and body["serial"] == 1 and len(body["ids"]) == 4
    status, body = await api.add(dom("dup.example", body["ids"][0]))
    assert status == 409
    r = await api.client.post("/v1/entries", data=b"{", headers=_auth(ADMIN_TOKEN))
    assert r.status == 400
    r = await api.client.delete("/v1/entries/none", headers=_auth(ADMIN_TOKEN))
    assert r.status == 404
    r = await api.client.delete("/v1/entries/none")
    assert r.status == 401


async def test_write_api_disabled_without_admin_token(tmp_path: Path) -> None:
    generate_keys(tmp_path / "keys")
    setup = write_publisher_config(tmp_path, admin_token=None, keygen=False)
    config = load_publisher_config(setup.config)
    store = Store(config.database)
    app = make_app(store, load_signer(config.signing_key), config, CollectorRegistry())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        r = await client.post("/v1/entries", json={"entries": [dom("a.example")]},
                              headers=_auth(ADMIN_TOKEN))
        assert r.status == 403 and "disabled" in (await r.json())["error"]
    store.close()


def ack(gateway: str = "gw-a", serial: int = 1, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "gateway": gateway, "feed": "central", "serial": serial, "sent_at": T,
        "entries": [{"id": "M", "received_at": "2026-11-23T10:00:01Z",
                     "applied_at": "2026-11-23T10:00:02Z", "verified_at": None,
                     "outcome": "applied"}],
        "stats": [{"hour": "2026-11-23T10:00:00Z", "category": "adult", "tier": "thcs",
                   "queries": 120, "blocked": 7}],
        "probes": {"blocked": 10, "not_blocked": 1, "error": 0}}
    out.update(kw)
    return out


async def post_ack(api: Api, body: Any, token: str | None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = await api.client.post("/v1/acks", data=data, headers=_auth(token))
    return r.status, await r.json()


async def metrics(api: Api) -> str:
    r = await api.client.get("/metrics")
    assert r.status == 200
    return await r.text()


def promtool_ok(text: str) -> None:
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=20, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


async def test_acks_auth_idempotency_view_and_metrics(api: Api) -> None:
    past = "2026-01-01T00:00:00Z"
    await api.add(dom("m.example", "M", mandatory=True, deadline=past),
                  dom("n.example", "N", mandatory=True, issued_at=past),
                  dom("w.example", "W"))
    tok_a = gateway_token("gw-a")
    assert (await post_ack(api, ack(), None))[0] == 401
    assert (await post_ack(api, ack(), "wrong-token-0123456789"))[0] == 401
    assert (await post_ack(api, ack(), ADMIN_TOKEN))[0] == 401
    assert (await post_ack(api, ack("gw-b"), tok_a))[0] == 403
    status, body = await post_ack(api, b"{nope", tok_a)
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = await post_ack(api, ack(serial=-1), tok_a)
    assert status == 400 and "serial" in body["error"]
    status, body = await post_ack(api, ack(probes={"maybe": 1}), tok_a)
    assert status == 400
    status, body = await post_ack(api, ack(stats=[{"hour": T, "category": "c", "tier": "",
                                                   "queries": 1, "blocked": 0}]), tok_a)
    assert status == 400 and "tier" in body["error"]
    bad_entry = ack(entries=[{"id": "M", "outcome": "done"}])
    assert (await post_ack(api, bad_entry, tok_a))[0] == 400

    assert await post_ack(api, ack(), tok_a) == (200, {"ok": True})
    assert await post_ack(api, ack(), tok_a) == (200, {"ok": True})   # same ack again
    retried = ack(sent_at="2026-11-23T10:00:09Z")    # an outbox retry: new sent_at, same data
    assert await post_ack(api, retried, tok_a) == (200, {"ok": True})
    # a later ack: totals replace (stats of a closed hour, probe counts), times already
    # recorded are kept, a missing probe result keeps its count
    verified = ack(entries=[{"id": "M", "received_at": "2026-11-23T11:00:00Z",
                             "applied_at": None, "verified_at": "2026-11-23T10:00:03Z",
                             "outcome": "verified"}], stats=[], probes={"blocked": 12},
                   sent_at="2026-11-23T10:05:00Z")
    assert (await post_ack(api, verified, tok_a))[0] == 200

    r = await api.client.get("/v1/entries/M")
    view = await r.json()
    assert view["id"] == "M" and view["due_at"] == "2026-01-01T00:00:00Z"
    by_gw = {g["gateway"]: g for g in view["gateways"]}
    assert by_gw["gw-a"] == {
        "gateway": "gw-a", "applied_serial": 1, "received_at": "2026-11-23T10:00:01Z",
        "applied_at": "2026-11-23T10:00:02Z", "verified_at": "2026-11-23T10:00:03Z",
        "outcome": "verified", "within_deadline": False, "overdue": False}
    assert by_gw["gw-b"]["outcome"] == "pending" and by_gw["gw-b"]["overdue"] is True
    assert (await api.client.get("/v1/entries/nope")).status == 404
    listing = await (await api.client.get("/v1/entries")).json()
    assert [e["id"] for e in listing["entries"]] == ["M", "N", "W"]

    text = await metrics(api)
    promtool_ok(text)
    want = [
        'safegate_publisher_serial 1.0',
        'safegate_publisher_entries{category="csam"} 3.0',
        'safegate_publisher_gateway_applied_serial{gateway="gw-a"} 1.0',
        'safegate_publisher_gateway_applied_serial{gateway="gw-b"} 0.0',
        'safegate_publisher_gateway_last_ack_timestamp_seconds{gateway="gw-b"} 0.0',
        # M (deadline passed) and N (issued + 24 h passed) are overdue unless verified
        'safegate_publisher_gateway_overdue_entries{gateway="gw-a"} 1.0',
        'safegate_publisher_gateway_overdue_entries{gateway="gw-b"} 2.0',
        # the duplicate ack (and the later one without stats) did not add to the hour's row
        'safegate_publisher_gateway_queries_total{category="adult",gateway="gw-a",tier="thcs"}'
        ' 120.0',
        'safegate_publisher_gateway_blocked_total{category="adult",gateway="gw-a",tier="thcs"}'
        ' 7.0',
        'safegate_publisher_gateway_probe_checks_total{gateway="gw-a",result="blocked"} 12.0',
        'safegate_publisher_gateway_probe_checks_total{gateway="gw-a",result="not_blocked"} 1.0',
        'safegate_publisher_gateway_probe_checks_total{gateway="gw-b",result="error"} 0.0',
    ]
    for line in want:
        assert line in text.splitlines(), line
    last = next(ln for ln in text.splitlines() if ln.startswith(
        'safegate_publisher_gateway_last_ack_timestamp_seconds{gateway="gw-a"}'))
    assert abs(float(last.split()[1]) - time.time()) < 60


async def test_rpz_endpoint(api: Api) -> None:
    await api.add(dom("m.example", "M", mandatory=True), dom("v.example", "V"))
    r = await api.client.get("/v1/rpz")
    text = await r.text()
    assert r.status == 200 and r.headers["ETag"] == '"1"'
    zone = dns.zone.from_text(text, origin="rpz.safegate.invalid", relativize=False)
    names = {str(n) for n, _ in zone.iterate_rdatasets(dns.rdatatype.CNAME)}
    assert names == {"m.example.rpz.safegate.invalid.", "*.m.example.rpz.safegate.invalid."}


# ------------------------------------------------------------------ a real publisher process

def _server_has_read(server_port: int, client_port: int) -> bool:
    """True once the server side of this loopback TCP connection has an empty receive queue:
    the server process has read the request (from /proc/net/tcp, so no server hook)."""
    want = (f":{server_port:04X}", f":{client_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(want[0]) and fields[2].endswith(want[1]):
            return fields[3] == "01" and int(fields[4].split(":")[1], 16) == 0
    return False


def long_poll(pub: PublisherProcess, path: str) -> http.client.HTTPConnection:
    """Send a GET and return once the publisher has read it and not answered it: a waiting
    long poll. The caller reads the answer with `getresponse()`."""
    port = int(pub.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    wait_for(lambda: _server_has_read(port, client_port), what=f"the publisher read {path}")
    readable, _, _ = select.select([conn.sock], [], [], 0)
    assert not readable, f"{path} was answered at once: no long poll to wake"
    return conn


def test_process_cli_long_poll_and_restart(tmp_path: Path) -> None:
    keygen = run_feed("keygen", "--out", str(tmp_path / "k"))
    assert keygen.returncode == 0 and "key id" in keygen.stdout
    again = run_feed("keygen", "--out", str(tmp_path / "k"))
    assert again.returncode == 1 and "exists" in again.stderr

    pub = start_publisher(tmp_path / "pub")
    try:
        r = pub.feed("add", *add_args("first.example", "--id", "F-1"))
        assert r.returncode == 0, r.stderr
        assert pub.request("GET", "/v1/feed").headers["ETag"] == '"1"'

        # The long poll may wait 60 s, far longer than this test waits for its answer, so an
        # answer with serial 2 can only be the publish waking it; and the server has read the
        # request (and found nothing newer than 1) before the publish starts.
        conn = long_poll(pub, "/v1/feed?since=1&wait=60")
        r = pub.feed("add", *add_args("second.example", "--id", "F-2"))
        assert r.returncode == 0, r.stderr
        woke = conn.getresponse()
        assert woke.status == 200 and woke.headers["ETag"] == '"2"'
        result = {"r": HttpResult(woke.status, dict(woke.headers.items()), woke.read())}
        conn.close()
        doc = parse_feed(result["r"].body)
        Verifier.from_files([pub.setup.public_key]).verify(
            result["r"].body, result["r"].headers["SafeGate-Signature"])
        assert [e.id for e in doc.entries] == ["F-2"] and doc.since == 1

        tok = pub.setup.gateway_tokens["gw-a"]
        body = ack(serial=2, entries=[{"id": "F-1", "received_at": T, "applied_at": T,
                                       "verified_at": T, "outcome": "verified"}])
        assert pub.request("POST", "/v1/acks", body=body, token=tok).status == 200
        promtool_ok(pub.request("GET", "/metrics").body.decode())

        # a pending long poll (60 s) must not hold up a clean SIGTERM (stop() allows 10 s)
        conn = long_poll(pub, "/v1/feed?since=2&wait=60")
        pub.stop(timeout=10)
        conn.close()
    finally:
        pub.kill()

    pub = start_publisher(tmp_path / "pub")
    try:
        r = pub.request("GET", "/v1/feed")
        assert r.headers["ETag"] == '"2"'
        assert [e.id for e in parse_feed(r.body).entries] == ["F-1", "F-2"]
        view = pub.request("GET", "/v1/entries/F-1").json()
        assert {g["gateway"]: g["outcome"] for g in view["gateways"]} == {
            "gw-a": "verified", "gw-b": "pending"}
        metrics_text = pub.request("GET", "/metrics").body.decode()
        assert 'safegate_publisher_gateway_applied_serial{gateway="gw-a"} 2.0' in metrics_text
        listed = pub.feed("list", "--json")
        assert json.loads(listed.stdout)["serial"] == 2
    finally:
        pub.stop()


def test_serve_reports_missing_key(tmp_path: Path) -> None:
    setup = write_publisher_config(tmp_path, keygen=False)
    r = run_feed("serve", "-c", str(setup.config), timeout=20)
    assert r.returncode == 1
    assert "does not exist; create it with `safegate feed keygen --out" in r.stderr



def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "publisher.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("publisher.test"),
                           x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_serve_over_tls(tmp_path: Path) -> None:
    import ssl

    import aiohttp

    from gateway.publisher.serve import serve

    generate_keys(tmp_path / "keys")
    cert, key = _self_signed(tmp_path)
    setup = write_publisher_config(tmp_path, keygen=False,
                                   extra={"tls": {"cert": cert.name, "key": key.name}})
    config = load_publisher_config(setup.config)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, load_signer(config.signing_key), stop))
    ctx = ssl.create_default_context(cafile=str(cert))
    url = setup.url.replace("http://", "https://")
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(url + "/v1/feed", ssl=ctx) as r:
                        assert r.status == 200 and r.headers["ETag"] == '"0"'
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("publisher did not come up over TLS")
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(url + "/healthz")    # not trusted without the cert
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


# ---------------------------------------------------------------------- impossible acks


def _series(text: str, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of `name` whose labels include `labels`, keyed by their label pairs."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def _value(text: str, name: str, **labels: str) -> float:
    found = _series(text, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return next(iter(found.values()))


def test_impossible_acks_are_refused_and_stats_stay_bounded(tmp_path: Path) -> None:
    """An ack for a serial the feed never reached, or for entries it never had, changes
    nothing (4xx, clear error); 5,000 invented categories do not grow /metrics past the
    per-gateway series budget (limits.stats_series, 256 by default)."""
    with start_publisher(tmp_path / "pub", gateways=("gw-a",)) as pub:
        tok = pub.setup.gateway_tokens["gw-a"]
        for i in range(3):
            assert pub.feed("add", *add_args(f"s{i}.example", "--id", f"S-{i}")).returncode == 0
        serial = pub.request("GET", "/v1/entries").json()["serial"]
        assert serial == 3
        done = {"id": "S-0", "received_at": T, "applied_at": T, "verified_at": None,
                "outcome": "applied"}
        assert pub.request("POST", "/v1/acks", body=ack(serial=2, entries=[done]),
                           token=tok).status == 200
        before = pub.request("GET", "/metrics").body.decode()
        assert _value(before, "safegate_publisher_gateway_applied_serial", gateway="gw-a") == 2

        future = pub.request("POST", "/v1/acks", body=ack(serial=100003, entries=[done]),
                             token=tok)
        assert future.status == 409
        assert "serial 100003 is newer than the feed (serial 3)" in future.json()["error"]
        ghost = dict(done, id="NOT-IN-FEED")
        unknown = pub.request("POST", "/v1/acks", body=ack(serial=3, entries=[done, ghost]),
                              token=tok)
        assert unknown.status == 422 and "NOT-IN-FEED" in unknown.json()["error"]

        after = pub.request("GET", "/metrics").body.decode()
        # nothing moved: the lag alert (publisher serial - applied serial) still sees lag 1
        assert _value(after, "safegate_publisher_gateway_applied_serial", gateway="gw-a") == 2
        assert _value(after, "safegate_publisher_gateway_last_ack_timestamp_seconds",
                      gateway="gw-a") == _value(
            before, "safegate_publisher_gateway_last_ack_timestamp_seconds", gateway="gw-a")
        assert _value(after, "safegate_publisher_acks_rejected_total", gateway="gw-a",
                      reason="future_serial") == 1
        assert _value(after, "safegate_publisher_acks_rejected_total", gateway="gw-a",
                      reason="unknown_entries") == 1
        view = pub.request("GET", "/v1/entries/S-0").json()
        assert [g["applied_serial"] for g in view["gateways"]] == [2]

        stats = [{"hour": T, "category": f"cat{i:04d}", "tier": "thcs", "queries": 1,
                  "blocked": 0} for i in range(5000)]
        r = pub.request("POST", "/v1/acks", body=ack(serial=3, entries=[done], stats=stats),
                        token=tok)
        # the first ack stored one pair (adult, thcs): 255 more fit in the budget of 256
        assert r.status == 200 and r.json() == {"ok": True, "stats_dropped": 5000 - 255}
        text = pub.request("GET", "/metrics").body.decode()
        promtool_ok(text)
        assert len(_series(text, "safegate_publisher_gateway_queries_total")) == 256
        assert len(_series(text, "safegate_publisher_gateway_blocked_total")) == 256
        assert _value(text, "safegate_publisher_ack_stats_dropped_total", gateway="gw-a") == 4745
        assert len(text) < 100_000, len(text)   # was 887 KB
        # the rest of that ack was recorded; a known pair still updates with a full budget
        assert _value(text, "safegate_publisher_gateway_applied_serial", gateway="gw-a") == 3
        r = pub.request("POST", "/v1/acks", body=ack(serial=3, entries=[], stats=[
            dict(stats[0], queries=9)]), token=tok)
        assert r.status == 200 and r.json() == {"ok": True}
        text = pub.request("GET", "/metrics").body.decode()
        assert _value(text, "safegate_publisher_gateway_queries_total", gateway="gw-a",
                      category="cat0000") == 9


def test_ack_body_size_and_series_limits_are_configurable(tmp_path: Path) -> None:
    with start_publisher(tmp_path / "pub", gateways=("gw-a",),
                         extra={"limits": {"ack_bytes": 4096, "stats_series": 3}}) as pub:
        tok = pub.setup.gateway_tokens["gw-a"]
        assert pub.feed("add", *add_args("s.example", "--id", "S-0")).returncode == 0
        big = ack(serial=1, entries=[], stats=[
            {"hour": T, "category": f"c{i}", "tier": "t", "queries": 1, "blocked": 0}
            for i in range(100)])
        r = pub.request("POST", "/v1/acks", body=big, token=tok)
        assert r.status == 413 and "4096 bytes" in r.json()["error"]
        # the same without Content-Length (chunked) is cut off at the limit too
        conn = http.client.HTTPConnection(pub.url.removeprefix("http://"), timeout=10)
        data = json.dumps(big).encode()
        conn.request("POST", "/v1/acks", body=iter([data[:3000], data[3000:]]),
                     headers={"Authorization": f"Bearer {tok}",
                              "Content-Type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413, resp.read()
        conn.close()
        r = pub.request("POST", "/v1/acks", body=dict(big, stats=big["stats"][:10]), token=tok)
        assert r.status == 200 and r.json()["stats_dropped"] == 7
        text = pub.request("GET", "/metrics").body.decode()
        assert len(_series(text, "safegate_publisher_gateway_queries_total")) == 3
        assert _value(text, "safegate_publisher_acks_rejected_total", gateway="gw-a",
                      reason="too_large") == 2


def test_heartbeat_re_signs_an_idle_feed(tmp_path: Path) -> None:
    """No write for a while: the served document still carries a fresh signed time, so a
    gateway can tell a live publisher from a cache replaying its old answer."""
    with start_publisher(tmp_path / "pub", extra={"heartbeat": 1}) as pub:
        assert pub.feed("add", *add_args("idle.example", "--id", "I-1")).returncode == 0
        verifier = Verifier.from_files([pub.setup.public_key])

        def fetch(query: str) -> Any:
            r = pub.request("GET", "/v1/feed" + query)
            assert r.status == 200
            verifier.verify(r.body, r.headers["SafeGate-Signature"])
            return parse_feed(r.body)

        first, first_diff = fetch(""), fetch("?since=0")
        later = wait_for(lambda: (doc := fetch("")).generated_at > first.generated_at and doc,
                         timeout=30, interval=0.2, what="the document re-signed (heartbeat)")
        assert later.serial == first.serial == 1 and later.entries == first.entries
        assert fetch("?since=0").generated_at > first_diff.generated_at
    cfg = load_publisher_config(pub.setup.config)
    assert cfg.heartbeat == 1.0
    assert load_publisher_config(write_publisher_config(
        tmp_path / "defaults").config).heartbeat == 3600.0
