"""A plain list feed (unauthenticated hosts/domains/RPZ text): one category, conditional GETs.

Stored as STATE_DIR/feeds/NAME.list + NAME.meta.json (ETag, Last-Modified, sha256), applied
again at start-up. Names covering a never_block name are refused; a big change is held.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass

from gateway.feeds.context import FeedContext, Fetch, Rejected
from gateway.feeds.hold import HoldGuard, change_limit, count_changes, covered_name
from gateway.lists import Action, ParsedRule, Rule
from gateway.lists.overlay import Overlay
from gateway.lists.parsers import parse
from gateway.util.atomic import atomic_write
from gateway.util.httpfetch import conditional_headers

log = logging.getLogger(__name__)


@dataclass
class PlainApplied:
    digest: str
    rules: dict[bytes, tuple[Rule, ...]]
    etag: str = ""
    last_modified: str = ""


class PlainFeed:
    """The plain half of a feed client: the list in force and how to refresh it."""

    def __init__(self, ctx: FeedContext, fetch: Fetch, hold: HoldGuard) -> None:
        self.ctx = ctx
        self.fetch = fetch
        self.hold = hold
        self.plain: PlainApplied | None = None
        self.busy = False            # plain updates are applied in one step

    def load_local(self) -> bool:
        ctx = self.ctx
        body_path, meta_path = ctx.dir / f"{ctx.name}.list", ctx.dir / f"{ctx.name}.meta.json"
        if not body_path.exists():
            log.warning("feed %s: no stored copy; nothing enforced until the first download",
                        ctx.name)
            return False
        body = body_path.read_bytes()
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        self._install(body, str(meta.get("etag", "")), str(meta.get("last_modified", "")))
        log.info("feed %s: stored copy applied from disk (%d names)", ctx.name,
                 len(self.plain.rules) if self.plain else 0)
        return True

    async def poll(self) -> str:
        plain = self.plain
        headers = conditional_headers(plain.etag, plain.last_modified) if plain else {}
        status, body, resp_headers = await self.fetch({}, headers, 60.0)
        if status == 304:
            self.ctx.success()
            return "unchanged"
        etag = resp_headers.get("ETag", "")
        modified = resp_headers.get("Last-Modified", "")
        result = self.accept(body, etag, modified)
        if result != "held":
            self.ctx.success()
        return result

    def accept(self, body: bytes, etag: str = "", last_modified: str = "", *,
               confirmed: bool = False) -> str:
        ctx = self.ctx
        digest = hashlib.sha256(body).hexdigest()
        if self.plain is not None and digest == self.plain.digest:
            self.plain.etag, self.plain.last_modified = etag, last_modified
            return "unchanged"
        rules = self._rules(body)
        current = self.plain.rules if self.plain else {}
        changes = count_changes(current, rules)
        limit = change_limit(len(current), ctx.guard)
        if self.plain is not None and changes > limit and not confirmed:
            self.hold.hold(body, json.dumps({"etag": etag, "last_modified": last_modified}),
                           digest, 0, changes, len(current), limit)
            raise Rejected("guard", f"update changes {changes} names (limit {limit}); held "
                                    f"until `safegate feeds confirm --feed {ctx.name}`")
        atomic_write(ctx.dir / f"{ctx.name}.list", body)
        atomic_write(ctx.dir / f"{ctx.name}.meta.json", json.dumps(
            {"etag": etag, "last_modified": last_modified, "sha256": digest}).encode())
        self._install(body, etag, last_modified)
        self.hold.clear()
        return "updated"

    def _rules(self, body: bytes) -> dict[bytes, tuple[Rule, ...]]:
        cfg = self.ctx.cfg
        assert cfg.category is not None
        scopes: dict[tuple[bytes, Action], int] = defaultdict(int)
        for item in parse(cfg.type, body.decode("utf-8", "replace").splitlines()):
            if isinstance(item, ParsedRule):
                scopes[(item.key, item.action)] |= item.scope
        rules: dict[bytes, list[Rule]] = defaultdict(list)
        for (key, action), scope in scopes.items():
            rules[key].append(Rule(cfg.category, scope, action, cfg.mandatory))
        return {k: tuple(v) for k, v in rules.items()}

    def _install(self, body: bytes, etag: str, last_modified: str) -> None:
        ctx = self.ctx
        rules = self._rules(body)
        refused = [k for k, combo in rules.items()
                   if any(r.action != Action.PASSTHRU for r in combo)
                   and covered_name(k.decode(), ctx.guard.never_block)]
        for key in refused:
            del rules[key]
            ctx.metrics.refused.labels(ctx.name).inc()
        if refused:
            log.warning("feed %s: %d names refused because they cover never_block names (e.g. "
                        "%s)", ctx.name, len(refused), refused[0].decode())
        ctx.target.set_overlay(ctx.name, Overlay(rules))
        self.plain = PlainApplied(hashlib.sha256(body).hexdigest(), rules, etag, last_modified)
        assert ctx.cfg.category is not None
        ctx.metrics.set_entries(ctx.name, {ctx.cfg.category: len(rules)})
        log.info("feed %s: %d names in force in category %s%s", ctx.name, len(rules),
                 ctx.cfg.category, " (mandatory)" if ctx.cfg.mandatory else "")
