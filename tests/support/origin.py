"""A real origin web server (aiohttp, HTTP and HTTPS with a test CA) and the proxy tests'
policy, URL lists and signed feed, shared by test_proxy_e2e and test_steering_e2e."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import ipaddress
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.feedformat.document import Feed, FeedEntry, LegalBasis
from gateway.feedformat.signing import load_signer
from tests.support.procs import free_port

NAMES = ("news.test", "www.news.test", "video.test", "search.test", "plain.test", "img.test")


ISSUED = "2026-01-05T08:00:00Z"


LEGAL = LegalBasis("Bộ Thông tin và Truyền thông", "QĐ-123/2026", "2026-01-05")


POLICY = """
tiers:
  tieu-hoc:
    block: [adult]
    safesearch: strict
networks:
  - name: loopback
    cidrs: ["127.0.0.0/8", "::1/128"]
    tier: tieu-hoc
"""


LISTS_YAML = """
categories:
  adult:
    - {path: adult-pages.txt, format: urls}
  games:
    - {path: games-pages.txt, format: urls}
"""


ADULT_PAGES = "# one URL per line\nhttp://news.test/adult/*\nnot a url\n"


GAMES_PAGES = "https://news.test/games/\n"       # games is not blocked for this tier


def synthetic_png(seed: int) -> bytes:
    """Noise generated here: never real material."""
    from PIL import Image

    rng = __import__("random").Random(seed)
    img = Image.new("RGB", (64, 64))
    img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256))
                 for _ in range(64 * 64)])
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def make_ca(directory: Path, cn: str) -> tuple[Any, Any, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{cn}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_leaf(directory: Path, ca_key: Any, ca_cert: Any, names: tuple[str, ...]
              ) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names]
                + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "origin.pem", directory / "origin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Origin:
    """HTTP and HTTPS on loopback; answers `origin <host> <path?query> yt=<header>`."""

    http_port: int = 0
    https_port: int = 0
    image: bytes = b""
    seen: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append({"host": request.host, "path": request.path_qs,
                          "yt": request.headers.get("YouTube-Restrict", "")})
        if request.path.startswith("/img/"):
            return web.Response(body=self.image, content_type="image/png")
        return web.Response(text=f"origin {request.host} {request.path_qs} "
                                 f"yt={request.headers.get('YouTube-Restrict', '')}\n")


@contextlib.contextmanager
def serve_origin(d: Path) -> Iterator[tuple[Origin, Path]]:
    """The origin in a thread of its own (its own event loop); also used by the benchmark."""
    ca_key, ca_cert, ca_path = make_ca(d, "SafeGate Test Origin CA")
    cert, key = make_leaf(d, ca_key, ca_cert, NAMES)
    org = Origin(http_port=free_port(v6=False, udp=False),
                 https_port=free_port(v6=False, udp=False), image=synthetic_png(1))
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", org.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        await web.TCPSite(runner, "127.0.0.1", org.http_port).start()
        await web.TCPSite(runner, "127.0.0.1", org.https_port, ssl_context=tls).start()
        runner_box.append(runner)
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()),
                                              loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10)
    yield org, ca_path
    asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def write_feed(state: Path, key: Path, entries: list[FeedEntry]) -> None:
    """The feed client's last-known-good copy, as it stores it (snapshot + signature)."""
    body = Feed(1, ISSUED, tuple(entries)).to_bytes()
    d = state / "feeds"
    d.mkdir(parents=True, exist_ok=True)
    (d / "central.json").write_bytes(body)
    (d / "central.sig").write_text(load_signer(key).sign(body))


def curl(*args: str) -> tuple[int, str, str]:
    """(HTTP status, body, stderr) of one curl run (status 0: no HTTP answer)."""
    p = subprocess.run(["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args],
                       capture_output=True, text=True, timeout=20)
    body, _, code = p.stdout.rpartition("\n")
    return int(code or 0), body, p.stderr
