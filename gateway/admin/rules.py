"""Allow/deny from the admin page: policies/local.yaml (policy/localpolicy.py), checked with
the same load_policy as any file edit before it replaces the old one, and an audit log.

The operator's own policy files are never rewritten by a program; local.yaml is the page's
file (a person may still edit it). A rule the checks refuse leaves both the file and the
running policy as they were, and the page shows the checks' own file:line message.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from gateway.config.gateway import GatewayConfig
from gateway.errors import ConfigError, ConfigErrors, SafeGateError
from gateway.policy.policyfile import load_policy, policy_files
from gateway.util.atomic import atomic_write

ACTIONS = ("allow", "deny", "remove")
KINDS = ("networks", "tiers")
AUDIT_FILE = "admin-audit.log"
HEADER = ("# Written by the SafeGate admin page (docs/admin.md): allow/deny added to the tiers\n"
          "# and networks of the other policy files. Editing by hand is fine.\n")


class RuleError(SafeGateError):
    """A change the checks refused; the message is what the page shows."""


def read_local(path: Path) -> dict[str, dict[str, dict[str, list[str]]]]:
    """local.yaml's `local:` section as plain lists ({} when there is no file yet)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        doc = {}
    except (OSError, yaml.YAMLError) as exc:
        raise RuleError(f"{path}: cannot read it: {exc}") from None
    local = doc.get("local") if isinstance(doc, dict) else None
    out: dict[str, dict[str, dict[str, list[str]]]] = {kind: {} for kind in KINDS}
    for kind in KINDS:
        group = local.get(kind) if isinstance(local, dict) else None
        for target, body in (group or {}).items() if isinstance(group, dict) else ():
            body = body if isinstance(body, dict) else {}
            out[kind][str(target)] = {k: [str(n) for n in body.get(k) or []]
                                      for k in ("allow", "deny")}
    return out


def edit(doc: dict[str, dict[str, dict[str, list[str]]]], kind: str, target: str, action: str,
         name: str) -> None:
    """allow: add to allow and drop from deny (deny: the reverse); remove: drop from both."""
    if kind not in KINDS or action not in ACTIONS:
        raise RuleError(f"unknown change {action!r} for {kind!r}")
    rules = doc[kind].setdefault(target, {"allow": [], "deny": []})
    for key in ("allow", "deny"):
        rules[key] = [n for n in rules.get(key, []) if n != name]
    if action != "remove":
        rules[action].append(name)
    if not rules["allow"] and not rules["deny"]:
        del doc[kind][target]


def render(doc: dict[str, dict[str, dict[str, list[str]]]]) -> str:
    local = {kind: {t: {k: v for k, v in body.items() if v} for t, body in doc[kind].items()}
             for kind in KINDS if doc[kind]}
    return HEADER + yaml.safe_dump({"local": local}, sort_keys=True, allow_unicode=True)


def check(config: GatewayConfig, categories: Iterable[str], text: str) -> None:
    """load_policy on the other policy files plus `text` as local.yaml; RuleError with the
    messages (naming local.yaml) if anything is refused."""
    assert config.admin is not None
    local = config.admin.local_policy
    candidate = local.with_name(f".{local.name}.check")   # a dot file: no policy dir loads it
    atomic_write(candidate, text)
    try:
        others = [p for p in policy_files(config.policies) if p.resolve() != local.resolve()]
        load_policy([*others, candidate], categories, config.limits.files.config_bytes)
    except (ConfigError, ConfigErrors) as exc:
        raise RuleError(str(exc).replace(str(candidate), str(local))) from None
    finally:
        candidate.unlink(missing_ok=True)


def change(config: GatewayConfig, categories: Iterable[str], kind: str, target: str,
           action: str, name: str) -> str | None:
    """Check and write one change to local.yaml; returns the file's previous text (None:
    there was none) for `restore`. The caller audits it once it is in force."""
    assert config.admin is not None
    name = name.strip().lower().rstrip(".")
    if not name:
        raise RuleError("enter a domain name")
    path = config.admin.local_policy
    try:
        before: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        before = None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{path}: cannot read it: {exc}") from None
    doc = read_local(path)
    edit(doc, kind, target, action, name)
    text = render(doc)
    check(config, categories, text)
    atomic_write(config.admin.local_policy, text)
    return before


def restore(path: Path, before: str | None) -> None:
    """Put local.yaml back as `change` found it."""
    if before is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, before)


def audit(state_dir: Path, what: dict[str, Any], user: str = "admin") -> None:
    """One JSON line per change, appended (never rewritten): time, user, what changed."""
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "user": user, **what}, ensure_ascii=False) + "\n"
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / AUDIT_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_audit(state_dir: Path, last: int = 50) -> list[dict[str, Any]]:
    """The newest `last` entries, newest first (the file's tail only)."""
    path = state_dir / AUDIT_FILE
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()[-last:]
    except FileNotFoundError:
        return []
    out = []
    for line in reversed(lines):
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out
