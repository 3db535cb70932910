"""Build everything a reload swaps in (policy, lists, profiles) aside from the running one.

Lists are compiled in a short-lived child process that writes an index file to the state
directory; this process only maps it. So the serving process never holds a million Python
strings, a reload never stalls the event loop, and a failed build leaves the old one running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, load_config
from gateway.decide import Profile
from gateway.dns.answers import BlockAnswers
from gateway.dns.chain import View
from gateway.errors import ConfigError, ConfigErrors, SafeGateError
from gateway.lists.catalog import Catalog, load_catalog
from gateway.lists.compile import compile_catalog
from gateway.lists.index import ListIndex
from gateway.lists.overlay import Layered, Matcher, Overlay
from gateway.netindex import PrefixMap
from gateway.policy import Network, Network4or6, Policy, load_policy, policy_files

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int, int], ...]


@dataclass
class Loaded:
    """One complete, validated configuration: what `safegate run` serves and `explain` reads."""

    config: GatewayConfig
    policy: Policy
    catalog: Catalog
    index: ListIndex
    view: View
    profiles: dict[str, Profile]          # by network name
    summary: dict[str, Any] = field(default_factory=dict)   # the compile report
    lists_fingerprint: Fingerprint = ()
    index_path: Path | None = None


def fingerprint(paths: list[Path]) -> Fingerprint:
    """(path, mtime_ns, size, inode) of each file: any edit, replace or delete changes it."""
    out = []
    for p in sorted(set(paths)):
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(p), -1, -1, -1))
    return tuple(out)


def watched_files(config_path: Path, loaded: Loaded | None) -> list[Path]:
    """Every file whose change should trigger a reload (directories too: new policy files)."""
    paths = [config_path]
    if loaded is not None:
        paths += list(loaded.config.policies) + policy_files(loaded.config.policies)
        paths += [loaded.catalog.path, *loaded.catalog.files()]
    return paths


def build_view(config: GatewayConfig, policy: Policy, index: Matcher, generation: int
               ) -> tuple[View, dict[str, Profile]]:
    """Profiles per network and the client map; pure and quick (no list parsing)."""
    profiles: dict[str, Profile] = {}
    items: list[tuple[Network4or6, Profile]] = []
    for i, net in enumerate(policy.networks):
        profile = _profile(i, net, policy, index)
        profiles[net.name] = profile
        items.extend((cidr, profile) for cidr in net.cidrs)
    answers = BlockAnswers.for_addresses(config.block_ttl, list(config.blockpage_addresses))
    return View(PrefixMap(items), answers, generation), profiles


def _profile(i: int, net: Network, policy: Policy, index: Matcher) -> Profile:
    tier = policy.tiers[net.tier]
    return Profile(
        id=i, network=net.name, tier=tier.name, blocked=frozenset(tier.block),
        answer=tier.answer, allow=frozenset(tier.allow + net.allow),
        deny=frozenset(tier.deny + net.deny), default_block=tier.default_block, index=index)


def load_policy_for(config: GatewayConfig, catalog: Catalog) -> Policy:
    return load_policy(config.policies, catalog.categories.keys())


def load_in_process(config_path: str | Path) -> Loaded:
    """Everything, compiled in this process (for `check` and `explain`, not for serving)."""
    config = load_config(config_path)
    catalog = load_catalog(config.blocklists)
    policy = load_policy_for(config, catalog)
    result = compile_catalog(catalog, None)
    assert isinstance(result.index, bytes)
    index = ListIndex.from_bytes(result.index)
    view, profiles = build_view(config, policy, index, 1)
    return Loaded(config, policy, catalog, index, view, profiles, summary=result.summary(),
                  lists_fingerprint=fingerprint([catalog.path, *catalog.files()]))


def layered(index: ListIndex, overlays: dict[str, Overlay]) -> Matcher:
    """The compiled index alone, or with the feeds' overlays on top (in feed-name order)."""
    if not overlays:
        return index
    return Layered(index, [overlays[name] for name in sorted(overlays)])


class Builder:
    """Builds Loaded states for the server, reusing the compiled index when lists are unchanged."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.generation = 0
        self.overlays: dict[str, Overlay] = {}  # by feed name; survive file reloads

    def rebuild_view(self, loaded: Loaded) -> Loaded:
        """The same files with the current overlays: a feed update, no list recompile."""
        self.generation += 1
        view, profiles = build_view(loaded.config, loaded.policy,
                                    layered(loaded.index, self.overlays), self.generation)
        return dataclasses.replace(loaded, view=view, profiles=profiles)

    async def build(self, previous: Loaded | None) -> Loaded:
        """A new Loaded; raises ConfigError/ConfigErrors/SafeGateError and leaves `previous` be."""
        config = load_config(self.config_path)
        catalog = load_catalog(config.blocklists)
        policy = load_policy_for(config, catalog)
        lists_fp = fingerprint([catalog.path, *catalog.files()])
        if previous is not None and previous.lists_fingerprint == lists_fp:
            index, summary, index_path = previous.index, previous.summary, previous.index_path
        else:
            index_path, summary = await self._compile(config, catalog)
            index = ListIndex.open(index_path)
        self.generation += 1
        view, profiles = build_view(config, policy, layered(index, self.overlays),
                                    self.generation)
        return Loaded(config, policy, catalog, index, view, profiles, summary, lists_fp,
                      index_path)

    async def _compile(self, config: GatewayConfig, catalog: Catalog
                       ) -> tuple[Path, dict[str, Any]]:
        """Run the list compiler in a child process; the index file it writes is ours to map."""
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        out = state / f"lists-{os.getpid()}-{self.generation + 1}.sgidx"
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.lists.compile", str(catalog.path), str(out),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await proc.communicate()
        if proc.returncode != 0:
            lines = stderr.decode("utf-8", "replace").strip().splitlines()
            errors = [ConfigError(line) for line in lines if line.strip()]
            raise ConfigErrors(errors or [ConfigError("list compiler failed")])
        try:
            summary: dict[str, Any] = json.loads(stdout)
        except ValueError:
            raise SafeGateError("list compiler printed no summary") from None
        log.info("compiled %d list entries in %.2fs (%d lines skipped)",
                 sum(summary.get("entries_by_category", {}).values()),
                 time.monotonic() - started, summary.get("skipped_count", 0))
        return out, summary


def remove_stale_indexes(state_dir: Path, keep: Path | None) -> None:
    """Delete our index files except `keep`, and those of processes that no longer run.

    A file still mapped stays valid after unlink on POSIX, so queries in flight on the old
    index finish normally.
    """
    if not state_dir.is_dir():
        return
    me = os.getpid()
    for p in state_dir.glob("lists-*-*.sgidx"):
        if p == keep:
            continue
        try:
            pid = int(p.name.split("-")[1])
        except ValueError:
            continue
        if pid == me or not _alive(pid):
            with contextlib.suppress(OSError):
                p.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
