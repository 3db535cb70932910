"""What a school's IT teacher reads on day one (issue #14, walked as a user): where each web
listener is, that an `admin:` section saved to a running gateway needs a restart, and
`explain`'s quota lines next to the schedules they sit beside."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import unbound as ub
from tests.support.cli import config, safegate
from tests.support.data import LISTS, LISTS_YAML
from tests.support.procs import REPO_ROOT, SafeGateFactory, free_port
from tests.support.wait import wait_for

QUOTA_POLICY = """\
tiers:
  kids:
    block: [adult]
    schedules:
      - {block: [gambling], from: "22:00", to: "06:00"}
    quotas:
      - {categories: [gambling], minutes: 30}
networks:
  - {name: lab, cidrs: ["127.0.0.1/32"], tier: kids}
"""


def test_explain_prints_quotas_after_the_tiers_schedules(tmp_path: Path) -> None:
    cfg = config(tmp_path, policy=QUOTA_POLICY)
    r = safegate("explain", "-c", str(cfg), "127.0.0.1", "gamble.test",
                 "--at", "2026-03-02T10:00")
    assert r.returncode == 0, r.stderr
    keys = [line.split(":", 1)[0] for line in r.stdout.splitlines()
            if line and not line.startswith(" ")]
    assert keys[:8] == ["client", "name", "identity", "network", "network_defined_at", "tier",
                        "time", "schedules"]
    assert keys.index("quotas") == keys.index("bypass_protection") + 1
    assert "  gambling: 30 minutes per day: 0 used, 30 left today (" in r.stdout


def test_web_listeners_are_logged_and_a_new_admin_section_asks_for_a_restart(
        unbound: ub.UnboundServer, safegate_factory: SafeGateFactory) -> None:
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": QUOTA_POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML, log_level="info")
    assert gw.config is not None
    doc = yaml.safe_load(gw.config.read_text())
    for key in ("web", "metrics"):
        assert f"{key} listening on http://{doc[key]['listen']}/" in gw.stderr_text()
    admin = f"127.0.0.1:{free_port(v6=False, udp=False)}"
    doc["admin"] = {"listen": admin}
    gw.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    wait_for(lambda: "admin added: restart SafeGate for it to apply" in gw.stderr_text(),
             timeout=30)
    assert "admin listening on" not in gw.stderr_text()


def test_explain_says_a_local_or_forward_zone_name_never_goes_upstream(tmp_path: Path) -> None:
    """It said "forwarded to upstream" for the school's Moodle in dns.local_records."""
    zone_port = free_port()
    cfg = config(tmp_path, extra={"dns": {
        "local_records": ["192.0.2.10 moodle.school.test",
                          "cname lms.school.test moodle.school.test"],
        "forward_zones": [{"zone": "school.test", "servers": [f"127.0.0.1:{zone_port}"]},
                          {"zone": "staff.school.test", "servers": ["127.0.0.2"]}]}})
    line = next(n for n, text in enumerate(cfg.read_text().splitlines(), 1)
                if "192.0.2.10 moodle.school.test" in text)

    def explain(name: str) -> dict[str, str]:
        r = safegate("explain", "-c", str(cfg), "127.0.0.1", name, "--json")
        assert r.returncode == 0, r.stderr
        out: dict[str, str] = json.loads(r.stdout)
        return out

    assert explain("Moodle.School.Test.")["answer"] == (
        f"from dns.local_records: A 192.0.2.10 ({cfg}:{line})")
    assert explain("lms.school.test")["answer"].startswith(
        "from dns.local_records: CNAME moodle.school.test (")
    assert explain("dc1.school.test")["answer"] == (
        f"forwarded to 127.0.0.1:{zone_port} (dns.forward_zones: school.test), not to "
        "dns.upstreams")
    assert explain("pc.staff.school.test")["answer"] == (
        "forwarded to 127.0.0.2:53 (dns.forward_zones: staff.school.test), not to "
        "dns.upstreams")
    other = explain("example.test")
    assert (other["answer"], other["rcode"]) == ("forwarded to upstream", "from upstream")
    assert explain("gamble.test")["verdict"] == "blocked"    # policy first: no local answer


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_admin_passwd_as_root_leaves_the_file_to_the_state_dirs_owner(tmp_path: Path) -> None:
    """docs/admin.md said `sudo safegate admin passwd`: the 0600 file was root's and the
    gateway (user safegate, owner of /var/lib/safegate) could not read it."""
    cfg = config(tmp_path, extra={"admin": {"listen": f"127.0.0.1:{free_port()}"}})
    state = tmp_path / "var"
    os.chown(state, 65534, 65534)            # the service user's state directory
    r = subprocess.run([sys.executable, "-m", "gateway", "admin", "passwd", "-c", str(cfg),
                        "--password-stdin"], input="correct horse battery\n",
                       capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False)
    assert r.returncode == 0, r.stderr
    st = (state / "admin.passwd").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o600)
