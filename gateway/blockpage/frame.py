"""The HTML frame every page of ours shares: the style sheet, CSP/security headers, escaping.

Pure; everything echoed goes through esc().
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
from urllib.parse import urlsplit

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:42em;margin:2em auto;padding:0 1em;"
          "color:#222}h1{color:#b00020}dt{font-weight:600;margin-top:.5em}dd{margin-left:1em;"
          "overflow-wrap:anywhere}form{border:1px solid #ddd;padding:.5em 1em;margin:1em 0}"
          "textarea,input[type=text]{width:100%;box-sizing:border-box}.lang{float:right}")
# The one inline style sheet, allowed by its hash: no 'unsafe-inline', no script at all.
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()


def security_headers(report_url: str = "") -> dict[str, str]:
    """What every page of ours carries: no script, no plugin, no framing (clickjacking the
    report form), no MIME sniffing, no Referer (a block page's URL names what was blocked),
    and forms may only post to us (this origin and the report handler's)."""
    return dict(_security_headers(report_url))


@functools.lru_cache(maxsize=16)
def _security_headers(report_url: str) -> tuple[tuple[str, str], ...]:
    form_action = "'self'"
    parts = urlsplit(report_url)
    if parts.scheme in ("http", "https") and parts.netloc and not any(
            ch in parts.netloc for ch in " ;,'\"\r\n"):
        # CSP host sources have no IPv6 literal syntax: allow the scheme then (still no script).
        host = f"{parts.scheme}:" if "[" in parts.netloc else f"{parts.scheme}://{parts.netloc}"
        form_action += f" {host}"
    return (
        ("Content-Security-Policy", f"default-src 'none'; style-src '{STYLE_HASH}'; "
                                    f"form-action {form_action}; frame-ancestors 'none'; "
                                    "base-uri 'none'"),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    )


def page(lang: str, title: str, body: str) -> str:
    """A minimal page around `body` (already escaped)."""
    return (f"<!doctype html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<meta name=\"robots\" content=\"noindex\">\n"
            f"<title>{esc(title)} - SafeGate</title><style>{_STYLE}</style></head><body>\n"
            f"{body}\n</body></html>\n")


def esc(value: str, keep: str = "") -> str:
    """HTML-escape for text and double-quoted attributes; control characters dropped."""
    return html.escape("".join(ch for ch in value if ch.isprintable() or ch in keep), quote=True)

