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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config.checks import check_files
from gateway.config.gateway import GatewayConfig, load_config
from gateway.config.limits import MemoryLimits
from gateway.dns.answers import BlockAnswers
from gateway.dns.view import View
from gateway.errors import ConfigError, ConfigErrors, SafeGateError
from gateway.lists.catalog import Catalog, load_catalog
from gateway.lists.compile import MAX_SKIPPED_EXAMPLES, compile_catalog, limit_args
from gateway.lists.index import ListIndex
from gateway.lists.overlay import Layered, Matcher, Overlay
from gateway.policy.decide import Profile, ProfileId, QueryHook
from gateway.policy.netindex import PrefixMap
from gateway.policy.policyfile import Network, Network4or6, Policy, load_policy, policy_files
from gateway.policy.quotas import by_category
from gateway.policy.safesearch import Rewrites, load_rewrites
from gateway.policy.schedules import MAX_SLEEP, active_categories, next_change
from gateway.policy.subscribers import Subscribers, load_subscribers
from gateway.proxy.intercept import INTERCEPT_FILE
from gateway.runtime.intercept import read_intercept, steer_scopes, steering
from gateway.util.fingerprint import Fingerprint, fingerprint
from gateway.util.pids import alive

log = logging.getLogger(__name__)

QueryLogHooks = Callable[[str, str], QueryHook]   # (network, tier) -> its query log hook

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
    subscribers: Subscribers | None = None
    intercept: frozenset[bytes] = frozenset()   # the proxy's intercept set (DNS steering)


def watched_files(config_path: Path, loaded: Loaded | None) -> list[Path]:
    """Every file whose change should trigger a reload (directories too: new policy files)."""
    paths = [config_path]
    if loaded is not None:
        paths += list(loaded.config.policies) + policy_files(policy_entries(loaded.config))
        paths += [loaded.catalog.path, *loaded.catalog.files()]
        # A renewed certificate (Let's Encrypt) is picked up like any other changed file.
        paths += [p for tls in (loaded.config.dot, loaded.config.web_tls) if tls is not None
                  for p in (tls.cert, tls.key)]
        if loaded.config.subscribers is not None:
            paths.append(loaded.config.subscribers)
        if steering(loaded.config):
            paths.append(loaded.config.state_dir / INTERCEPT_FILE)
    return paths


def build_view(config: GatewayConfig, policy: Policy, index: Matcher, generation: int,
               *, at: datetime | None = None, subscribers: Subscribers | None = None,
               intercept: frozenset[bytes] = frozenset(), query_log: QueryLogHooks | None = None
               ) -> tuple[View, dict[str, Profile]]:
    """Profiles per network and the client map; pure and quick (no list parsing).

    Subscribers' prefix tables are shared as they are (no per-subscriber work): only their few
    distinct profiles are built.

    `at` (default: now) is when schedule windows are evaluated: the profiles block what the
    windows open at that instant add, until the server builds the next view at the next edge.

    `query_log(network, tier)`: the hook of a network with `query_log:` (the serving process
    passes it; `check`, `explain` and workers do not log).
    """
    when = at or datetime.now(UTC)
    extra = scheduled_categories(config, policy, when)
    rewrites = load_rewrites()
    scopes = steer_scopes(config, intercept)
    memory = config.limits.memory
    profiles: dict[str, Profile] = {}
    items: list[tuple[Network4or6, Profile]] = []
    for i, net in enumerate(policy.networks):
        hook = (query_log(net.name, net.tier)
                if query_log is not None and net.query_log_hours else None)
        profile = _profile(ProfileId("network", i), net, policy, index, extra, rewrites,
                           steer=intercept, scopes=scopes, memory=memory, log=hook)
        profiles[net.name] = profile
        items.extend((cidr, profile) for cidr in net.cidrs)
    # One profile per DoH token (not shared with a network's): its memo and its tier are its own.
    tokens = {t.token: _profile(ProfileId("token", i),
                                Network(name="token", cidrs=(), tier=t.tier), policy, index,
                                extra, rewrites, steer=intercept, scopes=scopes,
                                memory=memory)
              for i, t in enumerate(policy.tokens)}
    layers = []
    if subscribers is not None:
        subscriber_profiles = [
            _profile(ProfileId("subscriber", i),
                     Network(name="subscribers", cidrs=(), tier=s.tier, allow=s.allow,
                             deny=s.deny), policy, index, extra, rewrites,
                     filtered=s.filtered, steer=intercept, scopes=scopes, memory=memory)
            for i, s in enumerate(subscribers.profiles)]
        layers.append((subscribers.tables, subscriber_profiles))
    answers = BlockAnswers.for_addresses(config.block_ttl, list(config.blockpage_addresses),
                                         steering(config), memory.blocked_bodies)
    frontends = (PrefixMap([(net, True) for net in config.trusted_frontends])
                 if config.trusted_frontends else None)
    return View(PrefixMap(items, layers), answers, generation, tokens, frontends,
                config.proxy_protocol, config.forward_ecs, built_at=when), profiles


def scheduled_categories(config: GatewayConfig, policy: Policy, at: datetime
                         ) -> dict[str, frozenset[str]]:
    """Per tier, the categories its schedule windows block at `at` beyond its own `block`."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(config.timezone)
    return {name: active_categories(t.schedules, policy.holidays, at, tz) - set(t.block)
            for name, t in policy.tiers.items() if t.schedules}


def schedule_delay(loaded: Loaded, now: datetime) -> float:
    """Seconds from `now` until a schedule window of the loaded policy may open or close."""
    from zoneinfo import ZoneInfo

    windows = [w for t in loaded.policy.tiers.values() for w in t.schedules]
    if not windows:
        return MAX_SLEEP
    at = next_change(windows, now, ZoneInfo(loaded.config.timezone))
    return min(max((at - now).total_seconds(), 0.0), MAX_SLEEP)


def schedule_changed(loaded: Loaded, now: datetime) -> bool:
    """Whether the windows open at `now` differ from those the running profiles were built with."""
    want = scheduled_categories(loaded.config, loaded.policy, now)
    have = scheduled_categories(loaded.config, loaded.policy, loaded.view.built_at)
    return want != have


def _profile(i: ProfileId, net: Network, policy: Policy, index: Matcher,
             extra: dict[str, frozenset[str]] | None = None, rewrites: Rewrites | None = None,
             *, filtered: bool = False, steer: frozenset[bytes] = frozenset(),
             scopes: frozenset[bytes] = frozenset(),
             memory: MemoryLimits | None = None, log: QueryHook | None = None) -> Profile:
    tier = policy.tiers[net.tier]
    scheduled = (extra or {}).get(tier.name, frozenset())
    memory = memory or MemoryLimits()
    return Profile(
        id=i, network=net.name, tier=tier.name, blocked=frozenset(tier.block) | scheduled,
        answer=tier.answer, allow=frozenset(tier.allow + net.allow),
        deny=frozenset(tier.deny + net.deny), default_block=tier.default_block, index=index,
        scheduled=scheduled, bypass=tier.bypass_protection, filtered=filtered, steer=steer,
        steer_scopes=scopes, quotas=by_category(tier.quotas, net.quotas),
        rewrites=rewrites.for_mode(tier.safesearch) if rewrites is not None else None,
        verdict_memo=memory.verdict_memo,
        # A logged network keeps no reply memo: every query reaches the log (dns/chain.py).
        reply_memo=0 if log is not None else memory.reply_memo, log=log)


def catalog_of(config: GatewayConfig) -> Catalog:
    """lists.yaml with gateway.yaml's file limits, once the files gateway.yaml names check out."""
    check_files(config)
    files = config.limits.files
    return load_catalog(config.blocklists, files.config_bytes, files.list_bytes,
                        config.state_dir)


def policy_entries(config: GatewayConfig) -> list[Path]:
    """`policies:` and, once the admin page wrote it, admin.local_policy (when it lies outside
    the policies directory; a file named twice is loaded once)."""
    local = config.admin.local_policy if config.admin is not None else None
    return [*config.policies, *([local] if local is not None and local.exists() else [])]


def load_policy_for(config: GatewayConfig, catalog: Catalog) -> Policy:
    """The policy files of `config`; they must give some client a tier.

    With no network, no DoH token and no subscribers file, every query would be REFUSED: that
    is a broken configuration (an emptied or missing file), never one to swap in.
    """
    policy = load_policy(policy_entries(config), catalog.categories.keys(),
                         config.limits.files.config_bytes)
    logged = [n for n in policy.networks if n.query_log_hours]
    if logged and config.workers > 1:
        # Only the primary process holds the log; the other workers' share would be missing.
        net = logged[0]
        raise ConfigError(f"network {net.name!r} has query_log, which needs dns.workers: 1",
                          net.path, net.line)
    if not policy.networks and not policy.tokens and config.subscribers is None:
        files = ", ".join(str(p) for p in policy.files)
        what = f"policy files: {files}" if files else "no *.yaml or *.yml file in " + ", ".join(
            str(p) for p in config.policies)
        raise ConfigError(f"no network is defined ({what}): every client would be REFUSED",
                          str(config.path), config.path_lines.get("policies[0]") or None)
    if config.workers > 1:
        # Each DNS worker would count its own minutes: a client's time would multiply.
        owner = next((t for t in policy.tiers.values() if t.quotas), None) \
            or next((n for n in policy.networks if n.quotas), None)
        if owner is not None:
            raise ConfigError("quotas are counted in one process: they need dns.workers: 1 "
                              f"(gateway.yaml sets {config.workers})", owner.path,
                              owner.line or None)
    return policy


def load_in_process(config_path: str | Path, at: datetime | None = None) -> Loaded:
    """Everything, compiled in this process (for `check` and `explain`, not for serving).

    `at`: evaluate schedule windows at that instant instead of now (`explain --at`).
    """
    config = load_config(config_path)
    catalog = catalog_of(config)
    policy = load_policy_for(config, catalog)
    result = compile_catalog(catalog, None)
    assert isinstance(result.index, bytes)
    index = ListIndex.from_bytes(result.index)
    subscribers = _subscribers(config, policy, None)
    intercept = read_intercept(config)
    view, profiles = build_view(config, policy, index, 1, at=at, subscribers=subscribers,
                                intercept=intercept)
    # Every example the compiler kept: `check --verbose` lists them.
    return Loaded(config, policy, catalog, index, view, profiles,
                  summary=result.summary(MAX_SKIPPED_EXAMPLES),
                  lists_fingerprint=fingerprint([catalog.path, *catalog.files()]),
                  subscribers=subscribers, intercept=intercept)


def _subscribers(config: GatewayConfig, policy: Policy, previous: Subscribers | None
                 ) -> Subscribers | None:
    """The subscribers file, re-parsed only when it changed; tiers checked against `policy`."""
    path = config.subscribers
    if path is None:
        return None
    from gateway.policy.subscribers import file_fingerprint

    if config.subscribers_source is not None and not path.exists():
        log.warning("subscribers: no copy of %s yet; networks alone decide until it arrives",
                    config.subscribers_source.url)
        return None

    try:
        unchanged = (previous is not None and previous.path == path
                     and previous.fingerprint == file_fingerprint(path))
    except OSError as exc:
        raise ConfigError(f"cannot read subscribers file: {exc.strerror}", str(path)) from None
    subs = (previous if unchanged and previous is not None
            else load_subscribers(path, config.limits.files))
    subs.check_tiers(policy.tiers)
    return subs


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
        # A subscribers file already parsed and checked (subscribers_poll.py): the next build
        # uses it if the file on disk is still that one.
        self.primed_subscribers: Subscribers | None = None
        # Schedule windows are evaluated at clock(); tests inject one.
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        # The running gateway's query log (gateway/querylog/), when some network enables it.
        self.query_log: QueryLogHooks | None = None

    def rebuild_view(self, loaded: Loaded) -> Loaded:
        """The same files with the current overlays: a feed update, no list recompile."""
        self.generation += 1
        view, profiles = build_view(loaded.config, loaded.policy,
                                    layered(loaded.index, self.overlays), self.generation,
                                    at=self.clock(), subscribers=loaded.subscribers,
                                    intercept=loaded.intercept, query_log=self.query_log)
        return dataclasses.replace(loaded, view=view, profiles=profiles)

    async def build(self, previous: Loaded | None) -> Loaded:
        """A new Loaded; raises ConfigError/ConfigErrors/SafeGateError and leaves `previous` be."""
        config = load_config(self.config_path)
        catalog = catalog_of(config)
        policy = load_policy_for(config, catalog)
        lists_fp = fingerprint([catalog.path, *catalog.files()])
        if previous is not None and previous.lists_fingerprint == lists_fp:
            index, summary, index_path = previous.index, previous.summary, previous.index_path
        else:
            index_path, summary = await self._compile(config, catalog)
            index = ListIndex.open(index_path)
        # A million-line subscribers file takes seconds to parse: a thread keeps DNS answering.
        known = self.primed_subscribers or (previous.subscribers if previous else None)
        self.primed_subscribers = None
        subscribers = await asyncio.to_thread(_subscribers, config, policy, known)
        intercept = read_intercept(config)
        self.generation += 1
        view, profiles = build_view(config, policy, layered(index, self.overlays),
                                    self.generation, at=self.clock(), subscribers=subscribers,
                                    intercept=intercept, query_log=self.query_log)
        return Loaded(config, policy, catalog, index, view, profiles, summary, lists_fp,
                      index_path, subscribers, intercept)

    async def _compile(self, config: GatewayConfig, catalog: Catalog
                       ) -> tuple[Path, dict[str, Any]]:
        """Run the list compiler in a child process; the index file it writes is ours to map."""
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        out = state / f"lists-{os.getpid()}-{self.generation + 1}.sgidx"
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.lists.compile", *limit_args(config.limits.files),
            f"--state-dir={config.state_dir}", str(catalog.path), str(out),
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
        if pid == me or not alive(pid):
            with contextlib.suppress(OSError):
                p.unlink()
