"""Debian's nginx as a caching reverse proxy in front of a publisher (docs/feeds-contract.md).

The configuration is the one docs/feeds-contract.md recommends: the serial-addressed feed
(/v1/feed/...) is cached, with one upstream request per URL at a time (proxy_cache_lock,
waiting longer than a long poll lasts), everything else (acks, the legacy /v1/feed) passes
through. The access log records the bytes nginx sent and whether each answer was a cache hit.
"""

from __future__ import annotations

import resource
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import free_port
from tests.support.wait import wait_for

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LOG_FORMAT = "$request_method $uri $status $body_bytes_sent $upstream_cache_status"


def config_text(directory: Path, port: int, upstream: str, worker_connections: int = 512,
                workers: int = 1) -> str:
    """nginx.conf: listen on 127.0.0.1:port, proxy to `upstream` (host:port)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = worker_connections * 2 + 64
    if hard != resource.RLIM_INFINITY:
        nofile = min(nofile, hard)   # beyond the hard limit nginx could not raise it anyway
    return f"""
user root;
worker_processes {workers};
worker_rlimit_nofile {nofile};
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
  log_format feed '{LOG_FORMAT}';
  access_log {directory}/access.log feed;
  client_body_temp_path {directory}/tmp/body;
  proxy_temp_path {directory}/tmp/proxy;
  fastcgi_temp_path {directory}/tmp/fastcgi;
  uwsgi_temp_path {directory}/tmp/uwsgi;
  scgi_temp_path {directory}/tmp/scgi;
  proxy_cache_path {directory}/cache levels=1:2 keys_zone=feed:10m max_size=4g inactive=7d
                   use_temp_path=off;
  upstream publisher {{ server {upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096 reuseport;   # spread 10,000 clients evenly
    keepalive_requests 100000;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_read_timeout 120s;
    proxy_connect_timeout 5s;   # a stalled publisher: fail (the gateway retries), hold no fd
    location /v1/feed/ {{
      proxy_pass http://publisher;
      proxy_cache feed;
      proxy_cache_key $uri$is_args$args;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 120s;
      proxy_cache_lock_age 120s;
      add_header X-Cache-Status $upstream_cache_status always;
    }}
    location = /v1/feed {{          # exact: else nginx redirects it to /v1/feed/
      proxy_pass http://publisher;
    }}
    location / {{
      proxy_pass http://publisher;
      client_max_body_size 8m;
    }}
  }}
}}
"""


@dataclass
class CachingNginx:
    directory: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cache_files(self) -> list[Path]:
        return sorted(p for p in (self.directory / "cache").rglob("*") if p.is_file())

    def log_lines(self) -> list[list[str]]:
        """The access log (method, uri, status, bytes, cache status) per request so far."""
        path = self.directory / "access.log"
        if not path.exists():
            return []
        return [line.split() for line in path.read_text().splitlines() if line.strip()]

    def bytes_sent(self, prefix: str = "/v1/feed/") -> int:
        return sum(int(f[3]) for f in self.log_lines()
                   if len(f) >= 4 and f[1].startswith(prefix))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)   # graceful: the access log is flushed
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_caching_nginx(directory: Path, upstream: str, *, worker_connections: int = 512,
                        workers: int = 1) -> CachingNginx:
    """Start nginx (foreground child) in `directory`; wait until it accepts connections."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tmp").mkdir(exist_ok=True)
    port = free_port(v6=False, udp=False)
    conf = directory / "nginx.conf"
    conf.write_text(config_text(directory, port, upstream, worker_connections, workers))
    proc = subprocess.Popen([NGINX, "-p", str(directory), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def listening() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            log = directory / "error.log"
            raise RuntimeError(f"nginx exited: {err}{log.read_text() if log.exists() else ''}")
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True

    try:
        wait_for(listening, what="nginx listening", ignore=(OSError,))
    except BaseException:
        proc.kill()
        raise
    return CachingNginx(directory, port, proc)
