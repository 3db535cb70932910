"""A DNSSEC-signed zone that the test unbound validates, so its answers carry AD=1 for real.

No signing tool is installed (no ldns, no bind9-utils), and dnspython's own signer needs a newer
`cryptography` than the venv pins; the zone is signed here with Ed25519 (algorithm 15) from
`cryptography` and dnspython's canonical RRSIG input. unbound serves it from an `auth-zone`
with `for-upstream: yes` (as if fetched from the zone's authority) and validates it against the
DS given as its trust anchor, so AD=1 is unbound's own verdict, not something we set.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from dns.rdtypes.ANY.RRSIG import RRSIG

ZONE = "signed.test"
WWW = f"www.{ZONE}"
WWW_A = "192.0.2.20"
BIG = f"big.{ZONE}"  # a TXT RRset + RRSIG of ~800 bytes: over 512, under the gateway's 1232
BIG_TXT = tuple(f"part-{i:02d}-".ljust(120, "x") for i in range(5))
_ED25519 = 15


def _zone_text() -> str:
    lines = [
        f"$ORIGIN {ZONE}.",
        f"@ 3600 IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 60",
        f"@ 3600 IN NS ns.{ZONE}.",
        "ns 3600 IN A 127.0.0.1",
        f"www 300 IN A {WWW_A}",
    ]
    lines += [f'big 300 IN TXT "{txt}"' for txt in BIG_TXT]
    return "\n".join(lines) + "\n"


def write_signed_zone(directory: Path) -> tuple[Path, str]:
    """Sign the zone with a fresh key: (zone file path, its DS record as a trust anchor)."""
    origin = dns.name.from_text(f"{ZONE}.")
    key = ed25519.Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    dnskey = dns.rdata.from_text("IN", "DNSKEY",
                                 f"257 3 {_ED25519} {base64.b64encode(pub).decode()}")
    zone = dns.zone.from_text(_zone_text(), origin=origin, relativize=False)
    zone.find_rdataset(origin, "DNSKEY", create=True).add(dnskey, 3600)
    tag = dns.dnssec.key_id(dnskey)  # type: ignore[arg-type]
    now = int(time.time())
    sigs = []
    for name, node in zone.nodes.items():
        for rds in node.rdatasets:
            rrset = dns.rrset.from_rdata_list(name, rds.ttl, list(rds))
            unsigned = RRSIG(dns.rdataclass.IN, dns.rdatatype.RRSIG, rds.rdtype, _ED25519,
                             len(name) - 1, rds.ttl, now + 30 * 86400, now - 3600, tag, origin,
                             b"")
            data = dns.dnssec._make_rrsig_signature_data(rrset, unsigned, None)
            sigs.append((name, rds.ttl, unsigned.replace(signature=key.sign(data))))
    for name, ttl, sig in sigs:
        zone.find_rdataset(name, "RRSIG", sig.covers(), create=True).add(sig, ttl)
    path = Path(directory) / f"{ZONE}.zone"
    path.write_text(zone.to_text())
    ds = dns.dnssec.make_ds(origin, dnskey, "SHA256")  # type: ignore[arg-type]
    return path, f"{ZONE}. IN DS {ds.to_text()}"


def validating_config(directory: Path) -> list[str]:
    """`extra_config` lines for start_unbound: validate and serve the signed zone."""
    path, ds = write_signed_zone(directory)
    return [
        'module-config: "validator iterator"',
        f'trust-anchor: "{ds}"',
        f'local-zone: "{ZONE}." transparent',   # under the test's static "test." zone
        "auth-zone:",
        f'  name: "{ZONE}."',
        f'  zonefile: "{path}"',
        "  for-upstream: yes",
        "  for-downstream: no",
        "server:",   # back to the server clause for whatever follows
    ]
