"""A real monitoring stack on loopback: Prometheus scraping SafeGate nodes, a publisher and a probe.

Used by tests/test_dashboards.py (every dashboard query must return data) and by
bench/render_dashboards.py (the README screenshots are drawn from the same kind of run). The
Prometheus configuration is built from the shipped examples in deploy/prometheus/ with only
the targets and intervals replaced, so the examples' jobs, relabelling and rule files are
exercised too.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import yaml

from tests.support import unbound as ub
from tests.support.procs import (
    REPO_ROOT,
    SafeGateProcess,
    free_port,
    stop_process,
    write_gateway_config,
)
from tests.support.publisher import (
    ADMIN_TOKEN,
    PublisherProcess,
    _env,
    gateway_token,
    start_publisher,
)
from tests.support.wait import wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
EXAMPLES = REPO_ROOT / "deploy" / "prometheus"
ALERT_RULES = EXAMPLES / "alerts.yml"

# The policy and lists of the stack's gateways: a school-like tier split, so "blocked by
# category and tier" has more than one row. 127.0.0.1 is a primary school room, ::1 staff;
# 127.0.0.5 comes from the subscribers file served over HTTP (an ISP customer, tier teens).
POLICY = """\
tiers:
  tieu-hoc: {block: [adult, gambling, social], answer: blockpage}
  teens: {block: [adult], answer: nxdomain}
  staff: {block: []}
networks:
  - {name: phong-may, cidrs: ["127.0.0.1/32"], tier: tieu-hoc}
  - {name: staff, cidrs: ["::1/128"], tier: staff}
"""
LISTS = {
    "adult.txt": "adult-site.test\nadult.example\n",
    "gambling.hosts": "0.0.0.0 gamble.test\n",
    "social.txt": "social.test\n",
}
LISTS_YAML = """\
categories:
  adult:
    - {path: adult.txt, format: domains}
  gambling:
    - {path: gambling.hosts, format: hosts}
  social:
    - {path: social.txt, format: domains}
"""
SUBSCRIBERS_CSV = "prefix,tier,filtered\n127.0.0.5/32,teens,yes\n"
FEED_ENTRY_NAME = "malware.example"     # resolves upstream (tests/support/unbound.py)
PROVINCE_TOKEN = "province-ha-noi-token-0123456789"

# (source address, name, weight): allowed (cached after the first time, or always new),
# blocked by three categories, a mandatory feed entry, and a client in no network (REFUSED).
# Weights shape the README pictures; any mix works for tests.
TRAFFIC: tuple[tuple[str, str, int], ...] = (
    ("127.0.0.1", ub.ALLOWED, 8),
    ("127.0.0.1", ub.WWW_ALLOWED, 4),
    ("127.0.0.1", "*.games.test", 3),  # * = a fresh label: a cache miss, sent upstream
    ("127.0.0.1", "adult-site.test", 3),
    ("127.0.0.1", "gamble.test", 2),
    ("127.0.0.1", "social.test", 3),
    ("127.0.0.1", FEED_ENTRY_NAME, 1),
    ("127.0.0.5", "adult.example", 1),
    ("127.0.0.5", ub.ALLOWED, 2),
    ("127.0.0.9", ub.ALLOWED, 1),     # in no network: REFUSED
)


# ---------------------------------------------------------------- Prometheus


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s: these helpers are not under test themselves."""
    if proc is not None:
        stop_process(proc, 10)


class PrometheusError(AssertionError):
    """Prometheus did not start, or its HTTP API answered with an error."""


def load_example(name: str) -> dict[str, Any]:
    """deploy/prometheus/NAME parsed (school.yml, isp.yml, regulator.yml)."""
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(doc, dict), f"{name}: not a mapping"
    return doc


def retarget(job: Mapping[str, Any], targets: Sequence[str], directory: Path,
             labels: Sequence[Mapping[str, str]] | None = None) -> dict[str, Any]:
    """A copy of an example scrape job pointed at `targets` (one label set per target).

    static_configs keep the labels of the example's first group (overridden by `labels`);
    file_sd_configs get a fresh targets file in `directory` in the documented format, so the
    example's relabelling still applies.
    """
    out: dict[str, Any] = json.loads(json.dumps(job))
    given = [dict(labels[i]) if labels else {} for i in range(len(targets))]
    if "file_sd_configs" in out:
        path = directory / f"{out['job_name']}-targets.json"
        path.write_text(json.dumps([{"targets": [t], "labels": lab}
                                    for t, lab in zip(targets, given, strict=True)]))
        out["file_sd_configs"] = [{"files": [str(path)], "refresh_interval": "1s"}]
    else:
        example: dict[str, str] = dict(out["static_configs"][0].get("labels", {}))
        out["static_configs"] = [{"targets": [t], "labels": {**example, **lab}}
                                 for t, lab in zip(targets, given, strict=True)]
    out.pop("scrape_interval", None)
    out.pop("scrape_timeout", None)
    return out


@dataclass
class PrometheusServer:
    """Debian's `prometheus` on a loopback port, with its own TSDB in `directory`."""

    directory: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, scrape_configs: Sequence[Mapping[str, Any]], *, interval: str = "1s",
              timeout: float = 20.0) -> PrometheusServer:
        """Write prometheus.yml (alert rules included) and wait for /-/ready."""
        if not Path(PROMETHEUS).exists():
            raise PrometheusError("prometheus is not installed (Debian package 'prometheus')")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = {"global": {"scrape_interval": interval, "evaluation_interval": interval,
                             "scrape_timeout": interval},
                  "rule_files": [str(ALERT_RULES)],
                  "scrape_configs": list(scrape_configs)}
        cfg_path = self.directory / "prometheus.yml"
        cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port(v6=False, udp=False)
        log = self.directory / "prometheus.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={cfg_path}",
                 f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=1d", "--log.level=warn"],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=self.directory)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise PrometheusError(f"prometheus exited {proc.returncode}:\n"
                                      f"{log.read_text(errors='replace')}")
            with urllib.request.urlopen(self.url + "/-/ready", timeout=0.5) as resp:
                return bool(resp.status == 200)

        try:
            wait_for(ready, timeout=timeout, interval=0.1, what="prometheus /-/ready",
                     ignore=(OSError,))
        except AssertionError as exc:
            raise PrometheusError(str(exc)) from None
        return self

    def api(self, path: str, params: Mapping[str, str] | Sequence[tuple[str, str]] = ()
            ) -> dict[str, Any]:
        """GET /api/v1/PATH; returns the JSON body also for 4xx (bad_data has the reason)."""
        qs = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{qs}" if qs else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        doc = json.loads(body)
        assert isinstance(doc, dict)
        return doc

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        """An instant query, as a Grafana stat/table panel or the latest point of a graph."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", params)

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict[str, Any]:
        return self.api("query_range", {"query": expr, "start": f"{start:.3f}",
                                        "end": f"{end:.3f}", "step": f"{step:g}"})

    def label_values(self, label: str, match: str) -> list[str]:
        """What Grafana's `label_values(MATCH, LABEL)` variable query lists."""
        doc = self.api(f"label/{label}/values", [("match[]", match)])
        if doc.get("status") != "success":
            raise PrometheusError(f"label_values({match}, {label}): {doc}")
        return sorted(doc["data"])

    def wait_for(self, expr: str, check: Callable[[list[dict[str, Any]]], bool],
                 timeout: float, what: str) -> list[dict[str, Any]]:
        """Poll an instant query until `check(result)` holds."""
        def result() -> tuple[list[dict[str, Any]]] | tuple[()]:
            doc = self.query(expr)
            got = doc.get("data", {}).get("result", []) if doc.get("status") == "success" else []
            return (got,) if check(got) else ()   # a 1-tuple: an empty result may be the goal

        try:
            return wait_for(result, timeout=timeout, interval=0.2, what=f"{what} ({expr})")[0]
        except AssertionError as exc:
            raise PrometheusError(str(exc)) from None

    def stop(self) -> None:
        terminate(self.proc)


# ---------------------------------------------------------------- what it scrapes


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No per-request lines on stderr."""


@dataclass
class FileServer:
    """A static HTTP server on loopback (the ISP's provisioning system for subscribers.csv)."""

    directory: Path
    server: http.server.ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None

    def start(self) -> FileServer:
        handler = _handler_for(self.directory)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _handler_for(directory: Path) -> type[_QuietHandler]:
    class Handler(_QuietHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)
    return Handler


@dataclass
class ProbeService:
    """`safegate probe --serve`: the regulator's independent check of one resolver."""

    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self, directory: Path, resolver_port: int, pub: PublisherProcess,
              interval: float) -> ProbeService:
        self.port = free_port(v6=False, udp=False)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "probe.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "probe",
                 "--resolver", f"127.0.0.1:{resolver_port}",
                 "--feed", pub.url + "/v1/feed", "--public-key", str(pub.setup.public_key),
                 "--serve", f"127.0.0.1:{self.port}", "--interval", f"{interval:g}",
                 "--timeout", "1"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=_env())
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        terminate(self.proc)


def metrics_target(gw: SafeGateProcess) -> str:
    return gw.metrics_url.removeprefix("http://")


@dataclass
class Stack:
    """unbound, a publisher with one feed entry, N gateways (node-1..N) following it, a probe
    service, the subscribers file server, and Prometheus scraping them as the examples say."""

    directory: Path
    nodes: int = 1
    probe_interval: float = 2.0
    unbound: ub.UnboundServer | None = None
    first_upstream: ub.UnboundServer | None = None
    publisher: PublisherProcess | None = None
    gateways: list[SafeGateProcess] = field(default_factory=list)
    probe: ProbeService | None = None
    files: FileServer | None = None
    prometheus: PrometheusServer | None = None

    @property
    def gateway_ids(self) -> list[str]:
        return [f"node-{i + 1}" for i in range(self.nodes)]

    def start(self) -> Stack:
        d = self.directory
        self.unbound = ub.start_unbound(d / "unbound")
        self.first_upstream = ub.start_unbound(d / "unbound-first")
        # A ministry with one province (no school behind it here): the regulator dashboard's
        # per-province panels read its roll-ups (tests/test_province_e2e.py fills them).
        self.publisher = start_publisher(d / "publisher", gateways=self.gateway_ids, extra={
            "provinces": [{"id": "ha-noi", "name": "Hà Nội", "token": PROVINCE_TOKEN}]})
        (d / "www").mkdir(parents=True, exist_ok=True)
        (d / "www" / "subscribers.csv").write_text(SUBSCRIBERS_CSV)
        self.files = FileServer(d / "www").start()
        for gid in self.gateway_ids:
            self.gateways.append(SafeGateProcess().start(self._gateway_config(gid),
                                                         log_level="info"))
        self.publish_entry()
        self.probe = ProbeService().start(d / "probe", self.gateways[0].dns_port,
                                          self.publisher, self.probe_interval)
        self.prometheus = PrometheusServer(d / "prometheus").start(self.scrape_configs())
        return self

    def _gateway_config(self, gid: str) -> Path:
        """A gateway on the central feed, subscribers from a URL, and two upstreams: the
        first one can be stopped (upstream_outage) so upstream errors show on the dashboards."""
        assert self.unbound is not None and self.first_upstream is not None
        assert self.publisher is not None and self.files is not None
        pub = self.publisher
        extra = {
            "dns": {"upstreams": [f"127.0.0.1:{self.first_upstream.port}",
                                  f"127.0.0.1:{self.unbound.port}"],
                    "upstream_timeout": 0.3},
            "gateway": {"id": gid, "token": gateway_token(gid)},
            "feeds": [{"name": "central", "url": pub.url + "/v1/feed", "type": "safegate",
                       "public_key": str(pub.setup.public_key), "interval": 60,
                       "long_poll": 10}],
            "subscribers": {"url": self.files.url + "/subscribers.csv", "interval": 2},
        }
        return write_gateway_config(self.directory / gid, upstream_port=self.unbound.port,
                                    policies={"school.yaml": POLICY}, lists=LISTS,
                                    lists_yaml=LISTS_YAML, extra=extra)

    def upstream_outage(self) -> None:
        """Stop the gateways' first upstream: they fail over to the second, counting errors."""
        assert self.first_upstream is not None
        self.first_upstream.stop()

    def publish_entry(self, entry_id: str = "BCA-2026-0001", name: str = FEED_ENTRY_NAME
                      ) -> None:
        """A mandatory order, as the regulator issues it (all gateways apply and ack it);
        `name` must resolve upstream (tests/support/unbound.py BLOCKED_NAMES)."""
        assert self.publisher is not None
        entry = {"id": entry_id, "type": "domain", "value": name,
                 "categories": ["csam"], "mandatory": True,
                 "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "legal_basis": {"authority": "Bộ Công an", "decision": "123/QĐ-BCA",
                                 "date": "2026-11-20"}}
        r = self.publisher.request("POST", "/v1/entries", body={"entries": [entry]},
                                   token=ADMIN_TOKEN)
        assert r.status == 201, r.body

    def post_report(self, gid: str, kind: str = "harmful") -> None:
        """What a gateway's outbox delivers when someone reports harmful content."""
        assert self.publisher is not None
        report = {"id": str(uuid.uuid4()), "kind": kind, "target": "takedown.example/bai/1",
                  "category": "csam", "entry_id": "", "comment": "", "contact": "",
                  "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "gateway": gid}
        r = self.publisher.request("POST", "/v1/reports", body=report,
                                   token=gateway_token(gid))
        assert r.status in (200, 201), r.body

    def scrape_configs(self) -> list[dict[str, Any]]:
        """The ISP example's gateway job (file_sd, one `node` label per gateway) and the
        regulator example's publisher and probe jobs, pointed at this stack."""
        assert self.publisher is not None and self.probe is not None
        prom_dir = self.directory / "prometheus"
        prom_dir.mkdir(parents=True, exist_ok=True)
        isp = {j["job_name"]: j for j in load_example("isp.yml")["scrape_configs"]}
        reg = {j["job_name"]: j for j in load_example("regulator.yml")["scrape_configs"]}
        return [
            retarget(isp["safegate"], [metrics_target(g) for g in self.gateways], prom_dir,
                     [{"node": gid} for gid in self.gateway_ids]),
            retarget(reg["safegate-publisher"], [self.publisher.url.removeprefix("http://")],
                     prom_dir),
            retarget(reg["safegate-probe"], [self.probe.target], prom_dir,
                     [{"resolver": "node-1"}]),
        ]

    def stop(self) -> None:
        for stop in (self.prometheus.stop if self.prometheus else None,
                     self.probe.stop if self.probe else None,
                     *(g.kill for g in self.gateways),
                     self.files.stop if self.files else None,
                     self.publisher.kill if self.publisher else None,
                     self.unbound.stop if self.unbound else None,
                     self.first_upstream.stop if self.first_upstream else None):
            if stop is not None:
                with contextlib.suppress(Exception):
                    stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def send_traffic(gateways: Iterable[SafeGateProcess], rounds: int = 1,
                 weights: Callable[[str], float] | None = None,
                 rng: random.Random | None = None) -> int:
    """Query every gateway with TRAFFIC (each item `weight` times per round); returns the
    number sent. `weights(name)` scales an item (the render script varies load over time)."""
    sent = 0
    rng = rng or random.Random()
    for gw in gateways:
        for _ in range(rounds):
            for source, name, weight in TRAFFIC:
                n = weight * (weights(name) if weights else 1.0)
                count = int(n) + (1 if rng.random() < n - int(n) else 0)
                for _ in range(count):
                    qname = name.replace("*", f"n{rng.randrange(10**9)}")
                    q = dns.message.make_query(qname, "A", use_edns=0)
                    with contextlib.suppress(dns.exception.Timeout, OSError):
                        dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=1.0,
                                      source=source)
                    sent += 1
    return sent


# The alerts deploy/prometheus/alerts.yml must define (test_alert_rules, test_dashboards).
ALERTS = ("SafeGateFeedStale", "SafeGateFeedDocumentStale", "SafeGateEnforcementOverdue",
          "SafeGateProbeFailures", "SafeGateGatewayNotAcking", "SafeGateGatewayLagging",
          "SafeGatePublisherOverdue",
          "SafeGateDnsDown")
