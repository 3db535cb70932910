"""The block page: what a person sees when SafeGate blocked a name or a URL, vi and en.

Pure rendering (no I/O, no clock: `now` is passed in), shared by the gateway's web listener
(names blocked by DNS) and the proxy (URL-level blocks, issue 5). Everything echoed is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode, urlsplit

HOTLINE = "111"
LANGS = ("vi", "en")


@dataclass(frozen=True)
class BlockInfo:
    """Why one host or URL is blocked for the asking client."""

    target: str            # host or URL as the user asked for it (echoed escaped)
    category: str          # e.g. "adult", "gambling", "csam", "games"
    # policy | schedule | deny | mandatory | allowlist-only | bypass | url | hash
    reason: str
    legal: bool            # a legal order (mandatory entry): HTTP 451 (RFC 7725), else 403
    authority: str = ""    # legal_basis.authority (feed entry)
    decision: str = ""     # legal_basis.decision (decision number)
    decision_date: str = ""  # legal_basis.date, YYYY-MM-DD
    entry_id: str = ""     # feed entry id, when a feed entry decided
    tier: str = ""         # the age tier (mam-non, tieu-hoc, thcs, thpt, ...)

    @property
    def status(self) -> int:
        return 451 if self.legal else 403


# Human labels; an unknown category is shown as its identifier.
CATEGORY_LABELS: dict[str, tuple[str, str]] = {
    "adult": ("Nội dung người lớn", "Adult content"),
    "gambling": ("Cờ bạc", "Gambling"),
    "csam": ("Xâm hại tình dục trẻ em", "Child sexual abuse material"),
    "games": ("Trò chơi trực tuyến", "Online games"),
    "social": ("Mạng xã hội", "Social networks"),
    "bypass": ("Vượt tường lửa (VPN, DNS mã hoá)", "Filter bypass (VPN, encrypted DNS)"),
    "ads": ("Quảng cáo", "Advertising"),
    "violence": ("Bạo lực", "Violence"),
    "drugs": ("Ma tuý", "Drugs"),
    "chat": ("Trò chuyện trực tuyến", "Online chat"),
    "dating": ("Hẹn hò", "Dating"),
    "malware": ("Phần mềm độc hại, lừa đảo", "Malware and scams"),
    "streaming": ("Xem phim, nghe nhạc trực tuyến", "Streaming"),
    "deny": ("Bị chặn theo danh sách của mạng", "On this network's block list"),
    "allowlist-only": ("Không có trong danh sách được phép", "Not on the allowed list"),
}

_TIER_LABELS: dict[str, tuple[str, str]] = {
    "mam-non": ("mầm non", "pre-school"),
    "tieu-hoc": ("tiểu học", "primary school"),
    "thcs": ("THCS", "lower secondary"),
    "thpt": ("THPT", "upper secondary"),
}

# Per language: every sentence on the page. `{x}` fields are filled with escaped values.
_TEXT: dict[str, dict[str, str]] = {
    "vi": {
        "title": "Trang bị chặn",
        "h1": "Trang này đã bị chặn",
        "h1_legal": "Nội dung bị gỡ bỏ theo yêu cầu pháp lý",
        "target": "Địa chỉ",
        "category": "Danh mục",
        "why": "Lý do",
        "time": "Thời gian",
        "tier": "Cấp học",
        "policy": "Chính sách bảo vệ trẻ em của trường / mạng này chặn danh mục này.",
        "schedule": "Danh mục này bị chặn trong khung giờ hiện tại (giờ học hoặc ban đêm).",
        "deny": "Quản trị mạng đã đưa địa chỉ này vào danh sách chặn.",
        "allowlist-only": "Mạng này chỉ cho phép các trang trong danh sách được duyệt.",
        "bypass": "Dịch vụ này giúp vượt qua bộ lọc bảo vệ trẻ em nên bị chặn.",
        "url": "Trang này bị chặn theo danh sách địa chỉ của cơ quan chức năng.",
        "hash": "Hình ảnh trên trang này trùng với cơ sở dữ liệu nội dung bị cấm.",
        "mandatory": "Bị chặn theo quyết định của cơ quan có thẩm quyền; không thể bỏ chặn.",
        "authority": "Cơ quan ban hành",
        "decision": "Số quyết định",
        "date": "Ngày quyết định",
        "entry": "Mã mục",
        "hotline": "Cần hỗ trợ? Gọi Tổng đài quốc gia bảo vệ trẻ em {hotline} (miễn phí, 24/7).",
        "mistake": "Báo chặn nhầm",
        "harmful": "Báo cáo nội dung độc hại",
        "comment": "Ghi chú (không bắt buộc)",
        "contact": "Liên hệ để nhận phản hồi (không bắt buộc)",
        "send": "Gửi",
        "switch": "English",
        "text": "Bị chặn bởi SafeGate",
    },
    "en": {
        "title": "Page blocked",
        "h1": "This page is blocked",
        "h1_legal": "Unavailable for legal reasons",
        "target": "Address",
        "category": "Category",
        "why": "Why",
        "time": "Time",
        "tier": "Age group",
        "policy": "This school's / network's child-protection policy blocks this category.",
        "schedule": "This category is blocked at this time (class hours or night).",
        "deny": "The network administrator put this address on the block list.",
        "allowlist-only": "This network only allows sites on its approved list.",
        "bypass": "This service gets around child-protection filtering, so it is blocked.",
        "url": "This page is on an authority's list of blocked addresses.",
        "hash": "An image on this page matches a database of prohibited content.",
        "mandatory": "Blocked by order of a competent authority; it cannot be unblocked.",
        "authority": "Authority",
        "decision": "Decision number",
        "date": "Decision date",
        "entry": "Entry id",
        "hotline": "Need help? Call the national child protection hotline {hotline} "
                   "(free, 24/7).",
        "mistake": "Report this as a mistake",
        "harmful": "Report harmful content",
        "comment": "Comment (optional)",
        "contact": "Contact for a reply (optional)",
        "send": "Send",
        "switch": "Tiếng Việt",
        "text": "Blocked by SafeGate",
    },
}

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:42em;margin:2em auto;padding:0 1em;"
          "color:#222}h1{color:#b00020}dt{font-weight:600;margin-top:.5em}dd{margin-left:1em;"
          "overflow-wrap:anywhere}form{border:1px solid #ddd;padding:.5em 1em;margin:1em 0}"
          "textarea,input[type=text]{width:100%;box-sizing:border-box}.lang{float:right}")


def choose_lang(headers: Mapping[str, str], lang: str | None = None) -> str:
    """`lang` if it names one we have, else the first of ours in Accept-Language, else vi."""
    if lang in LANGS:
        return lang
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(headers.get("Accept-Language", "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        base = tag.strip().lower().split("-", 1)[0]
        if base in LANGS and q > 0:
            ranked.append((-q, i, base))
    return sorted(ranked)[0][2] if ranked else "vi"


def category_label(category: str, lang: str) -> str:
    labels = CATEGORY_LABELS.get(category)
    if labels is None:
        return category
    return labels[LANGS.index(lang)]


def _why(info: BlockInfo, t: Mapping[str, str]) -> str:
    if info.legal:
        return t["mandatory"]
    return t.get(info.reason, t["policy"])


def wants_html(headers: Mapping[str, str]) -> bool:
    """Browsers ask for text/html; curl, apps and health checks get the short text body."""
    return "text/html" in headers.get("Accept", "")


def render_block(info: BlockInfo, headers: Mapping[str, str], *, now: datetime,
                 report_url: str, lang: str | None = None, csrf: str = ""
                 ) -> tuple[int, dict[str, str], bytes]:
    """(status, response headers, body): HTML for browsers (Accept: text/html), a tiny
    text body otherwise; Vietnamese by default, English via Accept-Language or `lang`.

    `report_url` is the absolute URL of the gateway's report handler (POST). `csrf` is a token
    from gateway.reports.csrf; without one (the proxy) the gateway answers the first POST with
    a confirmation form that carries a fresh token, so a report is never silently dropped.
    """
    chosen = choose_lang(headers, lang)
    out = {"Cache-Control": "no-store", "Vary": "Accept, Accept-Language",
           "Content-Language": chosen}
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
    t = _TEXT[lang]
    target = "".join(ch for ch in info.target if ch.isprintable())[:300]
    line = f"{t['text']}: {target} ({info.category})"
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


def render_html(info: BlockInfo, lang: str, now: datetime, report_url: str,
                csrf: str) -> str:
    """The full page in `lang`; `csrf` goes into both report forms as a hidden field."""
    t = _TEXT[lang]
    e = _esc
    rows = [(t["target"], f"<strong id=\"target\">{e(info.target)}</strong>"),
            (t["category"], e(category_label(info.category, lang))),
            (t["why"], e(_why(info, t)))]
    if info.legal:
        for key, value in (("authority", info.authority), ("decision", info.decision),
                           ("date", info.decision_date)):
            if value:
                rows.append((t[key], e(value)))
    if info.entry_id:
        rows.append((t["entry"], f"<code>{e(info.entry_id)}</code>"))
    if info.tier:
        label = _TIER_LABELS.get(info.tier)
        rows.append((t["tier"], e(label[LANGS.index(lang)] if label else info.tier)))
    rows.append((t["time"], f"<time datetime=\"{e(now.isoformat(timespec='seconds'))}\">"
                            f"{e(now.strftime('%Y-%m-%d %H:%M:%S %Z'))}</time>"))
    other = "en" if lang == "vi" else "vi"
    items = "\n".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    hotline = t["hotline"].format(hotline=f"<strong>{HOTLINE}</strong>")
    return (
        f"<!doctype html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta name=\"robots\" content=\"noindex\">\n"
        f"<title>{e(t['title'])} - SafeGate</title><style>{_STYLE}</style></head><body>\n"
        f"<a class=\"lang\" lang=\"{other}\" href=\"?{e(urlencode({'lang': other}))}\">"
        f"{e(t['switch'])}</a>\n"
        f"<h1>{e(t['h1_legal'] if info.legal else t['h1'])}</h1>\n<dl>\n{items}\n</dl>\n"
        f"<p id=\"hotline\">{hotline}</p>\n"
        + render_forms(info, lang, report_url, csrf)
        + "</body></html>\n")


def render_forms(info: BlockInfo, lang: str, report_url: str, csrf: str) -> str:
    """The two report forms ("mistake", "harmful"), posting to the gateway's report URL."""
    t = _TEXT[lang]
    e = _esc
    hidden = {"target": info.target, "category": info.category, "entry_id": info.entry_id,
              "lang": lang, "csrf": csrf}
    fields = "".join(f"<input type=\"hidden\" name=\"{k}\" value=\"{e(v)}\">"
                     for k, v in hidden.items())
    forms = []
    for kind in ("mistake", "harmful"):
        forms.append(
            f"<form id=\"report-{kind}\" method=\"post\" action=\"{e(report_url)}\">"
            f"<h2>{e(t[kind])}</h2><input type=\"hidden\" name=\"kind\" value=\"{kind}\">"
            f"{fields}<label>{e(t['comment'])}<br>"
            "<textarea name=\"comment\" maxlength=\"1000\" rows=\"3\"></textarea></label><br>"
            f"<label>{e(t['contact'])}<br><input type=\"text\" name=\"contact\" "
            "maxlength=\"200\"></label><br>"
            f"<button type=\"submit\">{e(t['send'])}</button></form>\n")
    return "".join(forms)


def _esc(value: str) -> str:
    """HTML-escape for text and double-quoted attributes; control characters dropped."""
    return html.escape("".join(ch for ch in value if ch.isprintable() or ch in "\t"), quote=True)
