"""A publisher that survives losing a machine: two `feed serve` processes share one PostgreSQL
behind Debian's nginx; one is killed with SIGKILL in the middle of a stream of orders.

What must hold (issue #13, item 6): no entry lost (every order the operator was told was
accepted is in the feed and enforced), no ack lost (every gateway's outbox drains, the
publisher shows each gateway's ack of each entry exactly once), the compliance report is
complete, and the gateways notice nothing but retries (their metrics show failed deliveries
that were retried, never a refused token or a rejected document).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.publisher.config import load_publisher_config
from gateway.publisher.db import WRITE_LOCK
from gateway.publisher.edits import Editor, Guard
from gateway.publisher.store import Store
from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.feeds import entry
from tests.support.nginx import require_nginx, start_nginx
from tests.support.postgres import PostgresCluster
from tests.support.procs import REPO_ROOT, SafeGateProcess, free_port
from tests.support.publisher import (
    ADMIN_TOKEN,
    PublisherProcess,
    PublisherSetup,
    gateway_token,
    write_publisher_config,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

GATEWAYS = ("gw-a", "gw-b")
ENTRIES = 10
KILL_AFTER = 4


def _start_nginx(directory: Path, port: int, upstreams: list[str]) -> subprocess.Popen[bytes]:
    """nginx in front of both publishers. GETs (the feed, long polls) move to the other
    publisher when one fails; a POST that may have reached the dead one is answered 502 (nginx
    does not repeat non-idempotent requests) and the client retries: acks are idempotent."""
    servers = "\n".join(f"    server {u} max_fails=1 fail_timeout=30s;" for u in upstreams)
    return start_nginx(directory, f"""
  upstream publishers {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 8m;
    location / {{
      proxy_pass http://publishers;
      proxy_http_version 1.1;
      proxy_connect_timeout 2s;
      proxy_read_timeout 90s;
      proxy_next_upstream error timeout http_502 http_503;
    }}
  }}""", [port], http_extra="  access_log off;", worker_connections=256)


def _publisher(directory: Path, database: str, keys: Path | None) -> PublisherProcess:
    """A publisher process on its own port, on the shared database; the second one signs
    with the first one's key (gateways trust one public key)."""
    directory.mkdir(parents=True, exist_ok=True)
    if keys is not None:
        shutil.copytree(keys, directory / "keys")
    setup = write_publisher_config(directory, gateways=GATEWAYS, keygen=keys is None,
                                   extra={"database": database})
    return PublisherProcess(setup).start()


def _via(setup: PublisherSetup, url: str) -> PublisherProcess:
    """A PublisherProcess-shaped client for the nginx front (request() only)."""
    front = PublisherProcess(setup)
    front.url = url
    return front


def samples(gw: SafeGateProcess, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(gw.metrics_text()):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = float(s.value)
    return out


def _local_ports(pid: int) -> set[int]:
    """The local TCP ports of a process's sockets (its PostgreSQL connections among them)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            ports.add(int(fields[1].split(":")[1], 16))
    return ports


def _waiting_for_write_lock(database: str, publishers: list[PublisherProcess]
                            ) -> PublisherProcess | None:
    """The publisher whose database session waits for the writers' lock (an ack, received
    and being stored), if any."""
    with psycopg.connect(database) as conn:
        ports = {int(p) for (p,) in conn.execute(
            "SELECT client_port FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND wait_event = 'advisory'")}
    for pub in publishers:
        if pub.proc is not None and _local_ports(pub.proc.pid) & ports:
            return pub
    return None


def blocked(gw: SafeGateProcess, name: str) -> bool:
    r = dns.query.udp(dns.message.make_query(name, "A", use_edns=0), "127.0.0.1",
                      port=gw.dns_port, timeout=2)
    return any(isinstance(o, dns.edns.EDEOption) and o.code == 16 for o in r.options)


@pytest.fixture
def stack(tmp_path: Path, postgres: PostgresCluster
          ) -> Iterator[tuple[list[PublisherProcess], PublisherProcess, str]]:
    require_nginx()
    database = postgres.new_database("ha")
    first = _publisher(tmp_path / "pub1", database, None)
    second = _publisher(tmp_path / "pub2", database, first.setup.directory / "keys")
    port = free_port(v6=False, udp=False)
    nginx = _start_nginx(tmp_path / "nginx", port,
                         [first.url.removeprefix("http://"), second.url.removeprefix("http://")])
    front = _via(first.setup, f"http://127.0.0.1:{port}")
    try:
        yield [first, second], front, database
    finally:
        nginx.terminate()
        nginx.wait(10)
        for pub in (first, second):
            pub.kill()


def _post_until_accepted(front: PublisherProcess, e: dict[str, Any]) -> None:
    """What an operator's script does: repeat the order until the publisher says it has it
    (201), or that it already has it (409: the first try was stored before a publisher died)."""
    def accepted() -> bool:
        try:
            r = front.request("POST", "/v1/entries", body={"entries": [e]}, token=ADMIN_TOKEN)
        except OSError:
            return False
        assert r.status in (201, 409, 502, 503, 504), r.body
        return r.status in (201, 409)

    wait_for(accepted, 30, what=f"{e['id']} accepted through nginx")


def test_killing_one_publisher_loses_no_ack_no_entry_no_report(
        tmp_path: Path, stack: tuple[list[PublisherProcess], PublisherProcess, str],
        unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    (first, second), front, database = stack
    gws = [safegate_factory(
        upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
        lists_yaml=LISTS_YAML,
        extra={"gateway": {"id": gid, "token": gateway_token(gid)},
               "feeds": [{"name": "central", "url": front.url + "/v1/feed", "type": "safegate",
                          "public_key": str(first.setup.public_key), "long_poll": 10}]})
        for gid in GATEWAYS]
    orders = [entry(f"HA-{i:03d}", f"e{i}.adult-site.test") for i in range(ENTRIES)]
    for e in orders[:KILL_AFTER]:
        _post_until_accepted(front, e)
    # Mid-stream, made certain rather than left to timing: hold the writers' lock (the one
    # every publisher takes to store anything), publish the next order under it, and wait
    # until a publisher has received a gateway's ack of it and waits to store it. SIGKILL
    # that publisher: the ack in its hands is lost with it unless the gateway sends it again.
    config = load_publisher_config(second.setup.config)
    holder = Store(config.database)
    holder.db.execute("SELECT pg_advisory_lock(?)", (WRITE_LOCK,))
    Editor(holder, Guard((), 1.0, 1000)).add([orders[KILL_AFTER]])
    found: list[PublisherProcess] = []
    wait_for(lambda: found.append(p) is None if (p := _waiting_for_write_lock(
        database, [first, second])) else False, 60, what="an ack waiting to be stored")
    victim = found[0]
    survivor = second if victim is first else first
    assert victim.proc is not None
    victim.proc.kill()
    victim.proc.wait(10)
    holder.db.execute("SELECT pg_advisory_unlock(?)", (WRITE_LOCK,))
    holder.close()
    for e in orders[KILL_AFTER + 1:]:
        _post_until_accepted(front, e)

    # No entry lost: every order is in the feed (read through the survivor) and enforced.
    listing = survivor.request("GET", "/v1/entries").json()
    assert sorted(x["id"] for x in listing["entries"]) == [e["id"] for e in orders]
    for gw in gws:
        for e in orders:
            wait_for(lambda gw=gw, e=e: blocked(gw, e["value"]), 60,
                     what=f"{e['id']} enforced")

    # No ack lost: each gateway's outbox drains and the publisher has each ack once.
    for gw in gws:
        wait_for(lambda gw=gw: samples(gw, "safegate_feed_outbox_pending") == {(): 0.0}, 120,
                 what="the gateway's ack outbox drained")
    for e in orders:
        def all_verified(e: dict[str, Any] = e) -> bool:
            view = front.request("GET", f"/v1/entries/{e['id']}").json()
            rows = [g["gateway"] for g in view["gateways"] if g["verified_at"]]
            assert len(rows) == len(set(rows)), view
            return sorted(rows) == list(GATEWAYS)
        wait_for(all_verified, 60, what=f"both gateways' verified acks of {e['id']}")
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT gateway, entry_id, count(*) FROM acks "
                            "GROUP BY gateway, entry_id").fetchall()
    assert sorted((g, eid) for g, eid, _ in rows) == sorted(
        (g, e["id"]) for g in GATEWAYS for e in orders)
    assert {n for *_, n in rows} == {1}

    # The report (from the shared database, by the surviving publisher's config) is complete.
    today = time.strftime("%Y-%m-%d", time.gmtime())
    out = subprocess.run([sys.executable, "-m", "gateway", "report", "-c",
                          str(survivor.setup.config), "--from", today, "--to", today, "--format",
                          "json", "--tz", "UTC"], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert "***" not in report["source"] and report["source"].startswith("postgresql://")
    by_gateway = {s["name"]: s for s in report["sections"]}
    assert sorted(by_gateway) == list(GATEWAYS)
    for s in by_gateway.values():
        assert s["all"]["received"] == ENTRIES and s["all"]["within_deadline"] == ENTRIES
        assert s["all"]["never"] == 0

    # The gateways noticed nothing but retries: both running, every order applied, and the
    # only ack failures are transient ones (the dead publisher), never a refused token or ack.
    retried = 0.0
    for gw in gws:
        assert gw.proc is not None and gw.proc.poll() is None
        assert samples(gw, "safegate_feed_serial") == {(("feed", "central"),): float(ENTRIES)}
        failures = {dict(k)["reason"]: v for k, v in
                    samples(gw, "safegate_feed_ack_failures_total").items()}
        assert failures["unauthorized"] == failures["refused"] == 0, failures
        retried += failures["server"] + failures["network"]
        rejected = {dict(k)["reason"]: v for k, v in
                    samples(gw, "safegate_feed_rejected_total").items()}
        assert rejected.get("bad_signature", 0) == rejected.get("malformed", 0) == 0, rejected
    assert retried >= 1, "the ack the killed publisher held was sent again"
    assert yaml.safe_load(survivor.setup.config.read_text())["database"] == database
