"""The proxy CA onboarding page: where to download the certificate and how to trust it."""

from __future__ import annotations

from gateway.blockpage.frame import esc, page

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
             f"<h1>{esc(t['title'])}</h1>"]
    if not available:
        parts.append(f"<p id=\"missing\">{esc(t['missing'])}</p>")
        return 404, page(lang, t["title"], "\n".join(parts))
    parts.append(f"<p>{esc(t['intro'])}</p>\n<h2>{esc(t['download'])}</h2>\n<ul>")
    parts.extend(f"<li><a href=\"/ca/{name}\" download>{name}</a></li>"
                 for name in sorted(available))
    parts.append("</ul>")
    for platform, name, vi, en in _CA_STEPS:
        steps = vi if lang == "vi" else en
        parts.append(f"<h2>{esc(platform)}</h2>\n<p><a href=\"/ca/{name}\">{name}</a>: "
                     f"{esc(steps)}</p>")
    return 200, page(lang, t["title"], "\n".join(parts))
