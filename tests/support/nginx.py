"""A real nginx on loopback for tests: `start_nginx(dir, servers, ports)` runs Debian's nginx in
the foreground with the given `server { ... }` blocks and waits until every port accepts."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.wait import wait_for

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def require_nginx() -> None:
    """Fail (not skip) without Debian's nginx: the tests that need it are the deployment."""
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: run `make deps-apt` (Debian package 'nginx-light')")


def start_nginx(directory: Path, servers: str, ports: list[int], *,
                http_extra: str = "", worker_connections: int = 64) -> subprocess.Popen[bytes]:
    """nginx with `servers` (server blocks, or upstream blocks too) inside `http { }`, after
    `http_extra`; the caller terminates it."""
    require_nginx()
    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    temps = "\n".join(f"  {kind}_temp_path {directory}/tmp/{kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"""
user root;
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
{temps}
{http_extra}
{servers}
}}
""")
    proc = subprocess.Popen([NGINX, "-p", str(directory), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def listening() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"nginx exited: {err}{(directory / 'error.log').read_text()}")
        for port in ports:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True

    try:
        wait_for(listening, what="nginx listening", ignore=(OSError,))
    except AssertionError:
        proc.kill()
        raise
    return proc
