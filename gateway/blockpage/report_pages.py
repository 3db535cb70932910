"""The pages of POST and GET /report: the empty report form and the answer to a report."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from gateway.blockpage.frame import esc, page, security_headers
from gateway.blockpage.model import HOTLINE, TEXT, BlockInfo, choose_lang, wants_html
from gateway.blockpage.page import render_forms


def render_report_form(headers: Mapping[str, str], *, report_url: str, csrf: str,
                       lang: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET /report: both forms, empty, with a fresh token (where a refused post leads)."""
    chosen = choose_lang(headers, lang)
    t = TEXT[chosen]
    info = BlockInfo(target="", category="", reason="", legal=False)
    other = "en" if chosen == "vi" else "vi"
    body = (f"<a class=\"lang\" lang=\"{other}\" href=\"?lang={other}\">{esc(t['switch'])}</a>\n"
            f"<h1>{esc(t['form_title'])}</h1>\n" + render_forms(info, chosen, report_url, csrf))
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
    t = TEXT[lang]
    status, message = _RESULT[lang][outcome]
    out = {"Cache-Control": "no-store", "Content-Language": lang,
           **security_headers(report_url)}
    if not wants_html(headers):
        out["Content-Type"] = "text/plain; charset=utf-8"
        text = message + (f" ({report_id})" if report_id else "") + (
            f"\n{error}" if error else "")
        return status, out, (text + "\n").encode("utf-8")
    body = [f"<p id=\"result\">{esc(message)}</p>"]
    if report_id:
        body.append(f"<p><code id=\"report-id\">{esc(report_id)}</code></p>")
    if error:
        body.append(f"<p id=\"error\">{esc(error)}</p>")
    if outcome in ("csrf", "reused"):
        link = f"{report_url}?{urlencode({'lang': lang})}"
        body.append(f"<p><a id=\"new-form\" href=\"{esc(link)}\">{esc(t['new_form'])}</a></p>")
    body.append(f"<p id=\"hotline\">{t['hotline'].format(hotline=f'<strong>{HOTLINE}</strong>')}"
                "</p>")
    out["Content-Type"] = "text/html; charset=utf-8"
    return status, out, page(lang, t["title"], "\n".join(body)).encode("utf-8")

