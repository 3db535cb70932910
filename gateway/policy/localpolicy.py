"""`local:` in a policy file: allow/deny names added to tiers and networks defined elsewhere.

The admin page writes its rules to one such file (policies/local.yaml) so the operator's own
files are never rewritten by a program; a person may edit it too. It is read by load_policy
like any policy file, so the same checks apply (unknown tier or network, bad name: file:line).

    local:
      networks:
        computer-room-2: {allow: [vi.wikipedia.org], deny: [game.example]}
      tiers:
        hoc_sinh: {deny: [chat.example]}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gateway.config.spec import STRINGS, Key, Shape, Table
from gateway.config.yamlconf import YDict, check_keys, expect_mapping
from gateway.errors import ConfigError

LOCAL_KEYS = ("networks", "tiers")
RULE = Shape("a local rule", (
    Key("allow", STRINGS, "names (and their subdomains) added to its allow list"),
    Key("deny", STRINGS, "names (and their subdomains) added to its deny list"),
))
LOCAL = Shape("local", (
    Key("networks", Table(RULE, named=True), "allow/deny added to networks defined elsewhere"),
    Key("tiers", Table(RULE, named=True), "allow/deny added to tiers defined elsewhere"),
), "the admin page's rules (policies/local.yaml): names added to existing tiers and networks")

Names = Callable[[Any, str, Any, str], tuple[bytes, ...]]


@dataclass(frozen=True)
class LocalRule:
    kind: str                 # "networks" | "tiers"
    name: str
    allow: tuple[bytes, ...]
    deny: tuple[bytes, ...]
    path: str
    line: int


def parse_local(value: Any, parent: YDict, names: Names) -> list[LocalRule]:
    """The rules of one file's `local:` section; `names` reads an allow/deny list."""
    section = expect_mapping(value, "local", parent, "local")
    LOCAL.check(section)
    rules: list[LocalRule] = []
    for kind in LOCAL_KEYS:
        group = expect_mapping(section.get(kind), f"local.{kind}", section, kind)
        for name, body in group.items():
            body = expect_mapping(body, f"local.{kind}.{name}", group, name)
            check_keys(body, RULE.names(), f"local.{kind}.{name}")
            rules.append(LocalRule(kind, str(name),
                                   names(body.get("allow", []), "allow", body, "allow"),
                                   names(body.get("deny", []), "deny", body, "deny"),
                                   group.path, group.key_lines.get(name, 0)))
    return rules


def apply_local(tiers: dict[str, Any], networks: list[Any], rules: list[LocalRule]
                ) -> list[ConfigError]:
    """Add each rule's names to its tier or network (in place); an unknown one is an error."""
    errors: list[ConfigError] = []
    for rule in rules:
        if rule.kind == "tiers":
            if rule.name not in tiers:
                errors.append(ConfigError(f"local.tiers: no tier named {rule.name!r} (defined "
                                          f"tiers: {', '.join(sorted(tiers)) or 'none'})",
                                          rule.path, rule.line))
                continue
            tier = tiers[rule.name]
            tiers[rule.name] = replace(tier, allow=tier.allow + rule.allow,
                                       deny=tier.deny + rule.deny)
            continue
        found = [i for i, net in enumerate(networks) if net.name == rule.name]
        if not found:
            known = ", ".join(sorted(n.name for n in networks)) or "none"
            errors.append(ConfigError(f"local.networks: no network named {rule.name!r} "
                                      f"(defined networks: {known})", rule.path, rule.line))
        for i in found:
            net = networks[i]
            networks[i] = replace(net, allow=net.allow + rule.allow, deny=net.deny + rule.deny)
    return errors


