"""A real upstream for tests: Debian's unbound, authoritative-only, on loopback.

unbound never recurses here: `local-zone: "." static` answers everything that is not our test
data with NXDOMAIN (+ SOA) at once, so nothing ever tries to reach the internet.

Traps handled (see docs/design.md "Testing against real servers"):
- unbound's built-in special-use zones (test., invalid., ...) would answer NXDOMAIN themselves;
  every TLD our data uses gets its own explicit `local-zone: "TLD." static` with an SOA, which
  replaces the built-in one.
- local-data CNAMEs are NOT chased by unbound: `cname.test A` returns only the CNAME record
  (NOERROR, answer = [cname.test CNAME allowed.test.]). A resolver in front must chase itself
  or pass it through as is.
- unbound caps UDP answers at `max-udp-size` (default 1232): big.test is always TC=1 over UDP
  at a 1232 buffer, whatever the client asks for beyond that, and complete over TCP.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dns.exception
import dns.message
import dns.rcode

from tests.support.wait import wait_for

from .procs import dns_query, free_port, stop_process

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"

# ---------------------------------------------------------------- the test data (assert on these)

ALLOWED = "allowed.test"
WWW_ALLOWED = "www.allowed.test"
ALLOWED_A = "192.0.2.10"
ALLOWED_AAAA = "2001:db8::10"
ALLOWED_TTL = 300

SHORT_TTL_NAME = "short-ttl.test"
SHORT_TTL_A = "192.0.2.11"
SHORT_TTL = 5

CNAME_NAME = "cname.test"
CNAME_TARGET = ALLOWED  # not chased by unbound, see module docstring

BIG_NAME = "big.test"
BIG_TXT_COUNT = 12
BIG_TXT = tuple(f"big-{i:02d}-".ljust(200, "x") for i in range(BIG_TXT_COUNT))
BIG_MIN_SIZE = 1232  # answer is larger than this ...
BIG_MAX_SIZE = 4000  # ... and smaller than this

NODATA_NAME = "nodata.test"  # only a TXT record: A/AAAA are NODATA with the SOA
NODATA_TXT = "nodata-only-txt"

NXDOMAIN_NAME = "does-not-exist.test"  # anything not listed is NXDOMAIN (+ SOA)

# Negative answers carry the zone SOA with TTL = min(SOA TTL, SOA minimum) = NEG_TTL.
NEG_TTL = 60
SOA_SERIAL = 2024010101

# Names that tests put in blocklists must still resolve upstream, or an unblocked name would
# look blocked. Each is a `redirect` zone: the name AND every subdomain answer these addresses.
BLOCKED_TARGET_A = "192.0.2.66"
BLOCKED_TARGET_AAAA = "2001:db8::66"
BLOCKED_NAMES = (
    "adult-site.test",  # sub.adult-site.test etc. resolve too (redirect zone)
    "gamble.test",
    "drugs.test",
    "social.test",
    "games.test",
    "ads.test",
    "proxy.test",
    "csam-test.invalid",
    "adult.example",
    "malware.example",
    "phish.example",
)
BLOCKED_TTL = 300

ZONE_TLDS = ("test", "invalid", "example")


def _soa(zone: str) -> str:
    apex = zone.rstrip(".") + "."
    if apex == "..":
        apex = "."
    ns = "ns.invalid." if apex == "." else f"ns.{apex}"
    host = "hostmaster.invalid." if apex == "." else f"hostmaster.{apex}"
    return f"{apex} 3600 IN SOA {ns} {host} {SOA_SERIAL} 3600 600 86400 {NEG_TTL}"


def default_local_data() -> list[str]:
    """RR strings (zone-file syntax, absolute names) of the standard test data."""
    rrs = [
        f"{ALLOWED}. {ALLOWED_TTL} IN A {ALLOWED_A}",
        f"{ALLOWED}. {ALLOWED_TTL} IN AAAA {ALLOWED_AAAA}",
        f"{WWW_ALLOWED}. {ALLOWED_TTL} IN A {ALLOWED_A}",
        f"{WWW_ALLOWED}. {ALLOWED_TTL} IN AAAA {ALLOWED_AAAA}",
        f"{SHORT_TTL_NAME}. {SHORT_TTL} IN A {SHORT_TTL_A}",
        f"{CNAME_NAME}. {ALLOWED_TTL} IN CNAME {CNAME_TARGET}.",
        f'{NODATA_NAME}. {ALLOWED_TTL} IN TXT "{NODATA_TXT}"',
    ]
    rrs += [f'{BIG_NAME}. {ALLOWED_TTL} IN TXT "{txt}"' for txt in BIG_TXT]
    return rrs


def _quote(rr: str) -> str:
    """unbound.conf string: single quotes when the RR itself contains double quotes."""
    if '"' in rr:
        if "'" in rr:
            raise ValueError(f"cannot quote local-data containing both quote kinds: {rr!r}")
        return f"'{rr}'"
    return f'"{rr}"'


def _tld(owner: str) -> str:
    labels = [x for x in owner.rstrip(".").split(".") if x]
    return labels[-1].lower() if labels else ""


def render_config(
    workdir: Path,
    port: int,
    *,
    extra_local_data: Iterable[str] = (),
    extra_config: Iterable[str] = (),
    ipv6: bool = True,
    blocked_names: Iterable[str] = BLOCKED_NAMES,
) -> str:
    """The unbound.conf text; exposed so tests/bench can inspect or reuse it."""
    extra = list(extra_local_data)
    tlds = list(ZONE_TLDS)
    for rr in extra:
        t = _tld(rr.split()[0])
        if t and t not in tlds:
            tlds.append(t)
    lines = [
        "server:",
        f"  interface: 127.0.0.1@{port}",
        *([f"  interface: ::1@{port}"] if ipv6 else []),
        f"  port: {port}",
        "  do-ip4: yes",
        f"  do-ip6: {'yes' if ipv6 else 'no'}",
        "  do-udp: yes",
        "  do-tcp: yes",
        "  do-not-query-localhost: no",
        '  chroot: ""',
        '  username: ""',
        f'  directory: "{workdir}"',
        f'  pidfile: "{workdir / "unbound.pid"}"',
        '  module-config: "iterator"',
        '  logfile: ""',
        "  use-syslog: no",
        "  log-time-ascii: yes",
        "  verbosity: 1",
        "  num-threads: 1",
        "  so-reuseport: no",
        "  access-control: 127.0.0.0/8 allow",
        "  access-control: ::1/128 allow",
        # Everything not ours: NXDOMAIN from here, never a recursion attempt.
        '  local-zone: "." static',
        f"  local-data: {_quote(_soa('.'))}",
    ]
    for tld in tlds:
        lines += [f'  local-zone: "{tld}." static', f"  local-data: {_quote(_soa(tld))}"]
    for name in blocked_names:
        lines += [
            f'  local-zone: "{name}." redirect',
            f'  local-data: "{name}. {BLOCKED_TTL} IN A {BLOCKED_TARGET_A}"',
            f'  local-data: "{name}. {BLOCKED_TTL} IN AAAA {BLOCKED_TARGET_AAAA}"',
        ]
    for rr in [*default_local_data(), *extra]:
        lines.append(f"  local-data: {_quote(rr)}")
    lines += [f"  {x}" for x in extra_config]
    lines += ["remote-control:", "  control-enable: no", ""]
    return "\n".join(lines)


@dataclass
class UnboundServer:
    """A running unbound; `.upstream` is the "127.0.0.1:PORT" string for gateway.yaml."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    addr4: str = "127.0.0.1"
    addr6: str | None = "::1"
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "unbound.log"

    @property
    def upstream(self) -> str:
        return f"{self.addr4}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def query(self, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
        """dns_query() against this unbound (v4 unless addr= is given)."""
        kw.setdefault("addr", self.addr4)
        return dns_query(name, rdtype, port=self.port, **kw)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, SIGKILL after `timeout`; idempotent."""
        stop_process(self.proc, timeout)

    def __enter__(self) -> UnboundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_answering(server: UnboundServer, timeout: float) -> None:
    pending = [server.addr4] + ([server.addr6] if server.addr6 else [])

    def answering() -> bool:
        if not server.running():
            raise RuntimeError(f"unbound exited with {server.proc.returncode}\n{server.log_text()}")
        for addr in list(pending):
            r = dns_query(ALLOWED, "A", port=server.port, addr=addr, timeout=0.2)
            if r.rcode() == dns.rcode.NOERROR and r.answer:
                pending.remove(addr)
        return not pending

    try:
        wait_for(answering, timeout=timeout, what=f"unbound answering on {pending}",
                 ignore=(dns.exception.DNSException, OSError))
    except AssertionError as exc:
        server.stop()
        raise RuntimeError(f"{exc}\n{server.log_text()}") from None


def start_unbound(
    tmp_path: Path,
    extra_local_data: Sequence[str] = (),
    *,
    extra_config: Sequence[str] = (),
    ipv6: bool = True,
    port: int | None = None,
    timeout: float = 5.0,
    taskset_cpu: int | None = None,
) -> UnboundServer:
    """Start unbound in the foreground (`unbound -d -c FILE`) and wait until it answers.

    `extra_local_data`: more RR strings ("name. TTL IN TYPE RDATA", absolute names); their
    TLDs get a static zone automatically. `extra_config`: raw `server:` lines. Retries on a
    fresh port if the chosen one got taken meanwhile (unless `port` is fixed).
    """
    workdir = Path(tmp_path) / f"unbound-{time.monotonic_ns()}"
    workdir.mkdir(parents=True)
    last_err: Exception | None = None
    for _ in range(1 if port else 3):
        p = port or free_port(v6=ipv6)
        conf = workdir / "unbound.conf"
        conf.write_text(
            render_config(
                workdir,
                p,
                extra_local_data=extra_local_data,
                extra_config=extra_config,
                ipv6=ipv6,
            )
        )
        cmd = [UNBOUND, "-d", "-c", str(conf)]
        if taskset_cpu is not None:
            cmd = ["taskset", "-c", str(taskset_cpu), *cmd]
        with open(workdir / "unbound.log", "wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
            )
        server = UnboundServer(port=p, workdir=workdir, proc=proc, addr6="::1" if ipv6 else None)
        try:
            _wait_answering(server, timeout)
            return server
        except RuntimeError as exc:
            last_err = exc
            server.stop()
            with contextlib.suppress(OSError):
                (workdir / "unbound.log").rename(workdir / f"unbound.failed-{p}.log")
        except BaseException:
            server.stop()  # never leak a server on an unexpected error (or Ctrl-C)
            raise
    raise RuntimeError(f"could not start unbound: {last_err}")


class UnboundFactory(Protocol):
    """Type of the `unbound_factory` fixture (annotate test parameters with it)."""

    def __call__(self, extra_local_data: Sequence[str] = (), **kwargs: Any) -> UnboundServer: ...
