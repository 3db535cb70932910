"""Game-time quotas end to end (issue #14.2): a real gateway in front of a real unbound, real
clients. `minutes: 1`: the first minute a client looks up a game name is its day's time; a
lookup in any later minute is blocked (EDE 15), the block page says the time is used up,
`safegate explain` shows it, and a restart does not hand out a fresh day.

The gateway runs on the real clock, so the test waits for the next minute (polling, bounded
by 75 s): the assertion is the event (a blocked reply), never a duration.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import unbound as ub
from tests.support.cli import safegate
from tests.support.procs import SafeGateProcess, metric
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

GAME = "play.game.test"
GAME_A = "192.0.2.77"
POLICY = """\
tiers:
  kids:
    block: [adult]
    answer: nxdomain
    quotas:
      - {categories: [games], minutes: 1, per: day}
networks:
  - {name: lab, cidrs: ["127.0.0.0/8", "::1/128"], tier: kids}
"""
LISTS = {"adult.txt": "adult-site.test\n", "games.txt": "game.test\n"}
LISTS_YAML = ("categories:\n  adult:\n    - {path: adult.txt, format: domains}\n"
              "  games:\n    - {path: games.txt, format: domains}\n")


def ask(gw: SafeGateProcess, name: str, source: str = "127.0.0.1") -> dns.message.Message:
    q = dns.message.make_query(name, "A", use_edns=0)
    return dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=3,  # type: ignore[no-any-return]
                         source=source)


def used_up(r: dns.message.Message) -> bool:
    ede = [(o.code, o.text) for o in r.options if isinstance(o, dns.edns.EDEOption)]
    return r.rcode() == dns.rcode.NXDOMAIN and ede == [
        (15, "games: game.test (daily time used up)")]


def answered(r: dns.message.Message) -> bool:
    return r.rcode() == dns.rcode.NOERROR and [rd.to_text() for rs in r.answer for rd in rs] \
        == [GAME_A]


def page(gw: SafeGateProcess, host: str) -> tuple[int, str]:
    req = urllib.request.Request(gw.web_url + "/", headers={"Host": host,
                                                            "Accept-Language": "en"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_one_minute_quota_blocks_the_next_minute_and_survives_a_restart(
        unbound_factory: ub.UnboundFactory, safegate_factory: Any) -> None:
    upstream = unbound_factory([f"{GAME}. 300 IN A {GAME_A}"])
    cfg_gw = safegate_factory(upstream_port=upstream.port, policies={"p.yaml": POLICY},
                              lists=LISTS, lists_yaml=LISTS_YAML,
                              extra={"limits": {"rrl": {"enabled": False},
                                                "quota": {"save_interval": 1}}})
    gw: SafeGateProcess = cfg_gw
    assert metric(gw, "safegate_quota_exhausted_total", tier="kids") == 0
    assert metric(gw, "safegate_quota_untracked_total", tier="kids") == 0
    first = ask(gw, GAME)
    assert answered(first)               # the first minute of the day's one
    # The same query again until the minute rolls: answered meanwhile (from the cache, but
    # never from the per-profile reply memo, which would skip the count), then blocked.
    replies: list[dns.message.Message] = []

    def blocked_now() -> bool:
        r = ask(gw, GAME)
        replies.append(r)
        return used_up(r)

    wait_for(blocked_now, timeout=75, interval=0.5)
    assert all(answered(r) for r in replies[:-1])
    assert used_up(ask(gw, "www." + GAME))         # the whole category, any name in it
    assert answered(ask(gw, GAME, source="127.0.0.2"))   # another client has its own minutes
    assert ask(gw, ub.ALLOWED).rcode() == dns.rcode.NOERROR   # other names are untouched
    assert ask(gw, "adult-site.test").rcode() == dns.rcode.NXDOMAIN
    assert metric(gw, "safegate_quota_exhausted_total", tier="kids") == 1
    assert metric(gw, "safegate_quota_clients") == 2

    status, body = page(gw, GAME)
    assert status == 403 and "Today's time for this category is used up" in body, body

    # explain reads the counters the gateway saves to state_dir (every save_interval)
    def explained() -> dict[str, Any]:
        r = safegate("explain", "-c", str(gw.config), "127.0.0.1", GAME, "--json")
        assert r.returncode == 0, r.stderr
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    out = wait_for(lambda: (o := explained())["verdict"] == "blocked" and o, timeout=20)
    assert out["reason"] == "quota" and out["ede"] == 15
    assert out["quotas"][0].startswith("games: 1 minutes per day: 1 used, 0 left today "
                                       "(used up: blocked until midnight)")
    other = safegate("explain", "-c", str(gw.config), "127.0.0.3", GAME, "--json")
    assert json.loads(other.stdout)["verdict"] == "allowed", other.stdout

    # A restart the same day keeps the used-up minute.
    config = gw.config
    assert config is not None
    gw.stop()
    again: SafeGateProcess = safegate_factory(config)
    assert used_up(ask(again, GAME))
    assert answered(ask(again, GAME, source="127.0.0.4"))


def test_a_full_counter_table_blocks_new_addresses(unbound_factory: ub.UnboundFactory,
                                                   safegate_factory: Any) -> None:
    """limits.quota.clients: 2. Addresses past it (a host rotating its addresses) get no
    counter and no game time: fail closed, counted without an address label."""
    upstream = unbound_factory([f"{GAME}. 300 IN A {GAME_A}"])
    gw: SafeGateProcess = safegate_factory(
        upstream_port=upstream.port, policies={"p.yaml": POLICY}, lists=LISTS,
        lists_yaml=LISTS_YAML, extra={"limits": {"rrl": {"enabled": False},
                                                 "quota": {"clients": 2}}})
    assert answered(ask(gw, GAME, source="127.0.0.1"))
    assert answered(ask(gw, GAME, source="127.0.0.2"))
    for i in range(3, 23):
        r = ask(gw, GAME, source=f"127.0.0.{i}")
        ede = [(o.code, o.text) for o in r.options if isinstance(o, dns.edns.EDEOption)]
        assert r.rcode() == dns.rcode.NXDOMAIN and ede == [
            (15, "games: game.test (time limit cannot be counted)")], i
        assert ask(gw, ub.ALLOWED, source=f"127.0.0.{i}").rcode() == dns.rcode.NOERROR
    assert metric(gw, "safegate_quota_clients") == 2
    assert metric(gw, "safegate_quota_untracked_total", tier="kids") == 20
    assert answered(ask(gw, GAME, source="127.0.0.2"))   # the counted ones keep their time
    labels = {k for f in text_string_to_metric_families(gw.metrics_text())
              if f.name.startswith("safegate_quota_") for sample in f.samples
              for k in sample.labels}
    assert labels == {"tier"}    # never an address
