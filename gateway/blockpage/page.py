"""The pages people see, in Vietnamese and English: the block page, the answer to a report,
and the proxy CA onboarding page.

Pure rendering (no I/O, no clock: `now` is passed in), shared by the gateway's web listener
(names blocked by DNS) and the proxy (URL-level blocks, issue 5). Everything echoed is escaped.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

if TYPE_CHECKING:
    from gateway.feedformat.document import LegalBasis
    from gateway.policy.decide import Verdict

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


NOT_BLOCKED = "not-blocked"


def not_blocked(target: str, tier: str = "") -> BlockInfo:
    """What the page says when the name is not blocked for the asking client (a stale answer
    in a browser's or device's cache led here): that, never "this page is blocked"."""
    return BlockInfo(target=target, category="", reason=NOT_BLOCKED, legal=False, tier=tier)


def from_verdict(target: str, verdict: Verdict, tier: str,
                 legal_basis: LegalBasis | None = None) -> BlockInfo | None:
    """What the page says for a DNS verdict (None if the name is not blocked).

    Mandatory entries are legal orders (451); `legal_basis` is the feed entry's, when a feed
    entry decided (see Ledger.legal_basis).
    """
    if not verdict.blocked:
        return None
    legal = verdict.reason == "mandatory"
    basis = legal_basis if legal else None
    return BlockInfo(target=target, category=verdict.category, reason=verdict.reason,
                     legal=legal, authority=basis.authority if basis else "",
                     decision=basis.decision if basis else "",
                     decision_date=basis.date if basis else "", entry_id=verdict.ref, tier=tier)


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
        "form_title": "Gửi báo cáo",
        "form_target": "Địa chỉ trang (tên miền hoặc URL)",
        "new_form": "Mở biểu mẫu báo cáo mới",
        "switch": "English",
        "text": "Bị chặn bởi SafeGate",
        "h1_not_blocked": "Trang này không bị chặn",
        "not-blocked": "SafeGate không chặn địa chỉ này cho mạng của bạn. Trình duyệt hoặc "
                       "thiết bị có thể còn nhớ một câu trả lời cũ; hãy thử lại sau ít phút.",
        "text_not_blocked": "Không bị chặn bởi SafeGate",
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
        "form_title": "Send a report",
        "form_target": "Page address (domain or URL)",
        "new_form": "Open a new report form",
        "switch": "Tiếng Việt",
        "text": "Blocked by SafeGate",
        "h1_not_blocked": "This page is not blocked",
        "not-blocked": "SafeGate does not block this address for your network. Your browser "
                       "or device may remember an old answer; try again in a few minutes.",
        "text_not_blocked": "Not blocked by SafeGate",
    },
}

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
    t = _TEXT[lang]
    target = "".join(ch for ch in info.target if ch.isprintable())[:300]
    if info.reason == NOT_BLOCKED:
        return f"{t['text_not_blocked']}: {target}\n"
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
        label = _TIER_LABELS.get(info.tier)
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
    t = _TEXT[lang]
    e = _esc
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


def render_report_form(headers: Mapping[str, str], *, report_url: str, csrf: str,
                       lang: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET /report: both forms, empty, with a fresh token (where a refused post leads)."""
    chosen = choose_lang(headers, lang)
    t = _TEXT[chosen]
    info = BlockInfo(target="", category="", reason="", legal=False)
    other = "en" if chosen == "vi" else "vi"
    body = (f"<a class=\"lang\" lang=\"{other}\" href=\"?lang={other}\">{_esc(t['switch'])}</a>\n"
            f"<h1>{_esc(t['form_title'])}</h1>\n" + render_forms(info, chosen, report_url, csrf))
    out = {"Cache-Control": "no-store", "Content-Language": chosen,
           "Content-Type": "text/html; charset=utf-8", **security_headers(report_url)}
    return 200, out, page(chosen, t["form_title"], body).encode("utf-8")


_RESULT: dict[str, dict[str, tuple[int, str]]] = {
    "vi": {
        "stored": (200, "Cảm ơn bạn. Báo cáo đã được ghi nhận và chuyển tới cơ quan phụ trách."),
        "csrf": (403, "Biểu mẫu này đã hết hạn hoặc không được mở trên thiết bị này, nên báo "
                      "cáo chưa được ghi nhận."),
        "reused": (409, "Biểu mẫu này đã được gửi rồi; báo cáo không được ghi nhận lần nữa."),
        "rate_limited": (429, "Mạng của bạn đã gửi quá nhiều báo cáo trong một giờ qua. Vui "
                              "lòng thử lại sau."),
        "invalid": (400, "Báo cáo không hợp lệ."),
    },
    "en": {
        "stored": (200, "Thank you. Your report was received and will be passed to the "
                        "responsible authority."),
        "csrf": (403, "This form has expired or was not opened on this device, so nothing "
                      "was recorded."),
        "reused": (409, "This form was already sent; it was not recorded again."),
        "rate_limited": (429, "Too many reports were sent from your network in the last hour. "
                              "Please try again later."),
        "invalid": (400, "This report is not valid."),
    },
}


def render_report_result(outcome: str, form: Mapping[str, str], headers: Mapping[str, str], *,
                         report_url: str, report_id: str = "", error: str = ""
                         ) -> tuple[int, dict[str, str], bytes]:
    """The answer to POST /report: thanks, too many, invalid, or (a missing, forged, expired,
    spent or someone else's token) a plain refusal with a link to a new, empty form. Nothing
    that was posted is echoed but the language: a forged post must not put its words on our
    page.
    """
    lang = choose_lang(headers, form.get("lang"))
    t = _TEXT[lang]
    status, message = _RESULT[lang][outcome]
    out = {"Cache-Control": "no-store", "Content-Language": lang,
           **security_headers(report_url)}
    if not wants_html(headers):
        out["Content-Type"] = "text/plain; charset=utf-8"
        text = message + (f" ({report_id})" if report_id else "") + (
            f"\n{error}" if error else "")
        return status, out, (text + "\n").encode("utf-8")
    body = [f"<p id=\"result\">{_esc(message)}</p>"]
    if report_id:
        body.append(f"<p><code id=\"report-id\">{_esc(report_id)}</code></p>")
    if error:
        body.append(f"<p id=\"error\">{_esc(error)}</p>")
    if outcome in ("csrf", "reused"):
        link = f"{report_url}?{urlencode({'lang': lang})}"
        body.append(f"<p><a id=\"new-form\" href=\"{_esc(link)}\">{_esc(t['new_form'])}</a></p>")
    body.append(f"<p id=\"hotline\">{t['hotline'].format(hotline=f'<strong>{HOTLINE}</strong>')}"
                "</p>")
    out["Content-Type"] = "text/html; charset=utf-8"
    return status, out, page(lang, t["title"], "\n".join(body)).encode("utf-8")


def page(lang: str, title: str, body: str) -> str:
    """A minimal page around `body` (already escaped)."""
    return (f"<!doctype html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<meta name=\"robots\" content=\"noindex\">\n"
            f"<title>{_esc(title)} - SafeGate</title><style>{_STYLE}</style></head><body>\n"
            f"{body}\n</body></html>\n")


def _esc(value: str, keep: str = "") -> str:
    """HTML-escape for text and double-quoted attributes; control characters dropped."""
    return html.escape("".join(ch for ch in value if ch.isprintable() or ch in keep), quote=True)


# Per platform: how to trust the CA, (vi, en). The file to use comes first.
_CA_STEPS: tuple[tuple[str, str, str, str], ...] = (
    ("Windows", "safegate-ca.cer",
     "Mở tệp .cer, chọn Install Certificate, chọn Local Machine, đặt vào "
     "\"Trusted Root Certification Authorities\", rồi Finish.",
     "Open the .cer file, choose Install Certificate, Local Machine, place it in "
     "\"Trusted Root Certification Authorities\", then Finish."),
    ("macOS", "safegate-ca.pem",
     "Mở tệp .pem bằng Keychain Access (keychain System), nhấp đúp chứng chỉ SafeGate, mục "
     "Trust chọn \"Always Trust\".",
     "Open the .pem file in Keychain Access (System keychain), double-click the SafeGate "
     "certificate and set Trust to \"Always Trust\"."),
    ("iOS / iPadOS", "safegate-ca.pem",
     "Tải tệp bằng Safari, vào Cài đặt > Đã tải về hồ sơ > Cài đặt; sau đó Cài đặt > Cài đặt "
     "chung > Giới thiệu > Cài đặt tin cậy chứng nhận, bật SafeGate.",
     "Download the file in Safari, then Settings > Profile Downloaded > Install; then "
     "Settings > General > About > Certificate Trust Settings and turn SafeGate on."),
    ("Android", "safegate-ca.cer",
     "Cài đặt > Bảo mật > Mã hoá và thông tin xác thực > Cài đặt chứng chỉ > Chứng chỉ CA, "
     "chọn tệp .cer đã tải.",
     "Settings > Security > Encryption & credentials > Install a certificate > CA "
     "certificate, and pick the downloaded .cer file."),
    ("ChromeOS", "safegate-ca.pem",
     "Mở chrome://settings/certificates, thẻ Authorities, Import, chọn tệp .pem, đánh dấu "
     "\"Trust this certificate for identifying websites\".",
     "Open chrome://settings/certificates, Authorities tab, Import, choose the .pem file and "
     "tick \"Trust this certificate for identifying websites\"."),
)

_CA_TEXT: dict[str, dict[str, str]] = {
    "vi": {
        "title": "Chứng chỉ bộ lọc HTTPS",
        "intro": "Bộ lọc HTTPS của SafeGate chỉ kiểm tra những trang mà cơ quan chức năng yêu "
                 "cầu chặn theo địa chỉ. Để các trang đó hiện trang thông báo thay vì lỗi bảo "
                 "mật, hãy cài chứng chỉ gốc dưới đây. Các trang khác không bị giải mã.",
        "download": "Tải chứng chỉ",
        "missing": "Bộ lọc HTTPS (proxy) chưa được bật trên cổng này, nên không có chứng chỉ "
                   "để cài. Bạn không cần làm gì thêm.",
        "switch": "English",
    },
    "en": {
        "title": "HTTPS filter certificate",
        "intro": "SafeGate's HTTPS filter only inspects pages that an authority ordered "
                 "blocked by address. Install the root certificate below so that those pages "
                 "show the block page instead of a security error. Other sites are never "
                 "decrypted.",
        "download": "Download the certificate",
        "missing": "The HTTPS filter (proxy) is not enabled on this gateway, so there is no "
                   "certificate to install. You do not need to do anything.",
        "switch": "Tiếng Việt",
    },
}


def render_ca_page(lang: str, available: set[str]) -> tuple[int, str]:
    """(status, page): links to the certificate files that exist and the steps per platform;
    404 with an explanation when there are none (the proxy is not enabled)."""
    t = _CA_TEXT[lang]
    other = "en" if lang == "vi" else "vi"
    parts = [f"<a class=\"lang\" lang=\"{other}\" href=\"?lang={other}\">{t['switch']}</a>",
             f"<h1>{_esc(t['title'])}</h1>"]
    if not available:
        parts.append(f"<p id=\"missing\">{_esc(t['missing'])}</p>")
        return 404, page(lang, t["title"], "\n".join(parts))
    parts.append(f"<p>{_esc(t['intro'])}</p>\n<h2>{_esc(t['download'])}</h2>\n<ul>")
    parts.extend(f"<li><a href=\"/ca/{name}\" download>{name}</a></li>"
                 for name in sorted(available))
    parts.append("</ul>")
    for platform, name, vi, en in _CA_STEPS:
        steps = vi if lang == "vi" else en
        parts.append(f"<h2>{_esc(platform)}</h2>\n<p><a href=\"/ca/{name}\">{name}</a>: "
                     f"{_esc(steps)}</p>")
    return 200, page(lang, t["title"], "\n".join(parts))
