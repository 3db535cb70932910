"""Two listeners on one address, and a listener the machine cannot give: found by walking the
journeys (issue #14). `admin:` turned on with its default port in the shipped ISP example
(whose block page is on 8081) passed `safegate check`, then `safegate run` died with a bind
traceback; a second `make run` printed "OSError: [Errno 98] Address already in use" without
saying which address."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.cli import check, config
from tests.support.procs import REPO_ROOT, free_port

ISP = REPO_ROOT / "deploy" / "example" / "isp" / "gateway.yaml"


def _line_of(cfg: Path, text: str) -> int:
    for n, line in enumerate(cfg.read_text().splitlines(), 1):
        if line.startswith(text):
            return n
    raise AssertionError(f"{text!r} not in {cfg}")


def test_admin_on_the_block_pages_port_is_a_check_error(tmp_path: Path) -> None:
    """The ISP example with `admin:` added as docs/admin.md shows it (default listen)."""
    cfg = tmp_path / "isp" / "gateway.yaml"
    cfg.parent.mkdir()
    text = ISP.read_text()
    for rel in ("policies", "subscribers.csv"):     # the example's own files, by absolute path
        (cfg.parent / rel).symlink_to(ISP.parent / rel)
    text = text.replace('"../../../', f'"{REPO_ROOT}/').replace(
        'state_dir: "../../../var/isp/"', f'state_dir: "{tmp_path}/var/"')
    cfg.write_text(text + "admin:\n")
    web = yaml.safe_load(text)["web"]["listen"]
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip().splitlines()[-1] == (
        f"{cfg}:{_line_of(cfg, 'admin:')}: admin.listen {web} is also web.listen ({web}): "
        "give each listener its own port")


@pytest.mark.parametrize(("web", "metrics", "clash"), [
    ("127.0.0.1:{p}", "127.0.0.1:{p}", True),
    ("127.0.0.1:{p}", "0.0.0.0:{p}", True),       # the wildcard takes every IPv4 address
    ("127.0.0.1:{p}", "[::]:{p}", False),         # [::] is bound IPv6-only
    ("127.0.0.1:{p}", "127.0.0.2:{p}", False),
])
def test_listener_overlap_rules(tmp_path: Path, web: str, metrics: str, clash: bool) -> None:
    port = free_port(v6=False, udp=False)
    cfg = config(tmp_path, extra={"web": {"listen": web.format(p=port)},
                                  "metrics": {"listen": metrics.format(p=port)}})
    rc, _, err = check(cfg)
    if clash:
        assert rc == 1
        assert f"metrics.listen {metrics.format(p=port)} is also web.listen" in err
    else:
        assert rc == 0, err


def test_run_on_a_taken_dns_port_says_which_address(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    dns_port = int(yaml.safe_load(cfg.read_text())["dns"]["listen"][0].rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", dns_port))
        holder.listen()
        r = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(cfg)],
                           capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
                           check=False)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "safegate run: cannot listen: error while attempting to bind on address "
        f"('127.0.0.1', {dns_port}) (DNS over TCP): Address already in use; another program "
        "(or another SafeGate) listens there: `sudo ss -ltnup` shows which")


def test_a_steered_proxy_listener_on_the_block_pages_port_is_a_check_error(
        tmp_path: Path) -> None:
    """docs/proxy.md's example steers http to 0.0.0.0:80, where the installed template's
    block page listens: the proxy process could never bind it."""
    port = free_port(v6=False, udp=False)
    cfg = config(tmp_path, extra={"web": {"listen": f"127.0.0.1:{port}"},
                                  "proxy": {"enabled": True,
                                            "intercept_listen": {"http": f"0.0.0.0:{port}"}}})
    rc, _, err = check(cfg)
    assert rc == 1
    line = _line_of(cfg, "    http: ")
    assert err.strip().splitlines()[-1] == (
        f"{cfg}:{line}: proxy.intercept_listen.http 0.0.0.0:{port} is also web.listen "
        f"(127.0.0.1:{port}): give each listener its own port")
