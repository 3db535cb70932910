"""The proxy's answers for blocked URLs: gateway/blockpage/page.py's page, 451 or 403."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.blockpage.model import BlockInfo
from gateway.blockpage.page import render_block
from gateway.config.addresses import format_address
from gateway.config.gateway import GatewayConfig
from gateway.proxy.rules import LEGAL, UrlVerdict

# A 1x1 transparent GIF: what a browser gets instead of an image that matched a hash entry.
PLACEHOLDER_GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01"
                   b"\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def report_url(config: GatewayConfig) -> str:
    """Absolute URL of the gateway's POST /report (the page is served from another origin)."""
    scheme = "https" if config.web_tls is not None else "http"
    host = format_address((config.blockpage_addresses[0], config.web_listen[0][1]))
    return f"{scheme}://{host}/report"


class BlockPages:
    """Renders a UrlVerdict for a URL; clock and CSRF minting (address, now) are passed in."""

    def __init__(self, config: GatewayConfig, csrf: Callable[[str, float], str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.tz = ZoneInfo(config.timezone)
        self.report_url = report_url(config)
        self.csrf = csrf
        self.clock = clock

    def render(self, verdict: UrlVerdict, target: str, tier: str, headers: Mapping[str, str],
               client: str = "") -> tuple[int, dict[str, str], bytes]:
        """The page for `client` (its address: the report form's token is bound to it)."""
        entry = verdict.entry
        legal = entry.legal if entry is not None else None
        info = BlockInfo(
            target=target, category=verdict.category, reason="url",
            legal=verdict.action == LEGAL,
            authority=legal.authority if legal else "",
            decision=legal.decision if legal else "",
            decision_date=legal.date if legal else "",
            entry_id=entry.id if entry is not None else "", tier=tier)
        now = self.clock()
        return render_block(info, headers, now=datetime.fromtimestamp(now, self.tz),
                            report_url=self.report_url,
                            csrf=self.csrf(client, now) if self.csrf is not None else "")
