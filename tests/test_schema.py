"""The JSON Schemas of gateway.yaml, policy files and lists.yaml (issue #14.7, #14.8).

They are generated from the key definitions the loaders check with (gateway/config/spec.py):
the shipped files must be what `make schema` writes, docs/configuration.md must document
exactly their keys, and `safegate check` and a real JSON Schema validator (the `jsonschema`
package, what editors embed) must agree on every shipped example and on broken ones.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.cli.schema import FILES, REFERENCE, SCHEMA_DIR, schema_text, with_tables
from tests.support.cli import check
from tests.support.procs import REPO_ROOT

SCHEMAS = {name: json.loads((REPO_ROOT / SCHEMA_DIR / f"{name}.schema.json").read_text())
           for name in FILES}
SCHOOL = REPO_ROOT / "deploy/example/gateway.yaml"
POLICY = REPO_ROOT / "policies/school.yaml"
LISTS = REPO_ROOT / "blocklists/lists.yaml"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _plain(data: Any) -> Any:
    """What an editor sees: YAML 1.1's dates are text to it (and to our date parser)."""
    return json.loads(json.dumps(data, default=str))


def _schema_valid(name: str, data: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(SCHEMAS[name]).is_valid(_plain(data)))


def schema_paths(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every key path a JSON Schema describes, written as docs/configuration.md writes them."""
    for branch in schema.get("anyOf", []):
        yield from schema_paths(branch, prefix)
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        yield from schema_paths(sub, path)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from schema_paths(extra, f"{prefix}.*")
    if isinstance(schema.get("items"), dict):
        yield from schema_paths(schema["items"], f"{prefix}[]")


# ---------------------------------------------------------------- shipped = generated


@pytest.mark.parametrize("name", list(FILES))
def test_the_shipped_schema_is_the_generated_one(name: str) -> None:
    shipped = (REPO_ROOT / SCHEMA_DIR / f"{name}.schema.json").read_text()
    assert shipped == schema_text(name), f"{SCHEMA_DIR}/{name}.schema.json is stale: make schema"
    jsonschema.Draft202012Validator.check_schema(json.loads(shipped))


def test_the_reference_tables_are_the_generated_ones() -> None:
    text = (REPO_ROOT / REFERENCE).read_text()
    assert with_tables(text) == text, f"{REFERENCE}'s key tables are stale: make schema"


@pytest.mark.parametrize("name", list(FILES))
def test_the_reference_documents_every_key_of_the_schema_and_no_other(name: str) -> None:
    text = (REPO_ROOT / REFERENCE).read_text()
    table = re.search(rf"<!-- keys:{name} -->\n(.*?)<!-- /keys:{name} -->", text, re.S)
    assert table is not None, f"{REFERENCE} has no keys:{name} table"
    documented = re.findall(r"^\| `([^`]+)` \|", table[1], re.M)
    assert len(documented) == len(set(documented))
    assert set(documented) == set(schema_paths(SCHEMAS[name]))


def test_a_key_the_loader_knows_is_in_the_schema() -> None:
    """Spot checks across parsers: the schema comes from the loaders' own definitions."""
    paths = {name: set(schema_paths(SCHEMAS[name])) for name in FILES}
    assert {"dns.cache.stale_ttl", "dns.forward_zones[].servers", "limits.files.list_refresh_min",
            "proxy.origin_ports.https", "feeds[].long_poll", "subscribers.token_file",
            "feed_guard.max_change.ratio"} <= paths["gateway"]
    assert {"tiers.*.schedules[].school_days_only", "tokens[].token",
            "holidays[].from"} <= paths["policy"]
    assert {"categories.*[].url", "categories.*[].refresh"} <= paths["lists"]


# ---------------------------------------------------------------- check and schema agree


def _gateway_in(tmp_path: Path, data: dict[str, Any]) -> Path:
    """gateway.yaml `data` in tmp_path, its policies and lists the shipped ones (absolute)."""
    data.setdefault("policies", [str(POLICY)])
    data.setdefault("blocklists", str(LISTS))
    data["state_dir"] = str(tmp_path / "var")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _school() -> dict[str, Any]:
    data = _load(SCHOOL)
    data["policies"] = [str(POLICY)]
    data["blocklists"] = str(LISTS)
    return data  # type: ignore[no-any-return]


def _template(tmp_path: Path) -> Path:
    """deploy/templates/gateway.yaml as install.sh fills it in, beside the shipped files."""
    text = (REPO_ROOT / "deploy/templates/gateway.yaml").read_text()
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace("@PUBLIC_ADDRESS@", "192.0.2.1").replace(
        "/var/lib/safegate", str(tmp_path / "var")))
    (tmp_path / "policies").symlink_to(REPO_ROOT / "policies")
    (tmp_path / "blocklists").symlink_to(REPO_ROOT / "blocklists")
    return path


@pytest.mark.parametrize("example", ["deploy/example/gateway.yaml",
                                     "deploy/example/isp/gateway.yaml", "template"])
def test_check_and_schema_accept_every_example_gateway_yaml(example: str, tmp_path: Path
                                                            ) -> None:
    path = _template(tmp_path) if example == "template" else REPO_ROOT / example
    assert check(path)[0] == 0, check(path)
    assert _schema_valid("gateway", _load(path))


def _policies() -> list[Path]:
    return [POLICY, *sorted((REPO_ROOT / "deploy/example/isp/policies").glob("*.yaml"))]


@pytest.mark.parametrize("policy", _policies(), ids=lambda p: p.name)
def test_check_and_schema_accept_every_example_policy_and_lists_yaml(policy: Path,
                                                                     tmp_path: Path) -> None:
    cfg = _gateway_in(tmp_path, {**_school(), "policies": [str(policy)]})
    assert check(cfg)[0] == 0, check(cfg)
    assert _schema_valid("policy", _load(policy))
    assert _schema_valid("lists", _load(LISTS))


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with `value` at dotted `path` (digits index lists)."""
    out = copy.deepcopy(data)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


BROKEN_GATEWAY = [
    ("dsn", {}),                                    # a typo of a section
    ("dns.cache.size", "big"),
    ("dns.workers", 0),
    ("dns.listen", {"host": "127.0.0.1"}),
    ("web.tls", {"cert": "cert.pem"}),              # no key
    ("feeds", [{"name": "f", "url": "http://feed.invalid/", "type": "plain"}]),
    ("feeds", [{"name": "f", "type": "domains", "category": "ads"}]),   # no url
    ("limits.tcp.connections", -1),
    ("limits.files.list_refresh_min", True),
    ("limits.udp.colour", 3),
    ("reload.watch_interval", 0),
    ("proxy.origin_ports.https", 70000),
    ("proxy.restrict_hosts.bing", ["bing.com"]),
    ("subscribers", {"interval": 60}),              # no url
    ("feed_guard.max_change.ratio", 2),
]


@pytest.mark.parametrize(("path", "value"), BROKEN_GATEWAY,
                         ids=[f"{p}={v!r}"[:40] for p, v in BROKEN_GATEWAY])
def test_check_and_schema_reject_a_broken_gateway_yaml(path: str, value: Any, tmp_path: Path
                                                       ) -> None:
    data = _set(_school(), path, value)
    assert check(_gateway_in(tmp_path, data))[0] == 1
    assert not _schema_valid("gateway", data)


BROKEN_POLICY = [
    ("tiers.thcs.colour", "red"),
    ("tiers.thcs.answer", "refuse"),
    ("tiers.thcs.default", "deny"),
    ("tiers.thcs.safesearch", "on"),
    ("tiers.thcs.bypass_protection", "no"),
    ("tiers.thcs.schedules", [{"block": ["games"], "from": "25:00", "to": "06:00"}]),
    ("tiers.thcs.schedules", [{"block": ["games"], "from": "22:00"}]),
    ("tiers.thcs.schedules", [{"block": ["games"], "from": "22:00", "to": "06:00",
                               "days": ["monday"]}]),
    ("networks.0", {"name": "lab", "cidrs": ["10.9.0.0/24"]}),          # no tier
    ("tokens", [{"token": "abc", "tier": "thcs"}]),                      # too short
    ("holidays", [{"from": "2026-02-14", "when": "Tet"}]),
    ("hosts", []),
]


@pytest.mark.parametrize(("path", "value"), BROKEN_POLICY,
                         ids=[f"{p}={v!r}"[:40] for p, v in BROKEN_POLICY])
def test_check_and_schema_reject_a_broken_policy(path: str, value: Any, tmp_path: Path) -> None:
    data = _set(_load(POLICY), path, value)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    assert check(_gateway_in(tmp_path, {**_school(), "policies": [str(policy)]}))[0] == 1
    assert not _schema_valid("policy", data)


BROKEN_LISTS = [
    ("categories.adult.0.format", "csv"),
    ("categories.adult.0.match", "prefix"),
    ("categories.adult.0.colour", "red"),
    ("categories.adult.0.mandatory", "yes"),
    ("categories.Adult", [{"path": "adult.hosts", "format": "hosts"}]),
    ("categories.ads", [{"url": "https://lists.example/a.txt", "format": "adblock",
                         "refresh": "soon"}]),
    ("lists", {}),
]


@pytest.mark.parametrize(("path", "value"), BROKEN_LISTS,
                         ids=[f"{p}={v!r}"[:40] for p, v in BROKEN_LISTS])
def test_check_and_schema_reject_a_broken_lists_yaml(path: str, value: Any, tmp_path: Path
                                                     ) -> None:
    shipped = _load(LISTS)
    for sources in shipped["categories"].values():   # the copy names the shipped files
        for source in sources:
            source["path"] = str(LISTS.parent / source["path"])
    data = _set(shipped, path, value)
    lists = tmp_path / "lists.yaml"
    lists.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    assert check(_gateway_in(tmp_path, {**_school(), "blocklists": str(lists)}))[0] == 1
    assert not _schema_valid("lists", data)


def test_the_copies_the_broken_cases_start_from_are_valid(tmp_path: Path) -> None:
    """So each broken case fails for its own change, not for how it was written out."""
    shipped = _load(LISTS)
    for sources in shipped["categories"].values():
        for source in sources:
            source["path"] = str(LISTS.parent / source["path"])
    lists = tmp_path / "lists.yaml"
    lists.write_text(yaml.safe_dump(shipped, sort_keys=False, allow_unicode=True))
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(_load(POLICY), sort_keys=False, allow_unicode=True))
    cfg = _gateway_in(tmp_path, {**_school(), "blocklists": str(lists),
                                 "policies": [str(policy)]})
    assert check(cfg)[0] == 0, check(cfg)


@pytest.mark.parametrize(("example", "name"), [
    ("deploy/example/gateway.yaml", "gateway"), ("deploy/example/isp/gateway.yaml", "gateway"),
    ("deploy/example/isp/policies/isp.yaml", "policy")])
def test_the_examples_name_their_schema_for_editors(example: str, name: str) -> None:
    """VS Code's YAML extension reads the first-line modeline; it must find the right file.
    (Not in policies/ and blocklists/: install.sh copies those to /etc, where docs/ is not.)"""
    path = REPO_ROOT / example
    first = path.read_text().splitlines()[0]
    found = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert found is not None, first
    assert (path.parent / found[1]).resolve() == REPO_ROOT / SCHEMA_DIR / f"{name}.schema.json"
