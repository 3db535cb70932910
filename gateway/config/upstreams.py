"""`dns.upstreams` entries: where to forward and over what (plain DNS, DNS over TLS or HTTPS).

A neutral module (no imports from the DNS package) so the config parser can validate entries
and the forwarder can act on them without config depending on the query path.

    "127.0.0.1", "127.0.0.1:5353", "[::1]:53"     plain DNS (UDP, TCP when truncated)
    "udp://127.0.0.1:53"                           the same, spelled out
    "tls://9.9.9.9"                                DNS over TLS, port 853; the certificate
                                                   must list the IP in its SANs
    "tls://9.9.9.9:853#dns.quad9.net"              the certificate must match the name
    "https://dns.quad9.net/dns-query"              DNS over HTTPS (RFC 8484), port 443; the
                                                   name is resolved by the system resolver
    "https://9.9.9.9/dns-query#dns.quad9.net"      ...at that address, certificate and Host
                                                   checked against the name (no lookup)
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.addresses import parse_address

PLAIN = "udp"
TLS = "tls"
HTTPS = "https"
DEFAULT_PORTS = {PLAIN: 53, TLS: 853, HTTPS: 443}
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        "-._~/%!$&'()*+,;=:@")


@dataclass(frozen=True)
class UpstreamSpec:
    """One parsed `dns.upstreams` entry."""

    host: str                    # an IP literal (IPv6 without brackets); HTTPS: or a host name
    port: int
    transport: str = PLAIN       # PLAIN, TLS or HTTPS
    tls_name: str | None = None  # the name the certificate must match (TLS, HTTPS)
    path: str = ""               # HTTPS: the URL path ("/dns-query")

    @property
    def label(self) -> str:
        """The metrics label: "127.0.0.1:53" for plain DNS (as always), "tls://..." for TLS."""
        hostport = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return hostport if self.transport == PLAIN else f"{self.transport}://{hostport}{self.path}"


def parse_upstream(text: str) -> UpstreamSpec:
    """Parse one entry (see the module docstring); ValueError names what is wrong."""
    text = text.strip()
    transport = PLAIN
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() not in DEFAULT_PORTS:
            raise ValueError(f"unknown scheme {scheme!r} (use udp://, tls:// or https://)")
        transport, text = scheme.lower(), rest
    elif "/" in text:
        # No address has a slash: a URL whose "://" is mistyped ("https:/x/dns-query"); its
        # remainder read as host:port said "bad port '/x/dns-query'".
        raise ValueError("not an address[:port] nor a URL with ://: write udp://, "
                         "tls://ADDRESS[#name] or https://HOST/dns-query")
    tls_name: str | None = None
    if "#" in text:
        text, _, tls_name = text.partition("#")
        if transport == PLAIN:
            raise ValueError("'#name' is only for tls:// and https:// upstreams")
        tls_name = tls_name.strip().rstrip(".").lower()
        if not tls_name or not all(_label_ok(x) for x in tls_name.split(".")):
            raise ValueError(f"bad certificate name {tls_name!r}")
    if transport == HTTPS:
        return _https(text, tls_name)
    host, port = parse_address(text, DEFAULT_PORTS[transport])
    return UpstreamSpec(host, port, transport, tls_name)


def _https(text: str, tls_name: str | None) -> UpstreamSpec:
    """`host[:port][/path]` of an https:// entry (path default /dns-query): host is an IP
    literal or a name; RFC 8484 POSTs to the path, so it takes no query string."""
    hostport, slash, path = text.partition("/")
    path = "/" + path if slash else "/dns-query"
    if "?" in path or not set(path) <= _PATH_CHARS:
        raise ValueError(f"bad URL path {path!r} (DNS over HTTPS POSTs to a plain path, "
                         "e.g. /dns-query)")
    try:
        host, port = parse_address(hostport, DEFAULT_PORTS[HTTPS])
    except ValueError:
        name, _, port_text = hostport.partition(":")
        name = name.strip().rstrip(".").lower()
        if not name or not all(_label_ok(x) for x in name.split(".")) or name.isdigit():
            raise ValueError(f"bad host {hostport!r} (an IP address or a host name)") from None
        host, port = name, DEFAULT_PORTS[HTTPS]
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"bad port {port_text!r}") from None
            port = int(port_text)
    return UpstreamSpec(host, port, HTTPS, tls_name, path)


def _label_ok(label: str) -> bool:
    return 0 < len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label) \
        and label.isascii()
