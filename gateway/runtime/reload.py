"""Reloads: on SIGHUP, on a watched file's change, at a schedule window's edge and when a
feed's rules change. A new state is built aside and swapped in whole; on any error the running
one stays and says why (the Gateway in runtime/app.py runs these loops)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError, ConfigErrors, SafeGateError
from gateway.lists.overlay import Overlay
from gateway.policy.schedules import MAX_SLEEP
from gateway.proxy.supervisor import ProxySupervisor, proxy_command
from gateway.runtime.state import (
    Builder,
    Loaded,
    schedule_changed,
    schedule_delay,
    watched_files,
)
from gateway.util.fingerprint import fingerprint

if TYPE_CHECKING:
    from gateway.config.gateway import GatewayConfig
    from gateway.config.proxy import ProxyConfig
    from gateway.dns.chain import Resolver
    from gateway.dns.dot import DotServer, ReloadableContext
    from gateway.feeds.manager import FeedManager
    from gateway.runtime.metrics import Metrics
    from gateway.runtime.sdnotify import Notifier

log = logging.getLogger(__name__)


class Reloading(ABC):
    """The reload half of the running gateway (a base of runtime.app.Gateway, which owns the
    attributes below and installs what is built)."""

    config_path: Path
    builder: Builder
    loaded: Loaded | None
    resolver: Resolver | None
    metrics: Metrics
    notifier: Notifier
    dot: DotServer | None
    web_tls: ReloadableContext | None
    feeds: FeedManager | None
    proxy: ProxySupervisor | None
    _reload_lock: asyncio.Lock
    _watched: tuple[tuple[str, int, int, int], ...]
    _stop: asyncio.Event
    # The last reload attempt (the admin page's status): when, and what failed ("" if none).
    last_reload_at: float = 0.0
    last_reload_error: str = ""

    @abstractmethod
    def _install(self, loaded: Loaded) -> None:
        """Put a built configuration in force (the listeners and resolver are the Gateway's)."""

    @abstractmethod
    def _publish(self) -> None:
        """Tell workers and systemd what is now in force."""

    async def reload(self, why: str) -> bool:
        """Build aside and swap; on any error keep serving what runs now and say why."""
        async with self._reload_lock:
            log.info("reloading (%s)", why)
            self.last_reload_at = time.time()
            self.notifier.reloading()
            try:
                return await self._reload()
            except Exception:
                # A bug, or a file no check foresaw: what runs stays, and so must the watcher
                # (an exception out of here used to end it, and later edits were ignored).
                log.exception("reload failed unexpectedly, keeping the running configuration")
                self.last_reload_error = "unexpected error (see the log)"
                self._reload_failed()
                return False
            finally:
                self.notifier.ready(self._status())

    def _status(self) -> str:
        """One line for `systemctl status`."""
        if self.loaded is None:
            return "loading"
        return (f"serving generation {self.loaded.view.generation}: "
                f"{len(self.loaded.policy.networks)} networks, {self.loaded.index.size} list "
                "entries")

    async def _reload(self) -> bool:
        """One reload attempt (the caller holds the lock and tells systemd)."""
        try:
            loaded = await self.builder.build(self.loaded)
        except (ConfigError, ConfigErrors, SafeGateError, OSError) as exc:
            for line in str(exc).splitlines():
                log.error("reload failed, keeping the running configuration: %s", line)
            self.last_reload_error = str(exc)
            self._reload_failed()
            return False
        if loaded.config.dns_listen != self.loaded.config.dns_listen if self.loaded else False:
            log.warning("dns.listen changed: restart SafeGate for new listeners to apply")
        for key in ("local_records", "forward_zones"):
            if self.loaded and getattr(loaded.config, key) != getattr(self.loaded.config, key):
                log.warning("dns.%s changed: restart SafeGate for it to apply", key)
        if self.loaded is not None:
            _warn_listeners(self.loaded.config, loaded.config)
        self._reload_tls(loaded)
        if self.feeds is not None:
            self.feeds.config_changed(loaded.config)
        elif loaded.config.feeds:
            log.warning("feeds were added: restart SafeGate for them to apply")
        before = self.loaded.config.proxy if self.loaded else None
        self._install(loaded)
        self.last_reload_error = ""
        log.info("reloaded: generation %d, %d list entries", loaded.view.generation,
                 loaded.index.size)
        await self._reload_proxy(before, loaded.config.proxy)
        return True

    async def _reload_proxy(self, before: ProxyConfig | None, now: ProxyConfig) -> None:
        """proxy.enabled starts or stops the child; other proxy settings restart it (its
        listeners are bound at start; its rules it reloads by itself)."""
        if self.proxy is not None and (not now.enabled or now != before):
            proxy, self.proxy = self.proxy, None
            log.info("proxy settings changed: stopping the proxy")
            await proxy.stop()
        if now.enabled and self.proxy is None:
            log.info("proxy enabled: starting the proxy")
            self.proxy = ProxySupervisor(proxy_command(self.config_path))
            self.proxy.start()

    def _reload_failed(self) -> None:
        """Count a failed reload; don't retry the same broken files every poll."""
        self.metrics.reloads.labels("failure").inc()
        self.metrics.last_reload_ok.set(0)
        try:
            self._watched = fingerprint(watched_files(self.config_path, self.loaded))
        except Exception:
            log.exception("cannot stat the watched files")

    def _reload_tls(self, loaded: Loaded) -> None:
        """New certificates for new connections (the files were checked loadable just now)."""
        for what, running, tls in (("dns.tls", self.dot.context if self.dot else None,
                                    loaded.config.dot),
                                   ("web.tls", self.web_tls, loaded.config.web_tls)):
            if tls is None or running is None:
                if (tls is None) != (running is None):
                    log.warning("%s added or removed: restart SafeGate for it to apply", what)
                continue
            if what == "dns.tls" and self.dot and tls.listen != tuple(self.dot.listen):
                log.warning("dns.tls.listen changed: restart SafeGate for it to apply")
            try:
                running.reload(tls.cert, tls.key)
            except (OSError, ValueError) as exc:
                log.error("%s: keeping the running certificate: %s", what, exc)

    def set_overlay(self, name: str, overlay: Overlay | None) -> int:
        """Put a feed's rules in force (None removes them); atomic like a reload.

        Returns the new view generation. The compiled lists are not touched.
        """
        if self.loaded is None or self.resolver is None:
            raise SafeGateError("the gateway is not running yet")
        if overlay is None:
            self.builder.overlays.pop(name, None)
        else:
            self.builder.overlays[name] = overlay
        self.loaded = self.builder.rebuild_view(self.loaded)
        self.resolver.swap(self.loaded.view)
        self._publish()
        return self.loaded.view.generation

    async def watch(self) -> None:
        """Poll the config, policy and list files' stat() and reload when anything changes."""
        while not self._stop.is_set():
            interval = self.loaded.config.watch_interval if self.loaded else 2.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
            if self._stop.is_set():
                return
            try:
                current = fingerprint(watched_files(self.config_path, self.loaded))
                if current != self._watched:
                    await self.reload("files changed")
            except Exception:
                # Whatever went wrong, keep watching: the next edit may fix it.
                log.exception("file watcher: reload failed")
                self.metrics.reloads.labels("failure").inc()
                self.metrics.last_reload_ok.set(0)

    async def schedule_timer(self) -> None:
        """Swap in new profiles at each schedule window edge (issue #4), so that the query path
        never reads a clock: the decision sees the categories open windows add in the profile.
        """
        while not self._stop.is_set():
            delay = MAX_SLEEP
            if self.loaded is not None:
                delay = schedule_delay(self.loaded, self.builder.clock())
            with contextlib.suppress(TimeoutError):
                # Just after the edge, never just before it; and at least once a minute, which
                # catches a reload that built its view just before an edge and a clock that jumped
                # (the check is a few set operations; nothing is rebuilt unless windows changed).
                await asyncio.wait_for(self._stop.wait(), min(delay + 0.05, 60.0))
            if self._stop.is_set():
                return
            self.apply_schedule()

    def apply_schedule(self) -> bool:
        """Rebuild the view if the open windows changed since it was built; True if swapped."""
        if self.loaded is None or self.resolver is None:
            return False
        if not schedule_changed(self.loaded, self.builder.clock()):
            return False
        self.loaded = self.builder.rebuild_view(self.loaded)
        self.resolver.swap(self.loaded.view)
        self._publish()
        log.info("schedule windows changed: generation %d", self.loaded.view.generation)
        return True


def _warn_listeners(old: GatewayConfig, new: GatewayConfig) -> None:
    """Web listeners are bound at start: an `admin:` section saved to a running gateway would
    otherwise be ignored without a word (the page "does not work")."""
    was = old.admin.listen if old.admin is not None else None
    now = new.admin.listen if new.admin is not None else None
    for key, before, after in (("web.listen", old.web_listen, new.web_listen),
                               ("metrics.listen", old.metrics_listen, new.metrics_listen),
                               ("admin.listen" if was and now else "admin", was, now)):
        if before != after:
            log.warning("%s %s: restart SafeGate for it to apply", key,
                        "changed" if before and after else "added" if after else "removed")
