"""What a block page says: why a host is blocked, the bilingual wording, which language.

BlockInfo comes from a DNS verdict (from_verdict) or from the proxy; the pages that show it
(page.py, report_pages.py) are shared by the gateway's web listener and the proxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    # policy | schedule | quota | quota-full | deny | mandatory | allowlist-only | bypass | url
    # | hash
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

TIER_LABELS: dict[str, tuple[str, str]] = {
    "mam-non": ("mầm non", "pre-school"),
    "tieu-hoc": ("tiểu học", "primary school"),
    "thcs": ("THCS", "lower secondary"),
    "thpt": ("THPT", "upper secondary"),
}

# Per language: every sentence on the page. `{x}` fields are filled with escaped values.
TEXT: dict[str, dict[str, str]] = {
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
        "quota": "Đã dùng hết thời gian cho phép hôm nay cho danh mục này; mở lại sau 0 giờ.",
        "quota-full": "Không thể tính thời gian sử dụng cho thiết bị này hôm nay, nên danh mục "
                      "này bị chặn.",
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
        "quota": "Today's time for this category is used up; it opens again after midnight.",
        "quota-full": "This device's time cannot be counted today, so this category is "
                      "blocked.",
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


def wants_html(headers: Mapping[str, str]) -> bool:
    """Browsers ask for text/html; curl, apps and health checks get the short text body."""
    return "text/html" in headers.get("Accept", "")

