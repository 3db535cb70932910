"""`zone_transfer:` in publisher.yaml: the mandatory list served as an RPZ zone (AXFR/IXFR).

    zone_transfer:
      listen: ["127.0.0.1:5300"]        # TCP (AXFR, IXFR, SOA) and UDP (SOA) on each
      zone: rpz.safegate.example        # the zone's name, as the secondaries configure it
      allow: [192.0.2.0/28, "2001:db8::53"]  # who may transfer; others get REFUSED
      notify: ["192.0.2.5", "192.0.2.6:5353"]  # secondaries told of every new serial
      tsig: {name: xfr-key, algorithm: hmac-sha256, secret_file: keys/xfr.key}

With `tsig`, every AXFR/IXFR must be signed with that key (unsigned: REFUSED; wrong key or
signature: NOTAUTH); SOA queries may come unsigned (they reveal only the serial).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.config.addresses import Address, parse_address
from gateway.config.yamlconf import (
    YDict,
    check_keys,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
)
from gateway.util.names import normalize_name

KEYS = ("listen", "zone", "allow", "notify", "tsig")
TSIG_KEYS = ("name", "algorithm", "secret_file")
ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512")
DEFAULT_ZONE = "rpz.safegate.invalid"
DEFAULT_PORT = 53
MAX_SECRET_FILE = 64 * 1024
_BIND_SECRET = re.compile(r'secret\s+"([^"]+)"')

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TsigKey:
    name: str          # absolute, lowercase, without the trailing dot
    algorithm: str     # one of ALGORITHMS
    secret: bytes


@dataclass(frozen=True)
class ZoneTransferConfig:
    listen: tuple[Address, ...]
    zone: str                          # normalised, no trailing dot
    allow: tuple[Network, ...]
    notify: tuple[Address, ...]
    tsig: TsigKey | None = None


def parse_zone_transfer(doc: YDict, base: Path) -> ZoneTransferConfig | None:
    """The `zone_transfer` section of publisher.yaml `doc` (None when absent)."""
    if "zone_transfer" not in doc:
        return None
    zt = expect_mapping(doc["zone_transfer"], "zone_transfer", doc, "zone_transfer")
    check_keys(zt, KEYS, "zone_transfer")
    if "listen" not in zt:
        raise error_at("zone_transfer needs 'listen' (the address secondaries transfer from)",
                       zt, doc, "zone_transfer")
    listen = _addresses(zt, "listen", DEFAULT_PORT)
    notify = _addresses(zt, "notify", DEFAULT_PORT) if "notify" in zt else ()
    zone = DEFAULT_ZONE
    if "zone" in zt:
        try:
            zone = normalize_name(expect_str(zt["zone"], "zone_transfer.zone", zt, "zone")
                                  ).decode("ascii")
        except ValueError as exc:
            raise error_at(f"zone_transfer.zone: {exc}", None, zt, "zone") from None
    allow: list[Network] = []
    items = expect_list(zt.get("allow", []), "zone_transfer.allow", zt, "allow")
    for i, item in enumerate(items):
        try:
            allow.append(ipaddress.ip_network(expect_str(item, "an allow network", items, i),
                                              strict=False))
        except ValueError as exc:
            raise error_at(f"zone_transfer.allow: {exc}", None, items, i) from None
    if not allow:
        raise error_at("zone_transfer.allow must list the secondaries' addresses or networks "
                       "(nobody else may transfer the zone)", None, zt, "allow")
    tsig = _tsig(zt, base) if "tsig" in zt else None
    return ZoneTransferConfig(tuple(listen), zone, tuple(allow), tuple(notify), tsig)


def _addresses(zt: YDict, key: str, port: int) -> list[Address]:
    items = expect_list(zt[key], f"zone_transfer.{key}", zt, key)
    out: list[Address] = []
    for i, item in enumerate(items):
        try:
            out.append(parse_address(expect_str(item, f"a {key} address", items, i), port))
        except ValueError as exc:
            raise error_at(f"zone_transfer.{key}: {exc}", None, items, i) from None
    if not out:
        raise error_at(f"zone_transfer.{key} is empty", None, zt, key)
    return out


def _tsig(zt: YDict, base: Path) -> TsigKey:
    t = expect_mapping(zt["tsig"], "zone_transfer.tsig", zt, "tsig")
    check_keys(t, TSIG_KEYS, "zone_transfer.tsig")
    for key in ("name", "secret_file"):
        if key not in t:
            raise error_at(f"zone_transfer.tsig needs {key!r}", t, zt, "tsig")
    try:
        name = normalize_name(expect_str(t["name"], "tsig.name", t, "name")).decode("ascii")
    except ValueError as exc:
        raise error_at(f"zone_transfer.tsig.name: {exc}", None, t, "name") from None
    algorithm = expect_str(t.get("algorithm", "hmac-sha256"), "tsig.algorithm", t,
                           "algorithm").lower()
    if algorithm not in ALGORITHMS:
        raise error_at(f"zone_transfer.tsig.algorithm must be one of {', '.join(ALGORITHMS)}, "
                       f"got {algorithm!r}", None, t, "algorithm")
    path = Path(os.path.normpath(base / expect_str(t["secret_file"], "tsig.secret_file", t,
                                                   "secret_file")))
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_SECRET_FILE).decode("ascii", "replace")
    except OSError as exc:
        raise error_at(f"zone_transfer.tsig.secret_file {path}: {exc.strerror}", None, t,
                       "secret_file") from None
    found = _BIND_SECRET.search(text)   # `tsig-keygen` output works as is
    secret_text = found.group(1) if found else text.strip()
    try:
        secret = base64.b64decode(secret_text, validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if len(secret) < 16:
        raise error_at(f"zone_transfer.tsig.secret_file {path}: expected a base64 secret of at "
                       "least 16 bytes (make one with `tsig-keygen -a hmac-sha256 NAME`)",
                       None, t, "secret_file")
    return TsigKey(name, algorithm, secret)
