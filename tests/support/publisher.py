"""Run the feed publisher as a real process on loopback, and drive its CLI.

`write_publisher_config(dir)` makes keys + publisher.yaml; `start_publisher(dir)` also starts
`feed serve` and waits for /healthz. Tokens are fixed per gateway id so tests can ack.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.procs import REPO_ROOT, free_port
from tests.support.wait import wait_for

# The real `safegate feed`, as an operator runs it.
FEED_COMMAND: list[str] = [sys.executable, "-m", "gateway", "feed"]
ADMIN_TOKEN = "admin-token-for-tests-0123456789"


def gateway_token(gateway_id: str) -> str:
    return f"token-{gateway_id}-0123456789abcdef"


@dataclass
class PublisherSetup:
    directory: Path
    config: Path
    public_key: Path
    url: str
    admin_token: str | None
    gateway_tokens: dict[str, str] = field(default_factory=dict)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_feed(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`safegate feed ARGS...` as a process; returns the result (check returncode yourself)."""
    return subprocess.run([*FEED_COMMAND, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT, env=_env(), check=False)


def write_publisher_config(directory: Path, *, gateways: Sequence[str] = ("gw-a", "gw-b"),
                           admin_token: str | None = ADMIN_TOKEN,
                           extra: Mapping[str, Any] | None = None,
                           keygen: bool = True) -> PublisherSetup:
    """DIR/publisher.yaml on a free port, DIR/keys/feed.{key,pub}, DIR/var/. `extra` keys
    replace top-level keys of the generated config."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if keygen and not (directory / "keys" / "feed.key").exists():
        result = run_feed("keygen", "--out", str(directory / "keys"))
        assert result.returncode == 0, result.stderr
    port = free_port(v6=False, udp=False)
    tokens = {gw: gateway_token(gw) for gw in gateways}
    cfg: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "database": "var/publisher.sqlite3",
        "signing_key": "keys/feed.key",
        "gateways": [{"id": gw, "token": tok} for gw, tok in tokens.items()],
    }
    if admin_token is not None:
        cfg["admin_token"] = admin_token
    cfg.update(extra or {})
    config = directory / "publisher.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return PublisherSetup(directory, config, directory / "keys" / "feed.pub",
                          f"http://127.0.0.1:{port}", admin_token, tokens)


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class PublisherProcess:
    """A `feed serve` subprocess; stderr goes to DIR/publisher.stderr.log."""

    def __init__(self, setup: PublisherSetup) -> None:
        self.setup = setup
        self.url = setup.url
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = setup.directory / "publisher.stderr.log"

    def start(self, timeout: float = 15.0) -> PublisherProcess:
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [*FEED_COMMAND, "serve", "-c", str(self.setup.config)], stdout=err, stderr=err,
                stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=_env())
        proc = self.proc

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"publisher exited with {proc.returncode}\n"
                                     f"{self.stderr_text()}")
            return self.request("GET", "/healthz", timeout=0.5).status == 200

        try:
            wait_for(healthy, timeout=timeout, what="publisher /healthz 200", ignore=(OSError,))
        except AssertionError as exc:
            if "publisher exited" in str(exc):
                raise
            raise AssertionError(f"{exc}\n{self.stderr_text()}") from None
        return self

    def request(self, method: str, path: str, *, body: Any = None, token: str | None = None,
                headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> HttpResult:
        """One HTTP request; `body` is JSON-encoded unless it is bytes. 4xx/5xx are returned."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=dict(headers or {}))
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return HttpResult(resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as exc:
            return HttpResult(exc.code, dict(exc.headers.items()), exc.read())

    def feed(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`feed VERB -c publisher.yaml ARGS` against this publisher's config."""
        verb, *rest = args
        return run_feed(verb, "-c", str(self.setup.config), *rest)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM; assert a clean exit 0."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"publisher ignored SIGTERM\n{self.stderr_text()}") from None
        assert code == 0, f"publisher exited with {code}\n{self.stderr_text()}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def __enter__(self) -> PublisherProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        """`with start_publisher(dir) as pub:` stops cleanly (asserting exit 0) or kills."""
        if exc[0] is None:
            self.stop()
        else:
            self.kill()


def start_publisher(directory: Path, **kwargs: Any) -> PublisherProcess:
    """write_publisher_config(directory, **kwargs) (unless DIR/publisher.yaml exists), then
    start it and wait for /healthz. Stop it with .stop() (asserts exit 0)."""
    directory = Path(directory)
    config = directory / "publisher.yaml"
    if config.exists() and not kwargs:
        cfg = yaml.safe_load(config.read_text())
        tokens = {g["id"]: g["token"] for g in cfg.get("gateways", [])}
        setup = PublisherSetup(directory, config, directory / "keys" / "feed.pub",
                               f"http://{cfg['listen']}", cfg.get("admin_token"), tokens)
    else:
        setup = write_publisher_config(directory, **kwargs)
    return PublisherProcess(setup).start()
