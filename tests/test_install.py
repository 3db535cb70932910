"""deploy/install.sh run for real into a throwaway root, and what it installs, started.

The root mimics the target machine: its own etc/passwd (the installer adds the `safegate`
user there with `useradd --prefix`), merged /usr, systemd's unit directory and the binaries
the units name (hard links to the host's), so `systemd-analyze verify --root` checks the units
as systemd on that machine would. Dependencies come from this checkout's venv through
`--deps-from` (a .pth file) to stay fast and offline; SafeGate itself is pip-installed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.procs import REPO_ROOT, SafeGateProcess, dig, free_port
from tests.support.unbound import ALLOWED, ALLOWED_A, UnboundServer

INSTALL = REPO_ROOT / "deploy" / "install.sh"
UNITS = ("safegate.service", "safegate-healthcheck.service", "safegate-healthcheck.timer",
         "safegate-restart.service")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
IS_ROOT = os.geteuid() == 0
# The lifecycle tests below chown files and add a user, as the installer does on a machine.
needs_root = pytest.mark.skipif(not IS_ROOT, reason="the installer creates users and chowns: root")


@dataclass
class Installed:
    root: Path
    output: str

    def path(self, target: str) -> Path:
        return self.root / target.lstrip("/")

    @property
    def python(self) -> Path:
        return self.path("/opt/safegate/bin/python")

    @property
    def safegate(self) -> Path:
        return self.path("/opt/safegate/bin/safegate")


def _mirror(root: Path, path: Path) -> None:
    """Put `path` (and every symlink on the way to it) inside `root`, as the host has it."""
    seen = 0
    while True:
        inside = root / str(path).lstrip("/")
        inside.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            target = os.readlink(path)
            if not inside.is_symlink():
                inside.symlink_to(target)
            path = (path.parent / target) if not os.path.isabs(target) else Path(target)
            seen += 1
            assert seen < 20, f"symlink loop at {path}"
            continue
        if not inside.exists():
            try:
                os.link(path, inside)
            except OSError:
                shutil.copy2(path, inside)
        return


def make_target_root(root: Path) -> Path:
    """A minimal Debian-like root for the installer and systemd-analyze (see module doc)."""
    (root / "etc").mkdir(parents=True)
    # A fresh system's user database (root only), never a copy of the host's.
    for name, line in (("passwd", "root:x:0:0:root:/root:/bin/bash"), ("group", "root:x:0:"),
                       ("shadow", "root:*:19000:0:99999:7:::"), ("gshadow", "root:*::")):
        (root / "etc" / name).write_text(line + "\n")
        (root / "etc" / name).chmod(0o640 if "shadow" in name else 0o644)
    for d in ("usr/bin", "usr/sbin", "usr/lib"):
        (root / d).mkdir(parents=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        (root / link).symlink_to(target)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    # Ubuntu and Raspberry Pi OS: resolved's stub listener holds 127.0.0.53:53.
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    for tool in ("/usr/bin/kill", "/usr/bin/systemctl"):
        _mirror(root, Path(tool))
    return root


def run_installer(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    site = sysconfig.get_path("purelib")
    proc = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--no-systemctl", "--deps-from", site,
         "--python", _base_python(), *args],
        capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "PIP_NO_INPUT": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"install.sh {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def _base_python() -> str:
    """The interpreter this venv was made from: what a target's python3 would be."""
    base = getattr(sys, "_base_executable", sys.executable)
    return str(base)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = make_target_root(tmp_path_factory.mktemp("target") / "root")
    host_passwd = Path("/etc/passwd").read_bytes()
    proc = run_installer(root, "--address", "192.0.2.80", "--free-port-53")
    assert Path("/etc/passwd").read_bytes() == host_passwd, "the host's users are untouched"
    inst = Installed(root, proc.stdout + proc.stderr)
    # The distribution's python3, which the venv's bin/python links to, exists on a target.
    _mirror_venv_python(root, inst.python)
    yield inst


def _mirror_venv_python(root: Path, venv_python: Path) -> None:
    """Replicate the host side of the venv's interpreter symlinks inside the root."""
    target = os.readlink(venv_python)
    link = venv_python if os.path.isabs(target) else venv_python.parent / target
    while link.is_symlink():
        target = os.readlink(link)
        if os.path.isabs(target):
            _mirror(root, Path(target))
            return
        link = link.parent / target


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def _ids(root: Path) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == "safegate":
            return int(f[2]), int(f[3])
    raise AssertionError("no safegate user in the target's etc/passwd")


# ---------------------------------------------------------------- what is installed


@needs_root
def test_layout_users_and_modes(installed: Installed) -> None:
    r = installed
    uid, gid = _ids(r.root)
    assert uid < 1000, "a system user"
    passwd = next(x for x in (r.root / "etc/passwd").read_text().splitlines()
                  if x.startswith("safegate:"))
    assert passwd.endswith(":/var/lib/safegate:/usr/sbin/nologin")

    conf = r.path("/etc/safegate")
    assert (_mode(conf), conf.stat().st_uid, conf.stat().st_gid) == (0o750, 0, gid)
    for f in [conf / "gateway.yaml", conf / "policies/school.yaml",
              conf / "blocklists/lists.yaml", conf / "blocklists/csam.rpz"]:
        assert (_mode(f), f.stat().st_uid, f.stat().st_gid) == (0o640, 0, gid), f
    assert (conf / "policies/school.yaml").read_bytes() == (
        REPO_ROOT / "policies/school.yaml").read_bytes()
    shipped = sorted(p.name for p in (REPO_ROOT / "blocklists").iterdir() if p.is_file())
    assert sorted(p.name for p in (conf / "blocklists").iterdir()) == shipped

    state = r.path("/var/lib/safegate")
    assert (_mode(state), state.stat().st_uid, state.stat().st_gid) == (0o750, uid, gid)

    for unit in UNITS:
        u = r.path(f"/etc/systemd/system/{unit}")
        assert u.read_bytes() == (REPO_ROOT / "deploy/systemd" / unit).read_bytes()
        assert _mode(u) == 0o644
    assert _mode(r.path("/opt/safegate/libexec/safegate-health")) == 0o755
    assert r.path("/opt/safegate/share/doc/safegate/install.md").exists()
    # The editor modeline of /etc/safegate/gateway.yaml names a schema that is installed.
    first = (conf / "gateway.yaml").read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=/opt/safegate/"), first
    schema = r.path(first.split("$schema=", 1)[1])
    assert schema.read_bytes() == (REPO_ROOT / "docs/schema/gateway.schema.json").read_bytes()
    for name in ("policy", "lists"):
        assert r.path(f"/opt/safegate/share/doc/safegate/schema/{name}.schema.json").exists()
    assert "(skipped) systemctl enable --now safegate.service" in r.output

    # The production template: DNS on :53, web on :80 answering the given address.
    cfg = yaml.safe_load((conf / "gateway.yaml").read_text())
    assert cfg["dns"]["listen"] == ["0.0.0.0:53", "[::]:53"]
    assert cfg["web"] == {"listen": "0.0.0.0:80", "public_address": ["192.0.2.80"]}
    assert cfg["metrics"] == {"listen": "127.0.0.1:9153"}
    assert cfg["state_dir"] == "/var/lib/safegate"


def test_installed_package_is_the_venvs_own(installed: Installed) -> None:
    """The venv runs its own copy of SafeGate, not this checkout."""
    out = subprocess.run(
        [str(installed.python), "-c", "import gateway; print(gateway.__file__)"],
        capture_output=True, text=True, check=True, cwd="/", env={"PATH": "/usr/bin:/bin"},
    ).stdout.strip()
    assert out.startswith(str(installed.path("/opt/safegate/lib"))), out


def test_installed_check_passes_on_installed_config(installed: Installed) -> None:
    proc = subprocess.run(
        [str(installed.safegate), "check", "-c", str(installed.path("/etc/safegate/gateway.yaml"))],
        capture_output=True, text=True, timeout=60, cwd="/", check=False)
    assert proc.returncode == 0, proc.stderr
    assert "gateway.yaml: OK: 5 tiers, 6 networks" in proc.stdout


# ---------------------------------------------------------------- systemd units


def _verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE, "systemd-analyze missing: Debian package 'systemd' (make deps-apt)"
    paths = [str(root / "etc/systemd/system" / u) for u in units]
    return subprocess.run([SYSTEMD_ANALYZE, "verify", f"--root={root}", *paths],
                          capture_output=True, text=True, timeout=60, check=False)


def test_units_verify_clean(installed: Installed) -> None:
    """systemd-analyze verify: every key known, every value parsed, every command present
    in the target root, every dependency (network-online.target, the timer) resolvable."""
    proc = _verify(installed.root, *UNITS)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_units_verify_catches_a_broken_unit(installed: Installed) -> None:
    """Control: the same check complains about a typo'd key and a bad value."""
    unit = installed.path("/etc/systemd/system/broken-copy.service")
    text = (REPO_ROOT / "deploy/systemd/safegate.service").read_text()
    unit.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=bogus")
                        .replace("Restart=on-failure", "Restrat=on-failure"))
    try:
        proc = _verify(installed.root, "broken-copy.service")
    finally:
        unit.unlink()
    assert "Unknown key 'Restrat'" in proc.stderr
    assert "Failed to parse protect system value" in proc.stderr


@pytest.mark.parametrize(("unit", "threshold"), [
    ("safegate.service", 25), ("safegate-healthcheck.service", 30),
    ("safegate-restart.service", 20)])
def test_units_hardening_score(installed: Installed, unit: str, threshold: int) -> None:
    """systemd's own exposure score, offline: at most threshold/10 (0 locked down, 10 open)."""
    assert SYSTEMD_ANALYZE
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", f"--root={installed.root}",
         f"--threshold={threshold}",
         str(installed.path(f"/etc/systemd/system/{unit}"))],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr


def test_service_unit_contract() -> None:
    """What the issue requires of the unit, read as systemd reads it (last value wins)."""
    keys: dict[str, str] = {}
    for line in (REPO_ROOT / "deploy/systemd/safegate.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            keys[k] = v
    assert keys["User"] == "safegate"
    assert keys["AmbientCapabilities"] == keys["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert keys["ExecStartPre"] == "/opt/safegate/bin/safegate check -c /etc/safegate/gateway.yaml"
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert keys["ProtectSystem"] == "strict" and keys["ReadWritePaths"] == "/var/lib/safegate"
    assert keys["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"
    assert keys["Restart"] == "on-failure" and keys["NoNewPrivileges"] == "yes"
    # "started" means answering: READY=1 once lists are loaded and every listener is up, and
    # a watchdog fed from the event loop (tests/test_sdnotify.py).
    assert keys["Type"] == "notify" and keys["NotifyAccess"] == "main"
    assert int(keys["WatchdogSec"]) > 0


# ---------------------------------------------------------------- the installed gateway runs


def _loopback_config(inst: Installed, upstream: UnboundServer) -> tuple[Path, dict[str, Any]]:
    """The installed gateway.yaml on unprivileged loopback ports, state in the root."""
    cfg = yaml.safe_load(inst.path("/etc/safegate/gateway.yaml").read_text())
    port = free_port()
    cfg["dns"]["listen"] = [f"127.0.0.1:{port}", f"[::1]:{port}"]
    cfg["dns"]["upstreams"] = [upstream.upstream]
    cfg["web"] = {"listen": f"127.0.0.1:{free_port(v6=False, udp=False)}"}
    cfg["metrics"] = {"listen": f"127.0.0.1:{free_port(v6=False, udp=False)}"}
    cfg["state_dir"] = str(inst.path("/var/lib/safegate"))
    path = inst.path("/etc/safegate/gateway-loopback.yaml")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, cfg


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_installed_gateway_answers_through_unbound(
        installed: Installed, unbound: UnboundServer) -> None:
    config, cfg = _loopback_config(installed, unbound)
    health = [str(installed.python), str(installed.path("/opt/safegate/libexec/safegate-health")),
              "-c", str(config)]
    gw = SafeGateProcess()
    try:
        gw.start(config, command=[str(installed.safegate), "--log-level", "info", "run", "-c",
                                  str(config)],
                 env={"PYTHONPATH": ""}, wait_ready=False)
        # The unit's ExecStartPost: returns once /readyz says ready.
        ready = subprocess.run([*health, "--wait-ready", "30"], capture_output=True, text=True,
                               timeout=40, check=False)
        assert ready.returncode == 0, ready.stderr + gw.stderr_text()
        port = gw.dns_port
        allowed = dig("@127.0.0.1", "-p", str(port), ALLOWED, "A", "+short", "+time=2")
        assert allowed.split() == [ALLOWED_A]
        blocked = dig("@::1", "-p", str(port), "www.csam-test.invalid", "A", "+time=2")
        assert "EDE: 16 (Censored)" in blocked and "csam" in blocked
        # The timer's liveness check.
        live = subprocess.run(health, capture_output=True, text=True, timeout=30, check=False)
        assert live.returncode == 0, live.stderr
        assert any(p.name.endswith(".idx") or p.is_file()
                   for p in installed.path("/var/lib/safegate").iterdir()), "state in state_dir"
        rss = _rss_kib(gw.pid)
        print(f"installed gateway RSS with the shipped lists: {rss / 1024:.1f} MiB")
        assert rss < 200 * 1024, f"RSS {rss} KiB: too much for a 1 GB Raspberry Pi"
        gw.stop()
    finally:
        gw.kill()
    # Nothing listens any more: the liveness check fails and says why.
    dead = subprocess.run([*health, "--tries", "2", "--gap", "0.1"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert dead.returncode == 1
    assert f"{cfg['metrics']['listen']}: not answering after 2 tries" in dead.stderr


def test_health_probe_reports_a_broken_config(installed: Installed, tmp_path: Path) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_text("metrics:\n  listen: 'nowhere'\n")
    proc = subprocess.run([str(installed.python),
                           str(installed.path("/opt/safegate/libexec/safegate-health")),
                           "-c", str(bad)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"safegate-health: {bad}:")
    assert "Traceback" not in proc.stderr


def test_free_port_53_writes_the_resolved_dropin(installed: Installed) -> None:
    """--free-port-53 (the module's install uses it) on an Ubuntu-like stub resolv.conf."""
    dropin = installed.path("/etc/systemd/resolved.conf.d/safegate.conf").read_text()
    assert "[Resolve]\nDNSStubListener=no\n" in dropin
    assert os.readlink(installed.path("/etc/resolv.conf")) == "/run/systemd/resolve/resolv.conf"
    assert "(skipped) systemctl try-restart systemd-resolved.service" in installed.output


# ---------------------------------------------------------------- upgrade and uninstall
# These change the installed tree: they run last (pytest keeps file order).


@needs_root
def test_upgrade_keeps_config_and_restarts_only_when_check_passes(installed: Installed) -> None:
    policy = installed.path("/etc/safegate/policies/school.yaml")
    edited = policy.read_bytes().replace(b'cidrs: ["10.1.0.0/24"',
                                         b'cidrs: ["10.9.0.0/24"') + b"# edited by the school\n"
    assert edited != policy.read_bytes()
    policy.write_bytes(edited)

    up = run_installer(installed.root, "--upgrade")
    assert policy.read_bytes() == edited, "an upgrade never touches the school's files"
    dist = policy.with_name("school.yaml.dist")
    assert dist.read_bytes() == (REPO_ROOT / "policies/school.yaml").read_bytes()
    assert "kept /etc/safegate/policies/school.yaml (yours)" in up.stdout
    assert "(skipped) systemctl try-restart safegate.service" in up.stdout
    assert not installed.path("/etc/safegate/gateway.yaml.dist").exists(), "unchanged: no .dist"

    # A broken policy: the upgrade installs the code but refuses the restart, and says why.
    policy.write_bytes(edited + b"tiers: [\n")
    broken = run_installer(installed.root, "--upgrade", check=False)
    assert broken.returncode == 1
    assert "school.yaml:" in broken.stderr
    assert "the running gateway was NOT restarted" in broken.stderr
    assert "try-restart" not in broken.stdout
    policy.write_bytes(edited)


@needs_root
def test_uninstall_keeps_config_and_state_purge_removes_them(installed: Installed) -> None:
    policy = installed.path("/etc/safegate/policies/school.yaml")
    before = policy.read_bytes()
    out = run_installer(installed.root, "--uninstall").stdout
    assert not installed.path("/opt/safegate").exists()
    for unit in UNITS:
        assert not installed.path(f"/etc/systemd/system/{unit}").exists()
    assert policy.read_bytes() == before
    assert installed.path("/var/lib/safegate").is_dir()
    assert "kept /etc/safegate and /var/lib/safegate" in out
    assert not installed.path("/etc/systemd/resolved.conf.d/safegate.conf").exists(), \
        "resolved gets port 53 back"

    run_installer(installed.root, "--uninstall", "--purge")
    assert not installed.path("/etc/safegate").exists()
    assert not installed.path("/var/lib/safegate").exists()
    assert "safegate:" not in installed.path("/etc/passwd").read_text()


def _commented_section(text: str, name: str) -> dict[str, object]:
    """A `# name:` block of the template, as the administrator uncomments it."""
    lines = text.splitlines()
    start = lines.index(f"# {name}:")
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("#   "):
            break
        block.append(line)
    doc = yaml.safe_load("\n".join(line[2:] for line in block).replace(
        "@PUBLIC_ADDRESS@", "192.0.2.80"))
    section: dict[str, object] = doc[name]
    return section


def test_templates_commented_sections_write_where_the_unit_may() -> None:
    """The admin page's allow/deny rules and the proxy's CA are files the service writes:
    with their defaults (beside /etc/safegate/gateway.yaml) Save failed, and the CA could not
    be made, under ProtectSystem=strict. The template's commented `admin:` and `proxy:`
    blocks put them under the unit's ReadWritePaths."""
    unit = (REPO_ROOT / "deploy/systemd/safegate.service").read_text()
    writable = next(line.split("=", 1)[1] for line in unit.splitlines()
                    if line.startswith("ReadWritePaths="))
    text = (REPO_ROOT / "deploy/templates/gateway.yaml").read_text()
    admin = _commented_section(text, "admin")
    assert admin["listen"] == ["192.0.2.80:8081"]
    assert str(admin["local_policy"]).startswith(writable + "/")
    proxy = _commented_section(text, "proxy")
    assert proxy["enabled"] is True
    assert str(proxy["ca_dir"]).startswith(writable + "/")
