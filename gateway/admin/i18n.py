"""The admin page's words in Vietnamese and English. Vietnamese when the browser prefers it
(Accept-Language) or `?lang=vi` was chosen; English otherwise."""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = ("vi", "en")

# key: (vi, en)
TEXT: dict[str, tuple[str, str]] = {
    "title": ("Quản trị SafeGate", "SafeGate admin"),
    "login": ("Đăng nhập", "Log in"),
    "logout": ("Đăng xuất", "Log out"),
    "password": ("Mật khẩu", "Password"),
    "wrong_password": ("Sai mật khẩu.", "Wrong password."),
    "locked": ("Quá nhiều lần sai mật khẩu từ địa chỉ này. Hãy thử lại sau {minutes} phút.",
               "Too many wrong passwords from this address. Try again in {minutes} minutes."),
    "no_password": ("Chưa đặt mật khẩu. Chạy: safegate admin passwd -c gateway.yaml",
                    "No password is set. Run: safegate admin passwd -c gateway.yaml"),
    "nav_status": ("Trạng thái", "Status"),
    "nav_stats": ("Thống kê", "Statistics"),
    "nav_explain": ("Giải thích", "Explain"),
    "nav_rules": ("Cho phép / chặn", "Allow / deny"),
    "nav_reports": ("Báo cáo", "Reports"),
    "nav_querylog": ("Nhật ký truy vấn", "Query log"),
    "ready": ("Sẵn sàng", "Ready"),
    "not_ready": ("Chưa sẵn sàng", "Not ready"),
    "generation": ("Thế hệ cấu hình", "Configuration generation"),
    "lists": ("Danh sách chặn", "Block lists"),
    "category": ("Danh mục", "Category"),
    "entries": ("Số mục", "Entries"),
    "total": ("Tổng", "Total"),
    "feeds": ("Nguồn cập nhật", "Feeds"),
    "feed": ("Nguồn", "Feed"),
    "serial": ("Số hiệu", "Serial"),
    "held": ("Cập nhật đang giữ", "Held update"),
    "held_text": ("thay đổi {changes} trên {current} mục (giới hạn {limit})",
                  "changes {changes} of {current} entries (limit {limit})"),
    "confirm": ("Xác nhận", "Confirm"),
    "confirmed": ("Đã xác nhận cập nhật {id} của nguồn {feed}; gateway áp dụng trong vài giây.",
                  "Confirmed update {id} of feed {feed}; the gateway applies it in a few seconds."),
    "no_feeds": ("Không có nguồn cập nhật nào.", "No feeds are configured."),
    "upstreams": ("Máy chủ DNS phía trên", "Upstream resolvers"),
    "queries": ("Truy vấn", "Queries"),
    "errors": ("Lỗi", "Errors"),
    "last_reload": ("Lần nạp lại gần nhất", "Last reload"),
    "never": ("chưa có từ khi khởi động", "none since start"),
    "reload_ok": ("thành công", "succeeded"),
    "reload_failed": ("thất bại, vẫn dùng cấu hình cũ:", "failed, the previous one still runs:"),
    "tier": ("Cấp", "Tier"),
    "network": ("Mạng", "Network"),
    "blocked": ("Bị chặn", "Blocked"),
    "allowed": ("Cho qua", "Allowed"),
    "since_start": ("Từ khi khởi động", "Since start"),
    "top_blocked": ("Tên bị chặn nhiều nhất (24 giờ)", "Most blocked names (24 hours)"),
    "name": ("Tên miền", "Domain name"),
    "client": ("Địa chỉ máy", "Client address"),
    # The query log holds no address: its column must not say it does.
    "client_hash": ("Máy (mã băm, đổi mỗi ngày)", "Client (hash, new each day)"),
    "explain_button": ("Giải thích", "Explain"),
    "explain_help": ("Vì sao một tên miền bị chặn hay được cho qua với một máy?",
                     "Why is a name blocked or let through for one client?"),
    "verdict_blocked": ("BỊ CHẶN", "BLOCKED"),
    "verdict_allowed": ("ĐƯỢC CHO QUA", "ALLOWED"),
    "reason": ("Lý do", "Reason"),
    "rule": ("Quy tắc", "Rule"),
    "no_network": ("Không mạng nào chứa địa chỉ này: truy vấn bị từ chối (REFUSED).",
                   "No network contains this address: its queries are REFUSED."),
    "bad_input": ("Tên miền hoặc địa chỉ không hợp lệ.", "Not a valid domain name or address."),
    "rules_help": ("Quy tắc ở đây được ghi vào {path} và áp dụng ngay.",
                   "Rules here are written to {path} and apply at once."),
    "target": ("Áp dụng cho", "Applies to"),
    "action": ("Hành động", "Action"),
    "allow": ("Cho phép", "Allow"),
    "deny": ("Chặn", "Deny"),
    "remove": ("Xoá", "Remove"),
    "save": ("Lưu", "Save"),
    "saved": ("Đã lưu và áp dụng.", "Saved and in force."),
    "refused": ("Không lưu: cấu hình không hợp lệ. Chính sách đang chạy không đổi.",
                "Not saved: the policy is invalid. The running policy is unchanged."),
    "current_rules": ("Quy tắc hiện có", "Current rules"),
    "none": ("Không có.", "None."),
    "audit": ("Nhật ký thay đổi", "Change log"),
    "time": ("Thời gian", "Time"),
    "user": ("Người dùng", "User"),
    "reports_help": ("Báo cáo gửi từ trang chặn (mới nhất trước).",
                     "Reports sent from the block page (newest first)."),
    "kind": ("Loại", "Kind"),
    "comment": ("Ghi chú", "Comment"),
    "delivered": ("Đã chuyển", "Delivered"),
    "pending": ("Chờ chuyển", "Pending"),
    "csrf": ("Biểu mẫu đã hết hạn hoặc không hợp lệ. Hãy tải lại trang.",
             "The form expired or is not valid. Reload the page."),
    "search": ("Tìm", "Search"),
    "verdict": ("Kết quả", "Verdict"),
    "from": ("Từ", "From"),
    "to": ("Đến", "To"),
    "querylog_help": ("Tối đa {shown} dòng, mới nhất trước. Máy khách chỉ hiện dưới dạng mã "
                      "băm đổi mỗi ngày, không lưu địa chỉ.",
                      "At most {shown} rows, newest first. Clients appear only as a hash that "
                      "changes every day; addresses are not stored."),
    "querylog_off": ("Nhật ký truy vấn đang tắt (bật bằng query_log trên một mạng).",
                     "The query log is off (enable it with query_log on a network)."),
}


def pick(query_lang: str | None, cookie_lang: str | None, accept: str) -> str:
    """The language for this request: explicit choice, then the cookie, then the browser's."""
    for lang in (query_lang, cookie_lang):
        if lang in LANGUAGES:
            return str(lang)
    for part in accept.split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return "vi"


def translator(lang: str) -> Callable[..., str]:
    index = LANGUAGES.index(lang)

    def t(key: str, **values: object) -> str:
        words = TEXT.get(key)
        text = words[index] if words else key
        return text.format(**values) if values else text

    return t
