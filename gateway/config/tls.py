"""`dns.tls` and `web.tls`: a certificate and key (PEM); DoT also names its listeners.

Parsing only reads gateway.yaml; whether the files load is `checks.check_files`' job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config.addresses import Address
from gateway.config.spec import STR, STRINGS, Key, Shape
from gateway.config.values import FileRefs, read_addresses
from gateway.config.yamlconf import YDict, error_at, expect_mapping, expect_str, where

DOT_PORT = 853


@dataclass(frozen=True)
class TlsConfig:
    """A certificate and key (PEM), checked loadable by check_files; DoT also has listeners."""

    cert: Path
    key: Path
    listen: tuple[Address, ...] = ()


_CERT = Key("cert", STR, "PEM certificate chain (fullchain.pem)", required=True)
_KEY = Key("key", STR, "PEM private key of the certificate", required=True)
DOT_TLS = Shape("dns.tls", (
    Key("listen", STRINGS, "DNS-over-TLS listen addresses, host[:port] (port 853 by default)",
        required=True), _CERT, _KEY),
    "DNS over TLS (RFC 7858) listeners", nullable=False)
WEB_TLS = Shape("web.tls", (_CERT, _KEY), "serve the web listener (block page, DoH) on HTTPS",
                  nullable=False)


def parse_tls(parent: YDict, key: str, what: str, rel: Callable[[str], Path], refs: FileRefs,
              *, listeners: bool) -> TlsConfig | None:
    """`parent[key]` (absent: None); `refs[what]` records where to report a bad cert."""
    if key not in parent:
        return None
    tls = expect_mapping(parent[key], what, parent, key)
    (DOT_TLS if listeners else WEB_TLS).check(tls)
    for required in ("cert", "key", *(("listen",) if listeners else ())):
        if required not in tls:
            raise error_at(f"{what} is missing {required!r}", tls, parent, key)
    cert = rel(expect_str(tls["cert"], f"{what}.cert", tls, "cert"))
    pkey = rel(expect_str(tls["key"], f"{what}.key", tls, "key"))
    listen: tuple[Address, ...] = ()
    if listeners:
        listen = read_addresses(tls["listen"], f"{what}.listen", tls, "listen", DOT_PORT)
        if not listen:
            raise error_at(f"{what}.listen is empty", None, tls, "listen")
    refs[what] = where(None, tls, "cert")
    return TlsConfig(cert, pkey, listen)
