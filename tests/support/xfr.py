"""Zone transfer tests: a publisher serving its RPZ zone, and real secondaries (Debian's
unbound and BIND's named) transferring it on loopback.

The config snippets here are the ones docs/compliance.md shows; keep them in step.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import dns.exception
import dns.message
import dns.query
import dns.rcode
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import dns_query, free_port, stop_process
from tests.support.publisher import PublisherProcess, start_publisher
from tests.support.unbound import ALLOWED, UNBOUND, UnboundServer
from tests.support.wait import wait_for

ZONE = "rpz.safegate.example"
TSIG_NAME = "xfr-key"
# A fixed test key (base64 of 32 bytes); a real one comes from `tsig-keygen`.
TSIG_SECRET = "c2FmZWdhdGUtdGVzdC1rZXktMDEyMzQ1Njc4OWFiY2RlZg=="
WRONG_SECRET = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMDE="
NAMED = shutil.which("named") or "/usr/sbin/named"
PDNS_RECURSOR = shutil.which("pdns_recursor") or "/usr/sbin/pdns_recursor"
# The requirement: a change reaches the secondary within 5 s of being published.
SPEC_SECONDS = 5.0


@dataclass
class XfrPublisher:
    pub: PublisherProcess
    port: int

    def metric(self, name: str, **labels: str) -> float:
        text = self.pub.request("GET", "/metrics").body.decode()
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def add(self, value: str, eid: str) -> int:
        """`feed add` a mandatory domain entry; returns the new serial."""
        r = self.pub.feed("add", "--id", eid, "--type", "domain", "--value", value,
                          "--category", "csam", "--mandatory", "--authority", "Authority",
                          "--decision", "7/QD", "--date", "2026-11-20")
        assert r.returncode == 0, r.stderr
        return _serial(r.stdout + r.stderr)

    def remove(self, eid: str) -> int:
        r = self.pub.feed("remove", "--id", eid, "--force")  # 1 of 1: past max_change
        assert r.returncode == 0, r.stderr
        return _serial(r.stdout + r.stderr)

    def wait_serial(self, serial: int) -> None:
        """Until the zone the publisher serves is at `serial` (it follows the store)."""
        wait_for(lambda: self.metric("safegate_publisher_xfr_serial") == serial, timeout=10,
                 what=f"zone at serial {serial}")


def _serial(output: str) -> int:
    found = re.search(r"serial (\d+)", output)
    assert found, output
    return int(found.group(1))


def start_xfr_publisher(directory: Path, *, allow: Sequence[str] = ("127.0.0.1/32", "::1"),
                        notify: Sequence[str] = (), tsig: bool = False,
                        limits: Mapping[str, int] | None = None,
                        ipv6: bool = False) -> XfrPublisher:
    """A publisher with `zone_transfer:` on a free loopback port (TCP and UDP; with `ipv6`
    on ::1 as well)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port(v6=ipv6)
    listen = [f"127.0.0.1:{port}"] + ([f"[::1]:{port}"] if ipv6 else [])
    zt: dict[str, Any] = {"listen": listen, "zone": ZONE, "allow": list(allow)}
    if notify:
        zt["notify"] = list(notify)
    if tsig:
        (directory / "xfr.key").write_text(bind_key(TSIG_SECRET))
        zt["tsig"] = {"name": TSIG_NAME, "algorithm": "hmac-sha256",
                      "secret_file": "xfr.key"}
    extra: dict[str, Any] = {"zone_transfer": zt}
    if limits:
        extra["limits"] = dict(limits)
    return XfrPublisher(start_publisher(directory, extra=extra), port)


def bind_key(secret: str, name: str = TSIG_NAME) -> str:
    """A key clause as `tsig-keygen -a hmac-sha256 NAME` prints it (BIND includes it as is,
    and the publisher's secret_file accepts it)."""
    return f'key "{name}" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n'


def unbound_config(workdir: Path, port: int, primary_port: int, upstream_port: int) -> str:
    """unbound.conf: a resolver (forwarding to the test upstream) with the publisher's RPZ
    zone as a secondary, NOTIFY accepted from the publisher."""
    return f"""server:
  interface: 127.0.0.1@{port}
  port: {port}
  do-ip6: no
  chroot: ""
  username: ""
  directory: "{workdir}"
  pidfile: "{workdir / 'unbound.pid'}"
  logfile: ""
  use-syslog: no
  verbosity: 1
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "respip iterator"
  # unbound serves test. and invalid. itself (special-use names): ask the upstream instead
  local-zone: "test." nodefault
  local-zone: "invalid." nodefault
  domain-insecure: "."
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{upstream_port}
rpz:
  name: {ZONE}
  primary: 127.0.0.1@{primary_port}
  allow-notify: 127.0.0.1
  rpz-log: yes
remote-control:
  control-enable: no
"""


def start_unbound_secondary(tmp_path: Path, port: int, primary_port: int,
                            upstream_port: int, timeout: float = 10.0) -> UnboundServer:
    """Debian's unbound as an ISP resolver whose RPZ comes from the publisher."""
    workdir = tmp_path / f"unbound-rpz-{time.monotonic_ns()}"
    workdir.mkdir(parents=True)
    conf = workdir / "unbound.conf"
    conf.write_text(unbound_config(workdir, port, primary_port, upstream_port))
    with open(workdir / "unbound.log", "wb") as log:
        proc = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)
    server = UnboundServer(port=port, workdir=workdir, proc=proc, addr6=None)

    def answering() -> bool:
        if not server.running():
            raise AssertionError(f"unbound exited\n{server.log_text()}")
        return answer_of(port, ALLOWED)[0] == "NOERROR"

    return _started(server, answering, timeout, "the RPZ unbound answering")


class _Stoppable(Protocol):
    def stop(self, timeout: float = ...) -> None: ...


_S = TypeVar("_S", bound=_Stoppable)


def _started(server: _S, answering: Callable[[], bool], timeout: float, what: str) -> _S:
    """`server` once `answering()` holds; stopped, not left running, if it never does."""
    try:
        wait_for(answering, timeout=timeout, what=what,
                 ignore=(dns.exception.DNSException, OSError))
    except BaseException:
        server.stop()
        raise
    return server


def answer_of(port: int, name: str, *, tcp: bool = False) -> tuple[str, list[str]]:
    """(RCODE text, A addresses) of `name` at the resolver on `port`."""
    r = dns_query(name, "A", port=port, tcp=tcp, timeout=1.0)
    return dns.rcode.to_text(r.rcode()), sorted(
        rd.to_text() for rrs in r.answer for rd in rrs if rrs.rdtype == 1)


def wait_answer(port: int, name: str, rcode: str, timeout: float = SPEC_SECONDS) -> None:
    wait_for(lambda: answer_of(port, name)[0] == rcode, timeout=timeout,
             what=f"{name} answered {rcode} at port {port}",
             ignore=(dns.exception.DNSException, OSError))


# ---------------------------------------------------------------- BIND


@dataclass
class NamedServer:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        p = self.workdir / "named.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.proc, timeout)

    def __enter__(self) -> NamedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def named_config(workdir: Path, port: int, primary_port: int, upstream_port: int) -> str:
    """named.conf: a resolver forwarding to the test unbound, with the RPZ zone as a secondary
    transferred with TSIG and applied as response-policy."""
    return f"""include "{workdir / 'xfr.key'}";
options {{
  directory "{workdir}";
  pid-file "{workdir / 'named.pid'}";
  listen-on port {port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion yes;
  allow-query {{ 127.0.0.1; }};
  forwarders {{ 127.0.0.1 port {upstream_port}; }};
  forward only;
  dnssec-validation no;
  notify no;
  // BIND applies a new RPZ version at most every 60 s by default: 0 applies each at once
  response-policy {{ zone "{ZONE}" min-update-interval 0; }};
}};
zone "{ZONE}" {{
  type secondary;
  primaries {{ 127.0.0.1 port {primary_port} key "{TSIG_NAME}"; }};
  allow-notify {{ 127.0.0.1; }};
  file "{workdir / 'rpz.db'}";
}};
controls {{ }};
logging {{
  channel log {{ file "{workdir / 'named.log'}"; severity info; print-time yes; }};
  category default {{ log; }};
  category xfer-in {{ log; }};
  category notify {{ log; }};
  category rpz {{ log; }};
}};
"""


def start_named(tmp_path: Path, primary_port: int, upstream_port: int, *,
                port: int | None = None, timeout: float = 20.0) -> NamedServer:
    """BIND's named in the foreground as a recursive resolver with the publisher's zone."""
    workdir = tmp_path / f"named-{time.monotonic_ns()}"
    workdir.mkdir(parents=True)
    (workdir / "xfr.key").write_text(bind_key(TSIG_SECRET))
    port = port or free_port(v6=False)
    conf = workdir / "named.conf"
    conf.write_text(named_config(workdir, port, primary_port, upstream_port))
    check = subprocess.run(["named-checkconf", str(conf)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    with open(workdir / "named.stderr", "wb") as err:
        proc = subprocess.Popen([NAMED, "-g", "-u", "root", "-c", str(conf)], stdout=err,
                                stderr=err, stdin=subprocess.DEVNULL, cwd=workdir)
    server = NamedServer(port, workdir, proc)

    def answering() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"named exited {proc.returncode}\n"
                                 f"{(workdir / 'named.stderr').read_text(errors='replace')}")
        q = dns.message.make_query(ZONE, "SOA")
        return dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5).rcode() == 0

    return _started(server, answering, timeout, "named serving the RPZ zone")


# ---------------------------------------------------------------- PowerDNS Recursor


@dataclass
class PdnsRecursor:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    socket_dir: Path

    def log_text(self) -> str:
        p = self.workdir / "recursor.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.proc, timeout)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> PdnsRecursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pdns_config(workdir: Path, port: int, upstream_port: int, socket_dir: Path) -> str:
    """recursor.conf: forwarding to the test upstream (loopback, so dont-query is emptied),
    the RPZ from rpz.lua, a packet cache short enough not to hide RPZ changes."""
    return f"""local-address=127.0.0.1
local-port={port}
allow-from=127.0.0.0/8
forward-zones-recurse=.=127.0.0.1:{upstream_port}
dont-query=
security-poll-suffix=
lua-config-file={workdir / 'rpz.lua'}
socket-dir={socket_dir}
dnssec=off
daemon=no
write-pid=no
threads=1
# the packet cache answers before RPZ is consulted: a name asked before it was blocked would
# resolve from it until the answer's TTL ends. A few seconds keep most of its benefit.
packetcache-ttl=1
packetcache-servfail-ttl=1
"""


def pdns_rpz_lua(primary_port: int) -> str:
    """rpz.lua: PowerDNS Recursor 4.8 ignores NOTIFY for RPZ zones, so `refresh` (seconds)
    makes it check the SOA that often; a change then comes by IXFR, signed with the key."""
    return (f'rpzPrimary("127.0.0.1:{primary_port}", "{ZONE}", {{refresh=1, '
            f'tsigname="{TSIG_NAME}", tsigalgo="hmac-sha256", tsigsecret="{TSIG_SECRET}"}})\n')


def start_pdns_recursor(tmp_path: Path, primary_port: int, upstream_port: int,
                        timeout: float = 20.0) -> PdnsRecursor:
    workdir = tmp_path / f"pdns-{time.monotonic_ns()}"
    workdir.mkdir(parents=True)
    port = free_port(v6=False)
    # its control socket path must fit a sockaddr_un (108 bytes): pytest's paths do not
    socket_dir = Path(tempfile.mkdtemp(prefix="pdns-"))
    (workdir / "recursor.conf").write_text(pdns_config(workdir, port, upstream_port,
                                                       socket_dir))
    (workdir / "rpz.lua").write_text(pdns_rpz_lua(primary_port))
    with open(workdir / "recursor.log", "wb") as log:
        proc = subprocess.Popen([PDNS_RECURSOR, f"--config-dir={workdir}"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir)
    server = PdnsRecursor(port, workdir, proc, socket_dir)

    def answering() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"pdns_recursor exited {proc.returncode}\n"
                                 f"{server.log_text()}")
        return answer_of(port, ALLOWED)[0] == "NOERROR" and "RPZ load completed" in \
            server.log_text()

    return _started(server, answering, timeout, "pdns_recursor with the RPZ loaded")
