"""The processes of bench/dns_compare.py: upstream, slow authority and the three servers under test.

Every server under test gets the same list (in its own syntax), the same upstream and is
pinned to the same core; see bench/dns_compare.py for the layout. The upstream is
tests/support/unbound.py's authoritative-only unbound plus the bench's A records and a stub
zone for the flood zone pointing at bench/slow_auth.py.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.rcode

from bench.procstat import tree_memory_mb
from bench.workloads import FLOOD_ZONE
from tests.support.procs import (
    SafeGateProcess,
    dns_query,
    free_port,
    safegate_command,
    write_gateway_config,
)
from tests.support.unbound import UNBOUND, UnboundServer, start_unbound

CATEGORY = "adult"  # the bench list's category; any category the lists loader accepts
CACHE_ENTRIES = 10_000  # answer cache of every server (unbound: see start_unbound_server)

BENCH_POLICY = f"""\
tiers:
  bench:
    description: benchmark tier, blocks the 1M-name bench list
    block: [{CATEGORY}]
    answer: nxdomain
networks:
  - name: loopback
    cidrs: [127.0.0.0/8, "::1/128"]
    tier: bench
"""


@dataclass
class Server:
    name: str
    pid: int
    port: int
    stop: Callable[[], None]
    startup_s: float
    memory_after_load: dict[str, float]
    log: Path | None = None


def bench_lists_yaml(list_path: Path) -> str:
    """lists.yaml naming the list (format `domains`, suffix match like the other servers)."""
    return f"categories:\n  {CATEGORY}:\n    - path: {list_path.name}\n      format: domains\n"


def wait_answering(port: int, name: str, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("server exited during startup")
        try:
            reply = dns_query(name, "A", port=port, timeout=0.5)
        except Exception:  # not up yet
            time.sleep(0.1)
            continue
        if reply.answer:
            return
        if reply.rcode() == dns.rcode.NXDOMAIN:  # up, but not forwarding: never will
            raise RuntimeError(f"port {port} answers {name} with NXDOMAIN: misconfigured")
        time.sleep(0.1)
    raise RuntimeError(f"no answer for {name} on port {port} after {timeout}s")


def answers(port: int, name: str, tries: int = 3) -> bool:
    for _ in range(tries):
        try:
            if dns_query(name, "A", port=port, timeout=1.0).answer:
                return True
        except Exception:  # not answering (yet)
            pass
    return False


def _popen_server(
    name: str, cmd: Sequence[str], log: Path, probe: str, port: int, timeout: float
) -> Server:
    """Start a foreground server, wait until it answers `probe`, return it with a stop()."""
    t0 = time.monotonic()
    with open(log, "wb") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    try:
        wait_answering(port, probe, timeout, lambda: proc.poll() is None)
    except BaseException:
        stop()
        raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}") from None
    return Server(name, proc.pid, port, stop, time.monotonic() - t0, tree_memory_mb(proc.pid), log)


# ---------------------------------------------------------------- upstream side (load core)


def start_slow_auth(workdir: Path, cpu: int, delay: float) -> tuple[subprocess.Popen[bytes], int]:
    """bench/slow_auth.py for FLOOD_ZONE on a free port, pinned to the load core."""
    port = free_port(v6=False)
    script = Path(__file__).with_name("slow_auth.py")
    cmd = ["taskset", "-c", str(cpu), sys.executable, str(script), "--port", str(port)]
    cmd += ["--zone", FLOOD_ZONE, "--delay", str(delay)]
    with open(workdir / "slow_auth.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / "slow_auth.log").read_text())
        try:
            if dns_query(f"probe.{FLOOD_ZONE}", "A", port=port, timeout=1.0).authority:
                return proc, port
        except Exception:  # not up yet
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("slow authority did not answer")


def start_upstream(
    workdir: Path, records: Sequence[str], cpu: int, auth_port: int
) -> UnboundServer:
    """The shared upstream: A records for the allowed names, NXDOMAIN for the rest of .test,
    FLOOD_ZONE delegated (stub zone) to the slow authority."""
    return start_unbound(
        workdir,
        records,
        ipv6=False,
        taskset_cpu=cpu,
        timeout=300,
        # Big socket buffers: the upstream must never be what drops queries (with ~208 KB,
        # bursts of forwarded misses overflowed it and dnsmasq then stalled, see
        # docs/performance.md "Traps").
        extra_config=[
            "so-rcvbuf: 8m",
            "so-sndbuf: 8m",
            "qname-minimisation: no",
            f'local-zone: "{FLOOD_ZONE}." transparent',
            "stub-zone:",
            f'  name: "{FLOOD_ZONE}."',
            f"  stub-addr: 127.0.0.1@{auth_port}",
        ],
    )


# ---------------------------------------------------------------- servers under test (core 0)


def start_dnsmasq(
    workdir: Path, conf: Path, upstream: UnboundServer, cpu: int, probe: str
) -> Server:
    port = free_port(v6=False)
    # Absolute paths: dnsmasq chdirs to / even with -k.
    cmd = [
        "taskset", "-c", str(cpu), "dnsmasq", "-k", "--no-resolv", "--no-hosts",
        f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
        f"--cache-size={CACHE_ENTRIES}", "--dns-forward-max=1000", "--log-facility=-",
        "--user=root", "--pid-file=", f"--conf-file={conf.resolve()}",
        f"--server=127.0.0.1#{upstream.port}",
    ]  # fmt: skip
    return _popen_server("dnsmasq", cmd, workdir / "dnsmasq.log", probe, port, 120)


def unbound_server_config(workdir: Path, port: int, upstream_port: int, zones: Path) -> str:
    """A caching forwarder: the list as always_nxdomain local zones, everything else to the
    upstream. One thread (one core, like the other two), default cache sizes."""
    return "\n".join(
        [
            "server:",
            f"  interface: 127.0.0.1@{port}",
            f"  port: {port}",
            "  do-ip6: no",
            '  chroot: ""',
            '  username: ""',
            f'  directory: "{workdir}"',
            f'  pidfile: "{workdir / "unbound-sut.pid"}"',
            '  module-config: "iterator"',
            '  logfile: ""',
            "  use-syslog: no",
            "  verbosity: 0",
            "  num-threads: 1",
            "  access-control: 127.0.0.0/8 allow",
            "  do-not-query-localhost: no",
            # unbound answers .test itself (RFC 6761 default zone): forward it like any name.
            '  local-zone: "test." nodefault',
            f'  include: "{zones.resolve()}"',
            "forward-zone:",
            '  name: "."',
            f"  forward-addr: 127.0.0.1@{upstream_port}",
            "remote-control:",
            "  control-enable: no",
            "",
        ]
    )


def start_unbound_server(
    workdir: Path, zones: Path, upstream: UnboundServer, cpu: int, probe: str
) -> Server:
    """The second unbound (server under test), separate from the upstream one."""
    sdir = workdir / "unbound-sut"
    sdir.mkdir(exist_ok=True)
    port = free_port(v6=False)
    conf = sdir / "unbound.conf"
    conf.write_text(unbound_server_config(sdir, port, upstream.port, zones))
    cmd = ["taskset", "-c", str(cpu), UNBOUND, "-d", "-c", str(conf)]
    return _popen_server("unbound", cmd, sdir / "unbound.log", probe, port, 600)


def start_safegate(
    workdir: Path, blocklist: Path, upstream: UnboundServer, cpu: int, probe: str,
    *, log_level: str = "warning", start_timeout: float = 300.0, workers: int | None = None,
) -> Server:
    gwdir = workdir / ("safegate" if workers is None else f"safegate-w{workers}")
    if gwdir.exists():
        shutil.rmtree(gwdir)
    dns_extra: dict[str, object] = {"cache": {"size": CACHE_ENTRIES}}
    if workers is not None:
        dns_extra["workers"] = workers
    config = write_gateway_config(
        gwdir,
        upstream_port=upstream.port,
        policies={"bench.yaml": BENCH_POLICY},
        lists={},
        lists_yaml=bench_lists_yaml(blocklist),
        # dnsperf is one source at ~100k qps: RRL would (rightly) limit it to a trickle. This
        # measures the resolver; the limiter's own cost is bench/rrl_cost.py.
        extra={"dns": dns_extra, "limits": {"rrl": {"enabled": False}}},
        ipv6=False,
    )
    shutil.copyfile(blocklist, gwdir / "blocklists" / blocklist.name)
    sg = SafeGateProcess()
    cmd = safegate_command(config, log_level=log_level)
    if cpu >= 0:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    t0 = time.monotonic()
    sg.start(config, command=cmd, timeout=start_timeout)
    wait_answering(sg.dns_port, probe, 30, sg.running)
    startup = time.monotonic() - t0

    def stop() -> None:
        try:
            sg.stop(timeout=10)
        finally:
            sg.kill()

    return Server(
        "safegate", sg.pid, sg.dns_port, stop, startup, tree_memory_mb(sg.pid), sg.stderr_path
    )
