"""Shared fixtures: a real unbound upstream and real SafeGate processes on loopback.

- `unbound` (session): one authoritative-only unbound serving tests/support/unbound.py's data.
- `unbound_factory` (function): start private instances (extra data, or to stop them for
  upstream-down tests); all stopped at teardown.
- `safegate_factory` (function): start SafeGate processes from a gateway.yaml; all stopped at
  teardown, and a stop that is not a clean exit 0 fails the test.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

# `tests.support` must import the same way from tests, bench/ and `python -m pytest`, whatever
# the pytest import mode: put the repo root first on sys.path.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.postgres import PostgresCluster  # noqa: E402
from tests.support.postgres import available as postgres_available  # noqa: E402
from tests.support.procs import (  # noqa: E402
    SafeGateFactory,
    SafeGateProcess,
    write_gateway_config,
)
from tests.support.unbound import (  # noqa: E402
    UNBOUND,
    UnboundFactory,
    UnboundServer,
    start_unbound,
)


def _require_unbound() -> None:
    if not shutil.which(UNBOUND):
        pytest.fail("unbound is not installed: run `make deps-apt` (Debian package 'unbound')")


@pytest.fixture(scope="session")
def unbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnboundServer]:
    """Session-wide upstream; never stop it in a test (use unbound_factory for that)."""
    _require_unbound()
    server = start_unbound(tmp_path_factory.mktemp("unbound"))
    yield server
    server.stop()


@pytest.fixture
def unbound_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnboundFactory]:
    """`unbound_factory(extra_local_data=(), **start_unbound_kwargs) -> UnboundServer`."""
    _require_unbound()
    started: list[UnboundServer] = []

    def make(extra_local_data: Sequence[str] = (), **kwargs: Any) -> UnboundServer:
        server = start_unbound(tmp_path_factory.mktemp("unbound"), extra_local_data, **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster on loopback for the whole session (publisher tests);
    skipped only where Debian's server binaries are absent."""
    import tempfile

    if not postgres_available():
        pytest.skip("PostgreSQL 15 server binaries are absent (Debian package 'postgresql')")
    # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="safegate-pg-"))).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.directory, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the item so fixtures can tell whether the test failed."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def safegate_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SafeGateFactory]:
    """Start SafeGate processes; stop them all (asserting exit 0) at teardown.

    `safegate_factory(config_path, timeout=20.0, env=None, wait_ready=True)` starts from an
    existing gateway.yaml; `safegate_factory(upstream_port=..., policies=..., lists=...,
    lists_yaml=..., extra=...)` first writes one with write_gateway_config() in a fresh dir.
    If the test failed, each process's stderr is printed (pytest shows it with the failure).
    """
    procs: list[SafeGateProcess] = []
    start_keys = {"timeout", "env", "wait_ready", "log_level", "command"}

    def make(config: Path | None = None, /, **kwargs: Any) -> SafeGateProcess:
        start_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in start_keys}
        if config is None:
            config = write_gateway_config(tmp_path_factory.mktemp("safegate"), **kwargs)
        elif kwargs:
            raise TypeError(f"unexpected arguments with an explicit config: {sorted(kwargs)}")
        proc = SafeGateProcess()
        procs.append(proc)
        return proc.start(config, **start_kw)

    yield make

    rep = getattr(request.node, "rep_call", None)
    failed = rep is not None and rep.failed
    errors: list[str] = []
    for proc in procs:
        if failed:
            print(f"--- safegate pid {proc.proc.pid if proc.proc else '?'} stderr ---")
            print(proc.stderr_text()[-20000:])
        try:
            proc.stop()
        except AssertionError as exc:
            errors.append(str(exc))
        finally:
            proc.kill()
    if errors and not failed:
        pytest.fail("\n\n".join(errors))
