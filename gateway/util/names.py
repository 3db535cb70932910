"""Domain names as SafeGate stores them: lowercase ASCII, no trailing dot, as bytes."""

from __future__ import annotations

import re

import idna

# One bytes regex validates the common case (an ASCII list line) in a single C call; a trailing
# dot is allowed by it and stripped after. Lists carry underscores (_dmarc) and edge hyphens,
# which resolvers accept, so we accept them too.
_FAST = re.compile(rb"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*\.?")
_VALID = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_IPV4 = re.compile(rb"\d{1,3}(?:\.\d{1,3}){3}")
_MAX_NAME = 253


def normalize_name(text: str) -> bytes:
    """`text` as a canonical lookup key (b"www.example.com"), or ValueError saying why not."""
    try:
        raw = text.encode().lower()
    except UnicodeEncodeError:
        raise ValueError("invalid character (lone surrogate)") from None
    if _FAST.fullmatch(raw) is not None:
        if raw[-1] == 46:  # "."
            raw = raw[:-1]
        if len(raw) > _MAX_NAME:
            raise ValueError(f"name longer than {_MAX_NAME} bytes")
        if 47 < raw[-1] < 58 and _IPV4.fullmatch(raw) is not None:
            raise ValueError("is an IP address, not a domain name")
        return raw
    if text.isascii():
        name = text.lower()
        raise ValueError(_why_invalid(text, name[:-1] if name.endswith(".") else name))
    return _normalize_idn(text)


def _normalize_idn(text: str) -> bytes:
    """Punycode a non-ASCII name (UTS #46 first, the stdlib IDNA 2003 codec as fallback)."""
    if any(ch.isspace() for ch in text):
        raise ValueError("contains a space")
    name = text[:-1] if text.endswith(".") else text
    if not name or name.startswith(".") or ".." in name:
        raise ValueError("empty label")
    try:
        encoded = idna.encode(name, uts46=True)
    except idna.IDNAError:
        try:
            encoded = name.encode("idna")
        except UnicodeError as exc:
            raise ValueError(f"invalid internationalised name ({exc})") from None
    ascii_name = encoded.decode("ascii").lower()
    if _VALID.fullmatch(ascii_name) is None or len(ascii_name) > _MAX_NAME:
        raise ValueError(_why_invalid(text, ascii_name))
    return ascii_name.encode("ascii")


def _why_invalid(text: str, name: str) -> str:
    """A short reason why `text` (lowercased and undotted: `name`) is not a valid name."""
    if not text:
        return "empty name"
    if not name:
        return "is the root, not a domain name"
    if any(ch.isspace() for ch in name):
        return "contains a space"
    if ":" in name:
        return "is an IP address, not a domain name"
    labels = name.split(".")
    for label in labels:
        if not label:
            return "empty label"
        if len(label) > 63:
            return "label longer than 63 bytes"
        for ch in label:
            if not (ch.isalnum() or ch in "-_") or not ch.isascii():
                return f"invalid character {ch!r}"
    if len(name) > _MAX_NAME:
        return f"name longer than {_MAX_NAME} bytes"
    return "invalid domain name"


def suffix_offsets(key: bytes) -> list[int]:
    """Start offsets of every suffix of a dotted key: b"a.b.c" -> [0, 2, 4]."""
    offsets = [0]
    find = key.find
    off = find(b".") + 1
    while off:
        offsets.append(off)
        off = find(b".", off) + 1
    return offsets
