"""`limits:` read generically from the dataclasses of config/limits.py (which import nothing).

Each key is a field there; a field's type says how its value is read, and a key not written
keeps the field's default.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from gateway.config.limits import Limits
from gateway.config.values import read_bool, read_int, read_networks, read_seconds
from gateway.config.yamlconf import YDict, check_keys, expect_mapping

STREAMS = ("tcp", "dot")


def parse_limits(doc: YDict, tcp_idle_timeout: float | None) -> Limits:
    """`limits:`; `tcp_idle_timeout` is dns.tcp_idle_timeout when written (the older spelling),
    which still sets limits.tcp/dot.idle_timeout unless those are given."""
    section = expect_mapping(doc.get("limits"), "limits", doc, "limits")
    defaults = Limits()
    check_keys(section, [f.name for f in fields(Limits)], "limits")
    parts: dict[str, Any] = {}
    for part in fields(Limits):
        current = getattr(defaults, part.name)
        sub = expect_mapping(section.get(part.name), f"limits.{part.name}", section, part.name)
        check_keys(sub, [f.name for f in fields(current)], f"limits.{part.name}")
        values: dict[str, Any] = {}
        for f in fields(current):
            if f.name not in sub:
                continue
            what = f"limits.{part.name}.{f.name}"
            if f.type == "bool":
                values[f.name] = read_bool(sub[f.name], what, sub, f.name)
            elif f.type == "int":
                values[f.name] = read_int(sub[f.name], what, sub, f.name, 0)
            elif f.type == "float":
                values[f.name] = read_seconds(sub[f.name], what, sub, f.name)
            else:  # tuple[str, ...]: networks
                values[f.name] = tuple(str(n) for n in read_networks(sub[f.name], what, sub,
                                                                     f.name))
        parts[part.name] = replace(current, **values)
        if part.name in STREAMS and tcp_idle_timeout is not None and "idle_timeout" not in sub:
            # DoT followed dns.tcp_idle_timeout before limits: existed.
            parts[part.name] = replace(parts[part.name], idle_timeout=tcp_idle_timeout)
    return Limits(**parts)
