"""Allow/deny from the admin page: the `local:` section of a policy file (policy/localpolicy.py)
and how the page writes it (admin/rules.py), plus the `admin:` section of gateway.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.admin import rules
from gateway.config.gateway import load_config
from gateway.errors import ConfigError, ConfigErrors
from gateway.policy.policyfile import load_policy
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.procs import write_gateway_config

CATEGORIES = ("adult", "gambling", "csam")


def _policy_dir(tmp_path: Path, local: str) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "p.yaml").write_text(POLICY)
    (d / "local.yaml").write_text(local)
    return d


def test_local_section_adds_names_to_a_network_and_a_tier(tmp_path: Path) -> None:
    d = _policy_dir(tmp_path, "local:\n  networks:\n    kids-v4: {allow: [adult.example]}\n"
                              "  tiers:\n    teens: {deny: [chat.example]}\n")
    policy = load_policy([d], CATEGORIES)
    kids = next(n for n in policy.networks if n.name == "kids-v4")
    assert b"adult.example" in kids.allow and b"ok.adult-site.test" in kids.allow
    assert policy.tiers["teens"].deny == (b"chat.example",)


@pytest.mark.parametrize(("local", "line", "message"), [
    ("local:\n  networks:\n    nobody: {allow: [a.example]}\n", 3,
     "local.networks: no network named 'nobody'"),
    ("local:\n  tiers:\n    adults: {deny: [a.example]}\n", 3, "local.tiers: no tier named"),
    ("local:\n  networks:\n    kids-v4:\n      allow: [bad..name]\n", 4, "allow: 'bad..name'"),
    ("local:\n  networks:\n    kids-v4: {block: [x]}\n", 3, "unknown key"),
])
def test_bad_local_section_is_a_file_line_error(tmp_path: Path, local: str, line: int,
                                                message: str) -> None:
    d = _policy_dir(tmp_path, local)
    with pytest.raises((ConfigError, ConfigErrors)) as info:
        load_policy([d], CATEGORIES)
    text = str(info.value)
    assert f"{d / 'local.yaml'}:{line}:" in text and message in text, text


def _config(tmp_path: Path, admin: dict[str, object] | None = None) -> Path:
    return write_gateway_config(tmp_path, upstream_port=53, policies={"p.yaml": POLICY},
                                lists=LISTS, lists_yaml=LISTS_YAML,
                                extra={"admin": admin or {}})


def test_admin_section_defaults(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    assert config.admin is not None
    assert config.admin.listen == (("127.0.0.1", 8081),)
    assert config.admin.password_file == tmp_path / "var" / "admin.passwd"
    assert config.admin.local_policy == tmp_path / "policies" / "local.yaml"
    listen = load_config(_config(tmp_path / "b", {"listen": ["127.0.0.1:9000", "[::1]"]}))
    assert listen.admin is not None
    assert listen.admin.listen == (("127.0.0.1", 9000), ("::1", 8081))


def test_no_admin_section_no_admin_page_and_unknown_keys_refused(tmp_path: Path) -> None:
    path = _config(tmp_path)
    doc = yaml.safe_load(path.read_text())
    del doc["admin"]
    path.write_text(yaml.safe_dump(doc))
    assert load_config(path).admin is None
    doc["admin"] = {"listen": "127.0.0.1:9000", "pasword_file": "x"}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="pasword_file"):
        load_config(path)


def test_change_writes_local_yaml_and_a_refused_one_changes_nothing(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    assert config.admin is not None
    local = config.admin.local_policy
    assert rules.change(config, CATEGORIES, "networks", "kids-v4", "allow",
                        "Adult.Example.") is None
    assert yaml.safe_load(local.read_text()) == {
        "local": {"networks": {"kids-v4": {"allow": ["adult.example"]}}}}
    before = local.read_text()
    with pytest.raises(rules.RuleError) as info:
        rules.change(config, CATEGORIES, "networks", "kids-v4", "deny", "bad..name")
    assert str(local) in str(info.value) and ".check" not in str(info.value)
    assert local.read_text() == before
    assert not list(local.parent.glob(".*check"))
    # deny takes the name out of allow; remove drops it everywhere (and the empty entry).
    assert rules.change(config, CATEGORIES, "networks", "kids-v4", "deny",
                        "adult.example") == before
    assert rules.read_local(local)["networks"]["kids-v4"] == {"allow": [],
                                                              "deny": ["adult.example"]}
    rules.change(config, CATEGORIES, "networks", "kids-v4", "remove", "adult.example")
    assert rules.read_local(local) == {"networks": {}, "tiers": {}}


def test_audit_log_appends_json_lines_newest_first(tmp_path: Path) -> None:
    for name in ("a.example", "b.example"):
        rules.audit(tmp_path, {"action": "allow", "network": "n", "name": name})
    got = rules.read_audit(tmp_path)
    assert [g["name"] for g in got] == ["b.example", "a.example"]
    assert {g["user"] for g in got} == {"admin"}
    assert (tmp_path / rules.AUDIT_FILE).stat().st_mode & 0o777 == 0o600
