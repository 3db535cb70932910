"""The CA onboarding page /ca on a real gateway: the three certificate formats, the steps per
platform in vi and en, never a private key, and a clear 404 when the proxy has no CA."""

from __future__ import annotations

import datetime
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.hotline import http

pytestmark = pytest.mark.integration


def write_ca(ca_dir: Path) -> x509.Certificate:
    """A throwaway CA in mitmproxy's file names (the key file too, which must never leak)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SafeGate test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    ca_dir.mkdir(parents=True)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (ca_dir / "mitmproxy-ca.pem").write_bytes(key_pem + pem)
    (ca_dir / "mitmproxy-ca-cert.pem").write_bytes(pem)
    (ca_dir / "mitmproxy-ca-cert.cer").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (ca_dir / "mitmproxy-ca-cert.p12").write_bytes(pkcs12.serialize_key_and_certificates(
        None, None, None, [cert], serialization.NoEncryption()))
    return cert


def test_ca_page_serves_certificates_and_steps(tmp_path: Path, unbound: ub.UnboundServer,
                                               safegate_factory: Any) -> None:
    cert = write_ca(tmp_path / "ca")
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML,
                          extra={"proxy": {"ca_dir": str(tmp_path / "ca")}})
    status, headers, page = http(gw, "GET", "/ca", host="127.0.0.1")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    for shown in ("Chứng chỉ bộ lọc HTTPS", "safegate-ca.pem", "safegate-ca.cer",
                  "safegate-ca.p12", "Windows", "macOS", "iOS", "Android", "ChromeOS",
                  "Cài đặt tin cậy chứng nhận"):
        assert shown in page, shown
    status, _, page = http(gw, "GET", "/ca?lang=en", host="127.0.0.1")
    assert status == 200 and "Certificate Trust Settings" in page

    def get(name: str) -> tuple[int, str, bytes]:
        req = urllib.request.Request(f"{gw.web_url}/ca/{name}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, "", exc.read()

    status, ctype, body = get("safegate-ca.pem")
    assert status == 200 and ctype == "application/x-pem-file"
    assert x509.load_pem_x509_certificate(body) == cert and b"PRIVATE KEY" not in body
    status, ctype, body = get("safegate-ca.cer")
    assert status == 200 and x509.load_der_x509_certificate(body) == cert
    status, ctype, body = get("safegate-ca.p12")
    key, leaf, extra = pkcs12.load_key_and_certificates(body, None)
    assert status == 200 and key is None and cert in [leaf, *extra]
    for name in ("mitmproxy-ca.pem", "mitmproxy-ca-cert.pem", "..%2Fmitmproxy-ca.pem"):
        assert get(name)[0] == 404


def test_ca_page_without_a_ca_says_the_proxy_is_off(tmp_path: Path, unbound: ub.UnboundServer,
                                                    safegate_factory: Any) -> None:
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML,
                          extra={"proxy": {"ca_dir": str(tmp_path / "none")}})
    status, _, page = http(gw, "GET", "/ca", host="127.0.0.1")
    assert status == 404 and "chưa được bật" in page
    status, _, page = http(gw, "GET", "/ca?lang=en", host="127.0.0.1")
    assert status == 404 and "not enabled" in page
