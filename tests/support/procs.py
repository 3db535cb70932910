"""Run SafeGate as a real process on loopback, plus ports and DNS client helpers.

Why a real process: signal handling, config loading, readiness and socket binding are exactly
what in-process tests skip. Everything here binds to 127.0.0.1 / ::1 only.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import dns.message
import dns.query
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.wait import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
KDIG = "/usr/bin/kdig"
DIG = "/usr/bin/dig"

# Ports are picked below the kernel's ephemeral range so that an outgoing socket (SafeGate's
# upstream client, dnsperf, ...) cannot grab a port between our check and the server's bind.
_PORT_LOW, _PORT_HIGH = 20000, 32000
_handed_out: set[int] = set()


def _port_is_free(port: int, *, v4: bool, v6: bool, udp: bool, tcp: bool) -> bool:
    """Bind every requested (family, kind) pair at once; all must succeed."""
    socks: list[socket.socket] = []
    try:
        for fam, addr, wanted in ((socket.AF_INET, "127.0.0.1", v4), (socket.AF_INET6, "::1", v6)):
            if not wanted:
                continue
            for kind, on in ((socket.SOCK_DGRAM, udp), (socket.SOCK_STREAM, tcp)):
                if not on:
                    continue
                s = socket.socket(fam, kind)
                socks.append(s)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((addr, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


class ProcessExited(Exception):
    """A process under test ended while a test waited for it."""


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, SIGKILL after `timeout`; idempotent. For the tools tests start around the
    gateway (unbound, named, ...), which are not under test: their exit code is not checked."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def free_port(*, v4: bool = True, v6: bool = True, udp: bool = True, tcp: bool = True) -> int:
    """A port free for UDP and TCP on 127.0.0.1 and ::1 (by default), never handed out twice.

    Chosen outside the ephemeral range (see above); unique within this Python process so two
    servers of one test never get the same port even though nothing is bound yet.
    """
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(2000):
        port = rng.randrange(_PORT_LOW, _PORT_HIGH)
        if port in _handed_out:
            continue
        if _port_is_free(port, v4=v4, v6=v6, udp=udp, tcp=tcp):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port found")


# ---------------------------------------------------------------- DNS client helpers


def dns_query(
    name: str,
    rdtype: str = "A",
    *,
    port: int,
    addr: str = "127.0.0.1",
    tcp: bool = False,
    payload: int | None = None,
    timeout: float = 2.0,
    raise_on_truncation: bool = False,
) -> dns.message.Message:
    """One dnspython query; `payload` set -> EDNS0 with that buffer size, else no OPT at all.

    By default a TC=1 UDP answer is returned as is (not retried over TCP, not raised), so tests
    can assert on truncation.
    """
    if payload is None:
        q = dns.message.make_query(name, rdtype, use_edns=False)
    else:
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=payload)
    if tcp:
        return dns.query.tcp(q, addr, port=port, timeout=timeout)
    return dns.query.udp(
        q, addr, port=port, timeout=timeout, raise_on_truncation=raise_on_truncation
    )


def _run_tool(tool: str, args: Sequence[str], timeout: float, check: bool) -> str:
    proc = subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{tool} {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc.stdout


def kdig(*args: str, timeout: float = 10.0, check: bool = True) -> str:
    """Run kdig, return stdout. Remember: no EDNS (so no EDE) unless +edns/+bufsize is given,
    and kdig lowercases the QNAME (use raw packets to test case preservation)."""
    return _run_tool(KDIG, args, timeout, check)


def dig(*args: str, timeout: float = 10.0, check: bool = True) -> str:
    """Run dig, return stdout (dig sends EDNS by default, unlike kdig)."""
    return _run_tool(DIG, args, timeout, check)


# ---------------------------------------------------------------- gateway.yaml


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, val in extra.items():
        if isinstance(val, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def write_gateway_config(
    directory: Path,
    *,
    upstream_port: int,
    policies: Mapping[str, str] | None = None,
    lists: Mapping[str, str] | None = None,
    lists_yaml: str = "categories: {}\n",
    extra: Mapping[str, Any] | None = None,
    ipv6: bool = True,
) -> Path:
    """Write DIR/gateway.yaml (+ policies/, blocklists/, var/) on fresh loopback ports.

    `policies`: filename -> YAML text, written to policies/. `lists`: filename -> content,
    written to blocklists/ next to `lists_yaml` (blocklists/lists.yaml). `extra` is deep-merged
    over the generated config (dicts merge, anything else replaces). Returns the config path.
    """
    directory = Path(directory)
    (directory / "policies").mkdir(parents=True, exist_ok=True)
    (directory / "blocklists").mkdir(parents=True, exist_ok=True)
    (directory / "var").mkdir(parents=True, exist_ok=True)
    for fname, text in (policies or {}).items():
        (directory / "policies" / fname).write_text(text)
    for fname, text in (lists or {}).items():
        path = directory / "blocklists" / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (directory / "blocklists" / "lists.yaml").write_text(lists_yaml)

    dns_port = free_port(v6=ipv6)
    listen = [f"127.0.0.1:{dns_port}"] + ([f"[::1]:{dns_port}"] if ipv6 else [])
    cfg: dict[str, Any] = {
        "dns": {"listen": listen, "upstreams": [f"127.0.0.1:{upstream_port}"]},
        "web": {"listen": f"127.0.0.1:{free_port(v6=False, udp=False)}"},
        "metrics": {"listen": f"127.0.0.1:{free_port(v6=False, udp=False)}"},
        "policies": ["policies/"],
        "blocklists": "blocklists/lists.yaml",
        "state_dir": "var/",
    }
    if extra:
        cfg = _deep_merge(cfg, extra)
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _first(listen: str | list[str]) -> str:
    """web.listen / metrics.listen: one address or a list (dual stack); tests use the first."""
    return listen if isinstance(listen, str) else listen[0]


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


# ---------------------------------------------------------------- the process


def safegate_command(config: Path, *, log_level: str = "debug") -> list[str]:
    """The one command line tests and bench use to run SafeGate."""
    return [sys.executable, "-m", "gateway", "--log-level", log_level, "run", "-c", str(config)]


class SafeGateProcess:
    """A SafeGate server subprocess; stdout/stderr go to files next to its config.

    Files rather than pipes: a chatty debug log must never block the server on a full pipe.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.config: Path | None = None
        self.dns_port = 0
        self.dns_addrs: list[tuple[str, int]] = []
        self.metrics_url = ""
        self.web_url = ""
        self.stderr_path: Path | None = None
        self.stdout_path: Path | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(
        self,
        config: Path,
        *,
        timeout: float = 20.0,
        log_level: str = "debug",
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        wait_ready: bool = True,
    ) -> SafeGateProcess:
        """Start and wait until GET /readyz answers 200 (lists loaded) or fail with stderr."""
        self.config = Path(config).resolve()
        cfg = yaml.safe_load(self.config.read_text())
        self.dns_addrs = [_split_hostport(x) for x in cfg["dns"]["listen"]]
        self.dns_port = self.dns_addrs[0][1]
        mhost, mport = _split_hostport(_first(cfg["metrics"]["listen"]))
        self.metrics_url = _url(mhost, mport)
        if "web" in cfg and cfg["web"] and "listen" in cfg["web"]:
            self.web_url = _url(*_split_hostport(_first(cfg["web"]["listen"])))
        logdir = self.config.parent
        self.stderr_path = logdir / "safegate.stderr.log"
        self.stdout_path = logdir / "safegate.stdout.log"
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [full_env.get("PYTHONPATH")])]
        )
        if env:
            full_env.update(env)
        cmd = list(command) if command else safegate_command(self.config, log_level=log_level)
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env=full_env,
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def http_get(self, path: str, *, timeout: float = 2.0) -> tuple[int, str]:
        """GET on the metrics listener; returns (status, body) also for 4xx/5xx."""
        try:
            with urllib.request.urlopen(self.metrics_url + path, timeout=timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")

    def metrics_text(self) -> str:
        status, body = self.http_get("/metrics")
        assert status == 200, f"/metrics returned {status}"
        return body

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll /readyz until 200; surface the process's stderr if it dies or never gets ready."""
        proc = self.proc
        assert proc is not None

        def readyz() -> bool:
            if proc.poll() is not None:
                raise ProcessExited(f"safegate exited with {proc.returncode} before ready")
            return self.http_get("/readyz", timeout=0.5)[0] == 200

        try:
            wait_for(readyz, timeout=timeout, what="safegate /readyz 200",
                     ignore=(OSError, urllib.error.URLError))
        except (AssertionError, ProcessExited) as exc:
            raise AssertionError(f"{exc}\n--- stderr ---\n{self.stderr_text()}") from None

    def reload(self) -> None:
        """SIGHUP: the server rebuilds lists/policies aside and swaps them in."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then assert a clean exit (code 0) within `timeout` seconds."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"safegate did not exit within {timeout}s of SIGTERM\n"
                f"--- stderr ---\n{self.stderr_text()}"
            ) from None
        assert code == 0, f"safegate exited with {code}\n--- stderr ---\n{self.stderr_text()}"

    def kill(self) -> None:
        """SIGKILL without assertions (teardown after a failure)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def stderr_text(self) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")

    def stdout_text(self) -> str:
        if self.stdout_path is None or not self.stdout_path.exists():
            return ""
        return self.stdout_path.read_text(errors="replace")

    def query(self, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
        """dns_query() against this server's first listen address."""
        addr, port = self.dns_addrs[0]
        kw.setdefault("addr", addr)
        return dns_query(name, rdtype, port=port, **kw)

    def __enter__(self) -> SafeGateProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.stop()
        else:
            self.kill()


class SafeGateFactory(Protocol):
    """Type of the `safegate_factory` fixture (annotate test parameters with it)."""

    def __call__(self, config: Path | None = None, /, **kwargs: Any) -> SafeGateProcess: ...


def metric(gw: SafeGateProcess, name: str, **labels: str) -> float:
    """The sum of `gw`'s /metrics samples named `name` whose labels include `labels` (0 when
    there are none)."""
    return sum(float(s.value) for f in text_string_to_metric_families(gw.metrics_text())
               for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
