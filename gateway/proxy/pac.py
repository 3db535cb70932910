"""GET /proxy.pac on the gateway's web listener: browsers send the intercept set to the proxy.

Only names in the intercept set (read from the file the proxy writes) go through the explicit
proxy; everything else goes DIRECT and stays under DNS filtering. Without the file yet (the
proxy has not started), or with a very large set, everything goes through the proxy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from gateway.config.addresses import format_address
from gateway.config.gateway import GatewayConfig
from gateway.proxy.intercept import INTERCEPT_FILE, read_intercept_file

MAX_LISTED = 20_000      # beyond this a PAC file gets slow to evaluate: send everything
PAC_TYPE = "application/x-ns-proxy-autoconfig"


def pac_text(proxy: str, hosts: list[str] | None) -> str:
    """The PAC script; `hosts` None means every http(s) request goes through `proxy`."""
    if hosts is None or len(hosts) > MAX_LISTED:
        return (f"function FindProxyForURL(url, host) {{\n"
                f"  if (url.substring(0, 5) == \"http:\" || url.substring(0, 6) == \"https:\")\n"
                f"    return \"PROXY {proxy}\";\n  return \"DIRECT\";\n}}\n")
    table = json.dumps({h: 1 for h in hosts}, separators=(",", ":"))
    return (f"var SAFEGATE = {table};\n"
            "function FindProxyForURL(url, host) {\n"
            "  host = host.toLowerCase();\n"
            "  for (var name = host; name; ) {\n"
            f"    if (SAFEGATE.hasOwnProperty(name)) return \"PROXY {proxy}\";\n"
            "    var dot = name.indexOf(\".\");\n"
            "    if (dot < 0) break;\n"
            "    name = name.substring(dot + 1);\n"
            "  }\n"
            "  return \"DIRECT\";\n"
            "}\n")


def pac_mount(config: Callable[[], GatewayConfig | None]) -> Callable[[web.Application], None]:
    """A mount for gateway.runtime.web.blockpage_app: adds GET /proxy.pac.

    Only with proxy.enabled.
    """

    async def handler(request: web.Request) -> web.Response:
        cfg = config()
        if cfg is None or not cfg.proxy.enabled:
            raise web.HTTPNotFound(text="the proxy is not enabled\n")
        proxy = format_address((cfg.proxy.public_address, cfg.proxy.listen[1]))
        path: Path = cfg.state_dir / INTERCEPT_FILE
        try:
            hosts: list[str] | None = [n.decode() for n in read_intercept_file(path)]
        except OSError:
            hosts = None
        return web.Response(text=pac_text(proxy, hosts), content_type=PAC_TYPE,
                            headers={"Cache-Control": "max-age=300"})

    def mount(app: web.Application) -> None:
        app.router.add_get("/proxy.pac", handler)

    return mount
