"""`safegate feeds enroll CODE --publisher URL -c gateway.yaml`: a school joins a publisher.

The publisher's operator ran `safegate feed gateways add ID --code` and read the code out (or
sent it); here it is exchanged, once, for this gateway's own token, stored in
STATE_DIR/enrollment.json (mode 0600, written atomically). gateway.yaml then needs no token:
with `gateway.token` unset the gateway acks as the enrolled id with the stored token
(gateway/config/feeds.py). gateway.yaml is read raw here, because before enrollment it may
not load (acks need a token).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from gateway.config.feeds import ENROLLMENT_FILE
from gateway.errors import SafeGateError
from gateway.util.atomic import atomic_write

TIMEOUT = 30.0


def state_dir_of(config: Path) -> Path:
    try:
        doc = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise SafeGateError(f"{config}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SafeGateError(f"{config}: YAML error: {exc}") from None
    state = doc.get("state_dir", "var") if isinstance(doc, dict) else "var"
    if not isinstance(state, str):
        raise SafeGateError(f"{config}: state_dir must be a directory name")
    return Path(os.path.normpath(config.resolve().parent / state))


def enroll_url(publisher: str) -> str:
    parts = urlsplit(publisher)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SafeGateError(f"--publisher must be the publisher's http(s) URL, got {publisher!r}")
    return urlunsplit((parts.scheme, parts.netloc, "/v1/enroll", "", ""))


def exchange(code: str, publisher: str) -> dict[str, Any]:
    """POST the code; the publisher's answer, or a SafeGateError with its message."""
    url = enroll_url(publisher)
    req = urllib.request.Request(url, data=json.dumps({"code": code}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", "")
        except ValueError:
            message = ""
        raise SafeGateError(f"{url}: HTTP {exc.code}: {message or exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SafeGateError(f"{url}: {exc}") from None
    if not (isinstance(body, dict) and isinstance(body.get("gateway"), str)
            and isinstance(body.get("token"), str)):
        raise SafeGateError(f"{url}: unexpected answer (not a SafeGate publisher?)")
    return body


def enroll(code: str, publisher: str, config: Path) -> int:
    state_dir = state_dir_of(config)
    answer = exchange(code, publisher)
    path = state_dir / ENROLLMENT_FILE
    record = {"gateway": answer["gateway"], "token": answer["token"],
              "publisher": publisher,
              "enrolled_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    atomic_write(path, json.dumps(record, indent=2) + "\n", mode=0o600)
    print(f"enrolled at {publisher} as gateway {answer['gateway']!r}")
    print(f"token stored in {path} (mode 0600; the publisher keeps only its hash)")
    print("gateway.yaml needs no gateway.token: restart the gateway (or send it SIGHUP) and it "
          "acks with this token")
    return 0
