"""`safegate probe` against real resolvers: Unbound with SafeGate's RPZ export, and without.

Topology (all loopback): a signed feed served by a tiny aiohttp app; the standard test unbound
(tests/support/unbound.py) holds the data, so every feed name RESOLVES unless blocked; in front
of it an "ISP resolver" unbound that forwards there, with or without the exported RPZ zone.
The front has no local zones on purpose: unbound answers local zones before RPZ triggers, so
the RPZ must sit on a resolver that really resolves (as an ISP's does).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import dns.edns
import dns.exception
import dns.message
import dns.rcode
import dns.rrset
import pytest
from aiohttp import web

from gateway.compliance.export import build_export
from gateway.compliance.probe import classify, exit_code, probe_targets, sample
from gateway.feedformat.document import Feed, FeedEntry, make_entry
from gateway.feedformat.signing import SIGNATURE_HEADER, generate_keys, load_signer
from gateway.feeds.ledger import Ledger
from tests.support.procs import REPO_ROOT, dns_query, free_port
from tests.support.unbound import (
    ALLOWED,
    BLOCKED_TARGET_A,
    UNBOUND,
    UnboundFactory,
    UnboundServer,
)
from tests.support.wait import async_wait_for, wait_for

pytestmark = pytest.mark.integration

BASIS = {"authority": "BTTTT", "decision": "123/QĐ-BTTTT", "date": "2026-11-20"}
RAW_ENTRIES: list[dict[str, Any]] = [
    {"id": "BTTTT-2026-0001", "type": "domain", "value": "adult-site.test",
     "categories": ["adult"], "mandatory": True, "legal_basis": BASIS},
    {"id": "BTTTT-2026-0002", "type": "domain-exact", "value": "gamble.test",
     "categories": ["gambling"], "mandatory": True, "legal_basis": BASIS},
    {"id": "BTTTT-2026-0003", "type": "domain", "value": "phish.example",
     "categories": ["phishing"], "mandatory": True, "legal_basis": BASIS},
    {"id": "BTTTT-2026-0004", "type": "domain", "value": "csam-test.invalid",
     "categories": ["csam"], "mandatory": True, "legal_basis": BASIS},
    {"id": "BTTTT-2026-0005", "type": "domain", "value": "malware.example",
     "categories": ["malware"], "mandatory": True, "legal_basis": BASIS},
    # not probed: a warning, and a URL (no DNS form)
    {"id": "W-1", "type": "domain", "value": "adult.example", "categories": ["adult"],
     "action": "warn"},
    {"id": "U-1", "type": "url", "value": "http://social.test/page", "categories": ["social"]},
]
PROBED = 5


def entries() -> list[FeedEntry]:
    return [make_entry({"issued_at": "2026-11-20T08:00:00+07:00", **raw}) for raw in RAW_ENTRIES]


def feed_bytes(serial: int = 9) -> bytes:
    return Feed(serial, "2026-11-20T08:00:00Z", tuple(entries())).to_bytes()


# ---------------------------------------------------------------- pure parts


def answer(rcode: dns.rcode.Rcode = dns.rcode.NOERROR, addresses: tuple[str, ...] = (),
           ede: int | None = None) -> dns.message.Message:
    q = dns.message.make_query("x.test", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    if addresses:
        r.answer.append(dns.rrset.from_text("x.test.", 60, "IN", "A", *addresses))
    if ede is not None:
        r.use_edns(0, options=[dns.edns.EDEOption(dns.edns.EDECode(ede), "SafeGate")])
    return dns.message.from_wire(r.to_wire())


@pytest.mark.parametrize(("msg", "blockpage", "result"), [
    (answer(dns.rcode.NXDOMAIN), (), "blocked"),
    (answer(), (), "blocked"),                                    # NODATA
    (answer(addresses=("0.0.0.0",)), (), "blocked"),
    (answer(addresses=("192.0.2.80",)), ("192.0.2.80",), "blocked"),
    (answer(addresses=("192.0.2.80", "192.0.2.81")), ("192.0.2.80",), "allowed"),
    (answer(addresses=("192.0.2.66",)), (), "allowed"),
    (answer(addresses=("192.0.2.66",), ede=17), (), "blocked"),   # filtered, whatever data
    (answer(dns.rcode.REFUSED, ede=15), (), "blocked"),
    (answer(dns.rcode.REFUSED), (), "error"),
    (answer(dns.rcode.SERVFAIL, ede=2), (), "error"),
])
def test_classify(msg: dns.message.Message, blockpage: tuple[str, ...], result: str) -> None:
    assert classify(msg, frozenset(blockpage))[0] == result


def test_classify_reports_the_ede() -> None:
    assert classify(answer(dns.rcode.NXDOMAIN, ede=16)) == ("blocked", 16, ())


def test_targets_and_sampling() -> None:
    feed = Feed(1, "2026-11-20T08:00:00Z", tuple(entries()))
    targets = probe_targets(feed)
    assert [e.id for e in targets] == [f"BTTTT-2026-000{i}" for i in range(1, 6)]
    a, b = sample(targets, 2, seed=7), sample(targets, 2, seed=7)
    assert a == b and len(a) == 2
    assert sample(targets, 50, seed=1) == targets
    assert sample(targets, None, seed=None) == targets
    assert exit_code([]) == 0


# ---------------------------------------------------------------- servers


@dataclass
class FeedServer:
    url: str
    public_key: Path
    other_key: Path


@pytest.fixture
async def feed_server(tmp_path: Path) -> AsyncIterator[FeedServer]:
    """GET /v1/feed: the signed snapshot; /v1/missing: 404; /v1/unsigned: no signature."""
    key, pub = generate_keys(tmp_path / "keys")
    _, other = generate_keys(tmp_path / "keys", "other")
    body = feed_bytes()
    header = load_signer(key).sign(body)

    async def feed(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json",
                            headers={SIGNATURE_HEADER: header, "ETag": '"9"'})

    async def unsigned(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/feed", feed)
    app.router.add_get("/v1/unsigned", unsigned)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port(v6=False, udp=False)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield FeedServer(f"http://127.0.0.1:{port}/v1/feed", pub, other)
    finally:
        await runner.cleanup()


@dataclass
class Front:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def resolver(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_front(workdir: Path, upstream: UnboundServer, rpz_zone: Path | None) -> Front:
    """An unbound that resolves via `upstream`, applying `rpz_zone` if given."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port(v6=False)
    rpz = ["rpz:", "  name: rpz.safegate.invalid", f'  zonefile: "{rpz_zone}"',
           "  rpz-log: yes"] if rpz_zone else []
    conf = workdir / "unbound.conf"
    conf.write_text("\n".join([
        "server:",
        f"  interface: 127.0.0.1@{port}", f"  port: {port}", "  do-ip6: no",
        "  do-not-query-localhost: no", '  chroot: ""', '  username: ""',
        f'  directory: "{workdir}"', f'  pidfile: "{workdir / "unbound.pid"}"',
        '  logfile: ""', "  use-syslog: no", "  num-threads: 1", "  so-reuseport: no",
        "  access-control: 127.0.0.0/8 allow",
        f'  module-config: "{"respip iterator" if rpz_zone else "iterator"}"',
        # Special-use TLDs would be NXDOMAIN locally (a false "blocked"): resolve them.
        *(f'  local-zone: "{tld}." nodefault' for tld in ("test", "invalid", "example")),
        '  domain-insecure: "."',
        *rpz,
        "forward-zone:", '  name: "."', f"  forward-addr: 127.0.0.1@{upstream.port}",
        "remote-control:", "  control-enable: no", ""]))
    log = workdir / "unbound.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    front = Front(port, proc, log)
    def answering() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"unbound exited: {log.read_text()}")
        return bool(dns_query(ALLOWED, port=port, timeout=0.2).answer)

    try:
        wait_for(answering, what="the front unbound answers",
                 ignore=(dns.exception.DNSException, OSError))
    except AssertionError:
        proc.kill()
        raise RuntimeError(f"front unbound not answering: {log.read_text()}") from None
    return front


@pytest.fixture
def fronts(tmp_path: Path) -> Iterator[list[Front]]:
    started: list[Front] = []
    yield started
    for f in started:
        f.proc.terminate()
        try:
            f.proc.wait(5)
        except subprocess.TimeoutExpired:
            f.proc.kill()
            f.proc.wait(5)


def export_zone(tmp_path: Path) -> Path:
    """What a gateway that received the feed would export: ledger rows -> RPZ zone file."""
    ledger = tmp_path / "ledger.sqlite3"
    led = Ledger(ledger)   # written as the gateway writes it
    mandatory = [e for e in entries() if e.action == "block" and e.mandatory]
    led.record("central", 9, [(e, "applied") for e in mandatory], [], 2.0, 2.0, None)
    for e in mandatory:
        led.record_probe("central", e.id, "blocked", 3.0, gave_up=False, ack=None, serial=9)
    led.close()
    zone = tmp_path / "safegate.rpz"
    zone.write_text(build_export(ledger, None, serial=9).zone)
    return zone


async def probe(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "probe", *args, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ---------------------------------------------------------------- end to end


async def test_unbound_with_the_rpz_export_blocks_everything(
        tmp_path: Path, unbound_factory: UnboundFactory, fronts: list[Front],
        feed_server: FeedServer) -> None:
    data = unbound_factory(ipv6=False)
    front = start_front(tmp_path / "rpz", data, export_zone(tmp_path))
    fronts.append(front)
    code, out, err = await probe("--resolver", front.resolver, "--feed", feed_server.url,
                                 "--public-key", str(feed_server.public_key), "--json")
    assert code == 0, out + err
    doc = json.loads(out)
    assert doc["serial"] == 9 and doc["sampled"] == PROBED and doc["entries_in_feed"] == PROBED
    assert doc["blocked"] == PROBED and doc["blocked_ratio"] == 1.0
    assert {e["rcode"] for e in doc["entries"]} == {"NXDOMAIN"}
    # the RPZ also covers subdomains of `domain` entries, not of `domain-exact` ones
    assert dns_query("www.adult-site.test", port=front.port).rcode() == dns.rcode.NXDOMAIN
    assert dns_query("www.gamble.test", port=front.port).answer


async def test_plain_unbound_blocks_nothing(
        tmp_path: Path, unbound_factory: UnboundFactory, fronts: list[Front],
        feed_server: FeedServer) -> None:
    data = unbound_factory(ipv6=False)
    front = start_front(tmp_path / "plain", data, None)
    fronts.append(front)
    code, out, err = await probe("--resolver", front.resolver, "--feed", feed_server.url,
                                 "--public-key", str(feed_server.public_key), "--json")
    assert code == 2, out + err
    doc = json.loads(out)
    assert doc["blocked"] == 0 and doc["allowed"] == PROBED and doc["blocked_ratio"] == 0.0
    assert all(e["addresses"] == [BLOCKED_TARGET_A] for e in doc["entries"])

    # text output, a reproducible sample
    code, out, _ = await probe("--resolver", front.resolver, "--feed", feed_server.url,
                               "--public-key", str(feed_server.public_key), "--sample", "2",
                               "--seed", "3")
    assert code == 2
    assert "blocked 0/2 (0.0%), allowed 2, errors 0" in out
    again = await probe("--resolver", front.resolver, "--feed", feed_server.url,
                        "--public-key", str(feed_server.public_key), "--sample", "2",
                        "--seed", "3")
    assert again[1] == out

    # the block-page address counts as blocked when declared
    code, out, _ = await probe("--resolver", front.resolver, "--feed", feed_server.url,
                               "--public-key", str(feed_server.public_key),
                               "--blockpage-address", BLOCKED_TARGET_A)
    assert code == 0, out


async def test_resolver_not_answering_is_an_error_per_entry(feed_server: FeedServer) -> None:
    port = free_port(v6=False)   # nothing listens there
    code, out, _ = await probe("--resolver", f"127.0.0.1:{port}", "--feed", feed_server.url,
                               "--public-key", str(feed_server.public_key), "--timeout", "0.3",
                               "--json")
    assert code == 2
    doc = json.loads(out)
    assert doc["error"] == PROBED and doc["blocked_ratio"] == 0.0


@pytest.mark.parametrize("case", ["wrong key", "unsigned", "unreachable", "404", "no key file"])
async def test_probe_cannot_run(case: str, feed_server: FeedServer, tmp_path: Path) -> None:
    url, key = feed_server.url, str(feed_server.public_key)
    if case == "wrong key":
        key = str(feed_server.other_key)
    elif case == "unsigned":
        url = url.replace("/v1/feed", "/v1/unsigned")
    elif case == "unreachable":
        url = f"http://127.0.0.1:{free_port(v6=False, udp=False)}/v1/feed"
    elif case == "404":
        url = url.replace("/v1/feed", "/v1/nothing")
    else:
        key = str(tmp_path / "missing.pub")
    code, out, err = await probe("--resolver", "127.0.0.1:9", "--feed", url,
                                 "--public-key", key, "--timeout", "2")
    assert code == 1, out + err
    assert err.startswith("safegate probe: ") and "Traceback" not in err


async def test_serve_exposes_metrics(
        tmp_path: Path, unbound_factory: UnboundFactory, fronts: list[Front],
        feed_server: FeedServer) -> None:
    data = unbound_factory(ipv6=False)
    front = start_front(tmp_path / "rpz", data, export_zone(tmp_path))
    fronts.append(front)
    port = free_port(v6=False, udp=False)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "probe", "--resolver", front.resolver,
        "--feed", feed_server.url, "--public-key", str(feed_server.public_key),
        "--serve", f"127.0.0.1:{port}", "--interval", "0.2", cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    text = ""
    try:
        async with aiohttp.ClientSession() as session:
            async def two_runs() -> bool:
                nonlocal text
                async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = await resp.text()
                return metric(text, "safegate_probe_runs_total") >= 2
            await async_wait_for(two_runs, interval=0.1, what="two probe runs",
                                 ignore=(aiohttp.ClientError,))
        assert metric(text, "safegate_probe_runs_total") >= 2, text
        assert metric(text, 'safegate_probe_entries{result="blocked"}') == PROBED
        assert metric(text, 'safegate_probe_entries{result="allowed"}') == 0
        assert metric(text, "safegate_probe_blocked_ratio") == 1.0
        assert abs(metric(text, "safegate_probe_last_run_timestamp_seconds") - time.time()) < 30
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return -1.0



SAFEGATE_POLICY = """\
tiers:
  kids: {block: [ads], answer: blockpage}
networks:
  - {name: loopback, cidrs: ["127.0.0.1/32"], tier: kids}
"""


@pytest.mark.parametrize("mandatory", [True, False])
async def test_against_safegate(mandatory: bool, unbound: UnboundServer, safegate_factory: Any,
                                feed_server: FeedServer) -> None:
    """The mandatory list answered with the block page and EDE 16 (Censored) counts as blocked."""
    names = "".join(f"{e.value} CNAME .\n" for e in entries() if e.type in ("domain",
                                                                          "domain-exact"))
    rpz = "$TTL 60\n@ SOA localhost. root.localhost. 1 3600 600 86400 60\n@ NS localhost.\n"
    lists_yaml = "categories:\n  ads:\n    - {path: ads.domains, format: domains}\n"
    if mandatory:
        lists_yaml += "  csam:\n    - {path: csam.rpz, format: rpz}\n"
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": SAFEGATE_POLICY},
                          lists={"csam.rpz": rpz + names, "ads.domains": "ads.test\n"},
                          lists_yaml=lists_yaml, ipv6=False)
    code, out, err = await probe("--resolver", f"127.0.0.1:{gw.dns_port}", "--feed",
                                 feed_server.url, "--public-key", str(feed_server.public_key),
                                 "--json")
    doc = json.loads(out)
    if mandatory:
        assert code == 0, out + err
        assert doc["blocked_ratio"] == 1.0
        assert {e["ede"] for e in doc["entries"]} == {16}
    else:
        assert code == 2, out + err
        assert doc["allowed"] == doc["sampled"] == PROBED
