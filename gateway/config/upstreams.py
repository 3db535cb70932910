"""`dns.upstreams` entries: where to forward and over what (plain DNS or DNS over TLS).

A neutral module (no imports from the DNS package) so the config parser can validate entries
and the forwarder can act on them without config depending on the query path.

    "127.0.0.1", "127.0.0.1:5353", "[::1]:53"     plain DNS (UDP, TCP when truncated)
    "udp://127.0.0.1:53"                           the same, spelled out
    "tls://9.9.9.9"                                DNS over TLS, port 853; the certificate
                                                   must list the IP in its SANs
    "tls://9.9.9.9:853#dns.quad9.net"              the certificate must match the name
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.addresses import parse_address

PLAIN = "udp"
TLS = "tls"
DEFAULT_PORTS = {PLAIN: 53, TLS: 853}


@dataclass(frozen=True)
class UpstreamSpec:
    """One parsed `dns.upstreams` entry."""

    host: str                    # an IP literal (IPv6 without brackets)
    port: int
    transport: str = PLAIN       # PLAIN or TLS
    tls_name: str | None = None  # the name the certificate must match (TLS only)

    @property
    def label(self) -> str:
        """The metrics label: "127.0.0.1:53" for plain DNS (as always), "tls://..." for TLS."""
        hostport = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return hostport if self.transport == PLAIN else f"{self.transport}://{hostport}"


def parse_upstream(text: str) -> UpstreamSpec:
    """Parse one entry (see the module docstring); ValueError names what is wrong."""
    text = text.strip()
    transport = PLAIN
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() not in DEFAULT_PORTS:
            raise ValueError(f"unknown scheme {scheme!r} (use udp:// or tls://)")
        transport, text = scheme.lower(), rest
    tls_name: str | None = None
    if "#" in text:
        text, _, tls_name = text.partition("#")
        if transport != TLS:
            raise ValueError("'#name' is only for tls:// upstreams")
        tls_name = tls_name.strip().rstrip(".").lower()
        if not tls_name or not all(_label_ok(x) for x in tls_name.split(".")):
            raise ValueError(f"bad certificate name {tls_name!r}")
    host, port = parse_address(text, DEFAULT_PORTS[transport])
    return UpstreamSpec(host, port, transport, tls_name)


def _label_ok(label: str) -> bool:
    return 0 < len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label) \
        and label.isascii()
