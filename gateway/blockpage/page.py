"""The block page, in Vietnamese and English: HTML with the two report forms, or a short text.

Pure rendering (no I/O, no clock: `now` is passed in), shared by the gateway's web listener
(names blocked by DNS) and the proxy (URL-level blocks, issue 5). Everything echoed is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from urllib.parse import urlencode, urlsplit

from gateway.blockpage.frame import esc, page, security_headers
from gateway.blockpage.model import (
    HOTLINE,
    LANGS,
    NOT_BLOCKED,
    TEXT,
    TIER_LABELS,
    BlockInfo,
    category_label,
    choose_lang,
    wants_html,
)


def render_block(info: BlockInfo, headers: Mapping[str, str], *, now: datetime,
                 report_url: str, lang: str | None = None, csrf: str = ""
                 ) -> tuple[int, dict[str, str], bytes]:
    """(status, response headers, body): HTML for browsers (Accept: text/html), a tiny
    text body otherwise; Vietnamese by default, English via Accept-Language or `lang`.

    `report_url` is the absolute URL of the gateway's report handler (POST). `csrf` is a token
    from gateway.hotline.csrf; without one (the proxy) the gateway answers the first POST with
    a confirmation form that carries a fresh token, so a report is never silently dropped.
    """
    chosen = choose_lang(headers, lang)
    out = {"Cache-Control": "no-store", "Vary": "Accept, Accept-Language",
           "Content-Language": chosen, **security_headers(report_url)}
    if info.legal and _is_url(info.authority):
        out["Link"] = f'<{info.authority}>; rel="blocked-by"'
    if not wants_html(headers):
        out["Content-Type"] = "text/plain; charset=utf-8"
        body = _text(info, chosen)
        return info.status, out, body.encode("utf-8")
    out["Content-Type"] = "text/html; charset=utf-8"
    return info.status, out, render_html(info, chosen, now, report_url, csrf).encode("utf-8")


def _text(info: BlockInfo, lang: str) -> str:
    """One or two lines; the target is echoed without control characters."""
    t = TEXT[lang]
    target = "".join(ch for ch in info.target if ch.isprintable())[:300]
    if info.reason == NOT_BLOCKED:
        return f"{t['text_not_blocked']}: {target}\n"
    line = f"{t['text']}: {target} ({info.category})"
    if info.reason in ("quota", "quota-full"):   # time, not content: say so
        line += f"\n{t[info.reason]}"
    if info.legal:
        parts = [p for p in (info.authority, info.decision, info.decision_date, info.entry_id)
                 if p]
        line += f"\n{t['mandatory']} {' '.join(parts)}".rstrip()
        line = "".join(ch for ch in line if ch.isprintable() or ch == "\n")
    return line + "\n"


def _is_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not any(
        ch in text for ch in '<>"\r\n ')


def _why(info: BlockInfo, t: Mapping[str, str]) -> str:
    if info.legal:
        return t["mandatory"]
    return t.get(info.reason, t["policy"])


def render_html(info: BlockInfo, lang: str, now: datetime, report_url: str,
                csrf: str) -> str:
    """The full page in `lang`; `csrf` goes into both report forms as a hidden field."""
    t = TEXT[lang]
    e = esc
    unblocked = info.reason == NOT_BLOCKED
    rows = [(t["target"], f"<strong id=\"target\">{e(info.target)}</strong>")]
    if not unblocked:
        rows.append((t["category"], e(category_label(info.category, lang))))
    rows.append((t["why"], e(_why(info, t))))
    if info.legal:
        for key, value in (("authority", info.authority), ("decision", info.decision),
                           ("date", info.decision_date)):
            if value:
                rows.append((t[key], e(value)))
    if info.entry_id:
        rows.append((t["entry"], f"<code>{e(info.entry_id)}</code>"))
    if info.tier:
        label = TIER_LABELS.get(info.tier)
        rows.append((t["tier"], e(label[LANGS.index(lang)] if label else info.tier)))
    rows.append((t["time"], f"<time datetime=\"{e(now.isoformat(timespec='seconds'))}\">"
                            f"{e(now.strftime('%Y-%m-%d %H:%M:%S %Z'))}</time>"))
    other = "en" if lang == "vi" else "vi"
    items = "\n".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    hotline = t["hotline"].format(hotline=f"<strong>{HOTLINE}</strong>")
    body = (f"<a class=\"lang\" lang=\"{other}\" href=\"?{e(urlencode({'lang': other}))}\">"
            f"{e(t['switch'])}</a>\n"
            f"<h1>{e(t[_heading(info)])}</h1>\n<dl>\n{items}\n</dl>\n"
            f"<p id=\"hotline\">{hotline}</p>\n" + render_forms(info, lang, report_url, csrf))
    return page(lang, t["h1_not_blocked"] if unblocked else t["title"], body)


def _heading(info: BlockInfo) -> str:
    if info.legal:
        return "h1_legal"
    return "h1_not_blocked" if info.reason == NOT_BLOCKED else "h1"


def render_forms(info: BlockInfo, lang: str, report_url: str, csrf: str) -> str:
    """The two report forms ("mistake", "harmful"), posting to the gateway's report URL."""
    return "".join(_form(kind, info.target, info.category, info.entry_id, lang, report_url,
                         csrf) for kind in ("mistake", "harmful"))


def _form(kind: str, target: str, category: str, entry_id: str, lang: str, report_url: str,
          csrf: str) -> str:
    """One form; an empty `target` becomes a field the person fills in (GET /report)."""
    t = TEXT[lang]
    e = esc
    hidden = {"kind": kind, "target": target, "category": category, "entry_id": entry_id,
              "lang": lang, "csrf": csrf}
    if not target:
        del hidden["target"]
    fields = "".join(f"<input type=\"hidden\" name=\"{k}\" value=\"{e(v)}\">"
                     for k, v in hidden.items())
    if not target:
        fields += (f"<label>{e(t['form_target'])}<br><input type=\"text\" name=\"target\" "
                   "maxlength=\"2048\" required></label><br>")
    return (f"<form id=\"report-{e(kind)}\" method=\"post\" action=\"{e(report_url)}\">"
            f"<h2>{e(t.get(kind, kind))}</h2>{fields}<label>{e(t['comment'])}<br>"
            "<textarea name=\"comment\" maxlength=\"1000\" rows=\"3\"></textarea></label><br>"
            f"<label>{e(t['contact'])}<br><input type=\"text\" name=\"contact\" "
            "maxlength=\"200\"></label><br>"
            f"<button type=\"submit\">{e(t['send'])}</button></form>\n")

