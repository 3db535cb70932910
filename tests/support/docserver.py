"""A document published over HTTP on loopback (a list's website, an ISP's provisioning system)
for the tests of what SafeGate downloads on a schedule: `body` can be switched between polls,
and each answer is logged so a test can see the conditional requests."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class DocumentServer:
    """Serves `body` at any path with an ETag (and `last_modified` when given); 304 to a
    matching If-None-Match; 401 without `Authorization: Bearer <token>` when `token` is set.
    `answered` holds (If-None-Match, If-Modified-Since, status) of each request."""

    def __init__(self, path: str, body: bytes, *, token: str | None = None,
                 last_modified: str | None = None) -> None:
        self.path = path
        self.body = body
        self.answered: list[tuple[str, str, int]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.body
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                inm = self.headers.get("If-None-Match", "")
                if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                    status = 401
                else:
                    status = 304 if inm == etag else 200
                outer.answered.append((inm, self.headers.get("If-Modified-Since", ""), status))
                self.send_response(status)
                self.send_header("ETag", etag)
                if last_modified is not None:
                    self.send_header("Last-Modified", last_modified)
                payload = body if status == 200 else b""
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
