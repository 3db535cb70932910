"""A real front end for tests: Debian's dnsdist on loopback, in front of SafeGate.

It sends the real client's identity the two ways ISPs deploy it: a PROXY protocol v2 header
(`useProxyProtocol`) or an EDNS Client Subnet option (`useClientSubnet`), from its own address
`source` (which the test lists, or not, in dns.trusted_frontends).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from tests.support.wait import wait_for

DNSDIST = shutil.which("dnsdist") or "/usr/bin/dnsdist"


@dataclass
class Dnsdist:
    proc: subprocess.Popen[bytes]
    address: str
    port: int
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_dnsdist(directory: Path, *, listen: str, port: int, backends: list[tuple[str, int]],
                  source: str, proxy_protocol: bool = False, ecs: bool = False,
                  timeout: float = 10.0) -> Dnsdist:
    """dnsdist listening on listen:port (UDP+TCP), forwarding to SafeGate `backends`."""
    servers = []
    for host, bport in backends:
        opts = [f'address="{host}:{bport}"', f'source="{source}"', "checkInterval=1",
                "maxCheckFailures=3", "tcpConnectTimeout=2"]
        if proxy_protocol:
            opts.append("useProxyProtocol=true")
        if ecs:
            opts.append("useClientSubnet=true")
        servers.append("newServer({" + ", ".join(opts) + "})")
    conf = "\n".join([
        f'setLocal("{listen}:{port}")',
        'setACL({"127.0.0.0/8", "::1/128"})',
        "setECSSourcePrefixV4(32)",
        "setECSSourcePrefixV6(128)",
        "setECSOverride(true)",
        'setServerPolicy(firstAvailable)',
        'setSecurityPollSuffix("")',   # no query to the vendor's domain: loopback only
        *servers,
    ]) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "dnsdist.conf"
    path.write_text(conf)
    return launch_dnsdist(path, directory / "dnsdist.log", listen=listen, port=port,
                          timeout=timeout)


def launch_dnsdist(config: Path, log: Path, *, listen: str, port: int,
                   env: Mapping[str, str] | None = None, timeout: float = 10.0) -> Dnsdist:
    """Run dnsdist with an existing config (e.g. deploy/dnsdist/dnsdist.conf, whose settings
    come from `env`) and wait until it answers on listen:port (any answer, SERVFAIL too)."""
    proc = subprocess.Popen([DNSDIST, "--supervised", "--disable-syslog", "-C", str(config)],
                            stdin=subprocess.DEVNULL, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    front = Dnsdist(proc, listen, port, log)
    q = dns.message.make_query("dnsdist-up.test", "A")

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"dnsdist exited: {log.read_text()[-2000:]}")
        dns.query.udp(q, listen, port=port, timeout=0.5)
        return True

    try:
        wait_for(answers, timeout=timeout, interval=0.1, what="dnsdist answers",
                 ignore=(dns.exception.Timeout, OSError))
    except AssertionError as exc:
        front.stop()
        raise RuntimeError(f"{exc}: {log.read_text()[-2000:]}") from None
    return front
