"""SafeSearch / restricted modes: search-engine hosts -> the CNAME target per mode (data file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.config.yamlconf import (
    check_keys,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
    load_yaml,
)
from gateway.util.names import normalize_name

DATA_FILE = Path(__file__).parent.parent / "data" / "safesearch.yaml"
MODES = ("moderate", "strict")
ENGINE_KEYS = ("doc", "targets", "hosts", "google_domains")


@dataclass(frozen=True)
class Rewrites:
    """host -> target per mode; one dict per mode, shared by every profile of that mode."""

    by_mode: dict[str, dict[bytes, bytes]]
    engine: dict[bytes, str]      # host -> engine name (for explain)

    def for_mode(self, mode: str) -> dict[bytes, bytes]:
        return self.by_mode.get(mode, {})


def load_rewrites(path: Path = DATA_FILE) -> Rewrites:
    """Read the data file; a mistake in it is a file:line ConfigError."""
    doc = expect_mapping(load_yaml(path), "the SafeSearch data file")
    if not doc.path:
        doc.path = str(path)
    check_keys(doc, ("engines",), "the SafeSearch data file")
    engines = expect_mapping(doc.get("engines"), "engines", doc, "engines")
    by_mode: dict[str, dict[bytes, bytes]] = {m: {} for m in MODES}
    engine_of: dict[bytes, str] = {}
    for name, raw in engines.items():
        body = expect_mapping(raw, f"engine {name!r}", engines, name)
        check_keys(body, ENGINE_KEYS, f"engine {name!r}")
        targets = expect_mapping(body.get("targets"), "targets", body, "targets")
        check_keys(targets, MODES, "targets")
        hosts: list[bytes] = []
        for key, prefix in (("hosts", ""), ("google_domains", "www.google.")):
            items = expect_list(body.get(key, []), key, body, key)
            for i, item in enumerate(items):
                text = expect_str(item, f"an entry of {key}", items, i)
                try:
                    hosts.append(normalize_name(prefix + text))
                except ValueError as exc:
                    raise error_at(f"{key}: {text!r}: {exc}", item, items, i) from None
        for mode in MODES:
            if mode not in targets:
                raise error_at(f"engine {name!r} has no {mode} target", None, body, "targets")
            target = normalize_name(expect_str(targets[mode], "a target", targets, mode))
            for host in hosts:
                by_mode[mode][host] = target
        for host in hosts:
            engine_of[host] = str(name)
    return Rewrites(by_mode, engine_of)
