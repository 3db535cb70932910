"""PROXY protocol v2 (haproxy's proxy-protocol.txt, section 2.2), as dnsdist sends it.

A front end prepends a binary header naming the real client: to every UDP datagram, and once at
the start of a TCP connection. Only headers from dns.trusted_frontends are read (chain.py and
server.py check that); from anyone else the bytes are just a malformed DNS message.
"""

from __future__ import annotations

import socket
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HEADER_LEN = 16          # signature, version/command, family/transport, length
_INET, _INET6 = 0x1, 0x2
_ADDR_LEN = {_INET: 12, _INET6: 36}


class ProxyHeaderError(ValueError):
    """A PROXY v2 header that cannot be read; the datagram or connection is dropped."""


def header_size(data: bytes | bytearray) -> int:
    """Total header length once 16 bytes are there (to know how much a TCP stream must hold)."""
    if len(data) < HEADER_LEN:
        raise ProxyHeaderError("short PROXY v2 header")
    if data[:12] != SIGNATURE:
        raise ProxyHeaderError("no PROXY v2 signature")
    return HEADER_LEN + int(struct.unpack_from(">H", data, 14)[0])


def parse(data: bytes | bytearray) -> tuple[str | None, int]:
    """(source address, header length). The address is None for a LOCAL header (the front
    end's own health check) and for an UNSPEC family: the front end's address applies."""
    size = header_size(data)
    if len(data) < size:
        raise ProxyHeaderError("truncated PROXY v2 header")
    ver_cmd, fam = data[12], data[13]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY protocol version {ver_cmd >> 4}, not 2")
    command = ver_cmd & 0x0F
    if command == 0:      # LOCAL
        return None, size
    if command != 1:
        raise ProxyHeaderError(f"unknown PROXY v2 command {command}")
    family = fam >> 4
    need = _ADDR_LEN.get(family)
    if need is None:      # AF_UNSPEC or AF_UNIX: no address we could use
        return None, size
    if size - HEADER_LEN < need:
        raise ProxyHeaderError("PROXY v2 address block too short")
    if family == _INET:
        src = socket.inet_ntop(socket.AF_INET, bytes(data[16:20]))
    else:
        src = socket.inet_ntop(socket.AF_INET6, bytes(data[16:32]))
    return src, size


def build(src: str, dst: str, sport: int, dport: int, *, udp: bool = True,
          tlvs: bytes = b"") -> bytes:
    """A PROXY v2 PROXY header (for tests and the probe; the inverse of `parse`)."""
    v6 = ":" in src
    family = socket.AF_INET6 if v6 else socket.AF_INET
    addrs = (socket.inet_pton(family, src) + socket.inet_pton(family, dst)
             + struct.pack(">HH", sport, dport))
    fam = ((_INET6 if v6 else _INET) << 4) | (2 if udp else 1)
    body = addrs + tlvs
    return SIGNATURE + bytes([0x21, fam]) + struct.pack(">H", len(body)) + body
