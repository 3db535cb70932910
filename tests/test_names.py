"""normalize_name: the one canonical form every list, policy and query key goes through."""

from __future__ import annotations

import pytest

from gateway.util.names import normalize_name, suffix_offsets


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("example.com", b"example.com"),
        ("WWW.Example.COM", b"www.example.com"),
        ("www.example.com.", b"www.example.com"),  # one trailing dot is the absolute form
        ("_dmarc.example.test", b"_dmarc.example.test"),  # lists carry underscores
        ("a-b.c-d.test", b"a-b.c-d.test"),
        ("-edge-.example", b"-edge-.example"),  # accepted like resolvers do
        ("localhost", b"localhost"),  # single label is a name (callers decide what to do)
        ("xn--v-d-rma6749a.test", b"xn--v-d-rma6749a.test"),
        ("ví-dụ.test", b"xn--v-d-rma6749a.test"),  # IDN -> punycode (UTS #46)
        ("VÍ-DỤ.TEST.", b"xn--v-d-rma6749a.test"),
        ("bücher.example", b"xn--bcher-kva.example"),
        ("faß.example", b"xn--fa-hia.example"),  # IDNA 2008: ß is kept, not mapped to ss
        ("1.2.3.4.in-addr.arpa", b"1.2.3.4.in-addr.arpa"),
        ("123.example", b"123.example"),
        ("a" * 63 + ".test", b"a" * 63 + b".test"),
        (".".join(["a" * 61] * 4), ".".join(["a" * 61] * 4).encode()),  # 247 bytes
    ],
)
def test_normalize(text: str, key: bytes) -> None:
    assert normalize_name(text) == key


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty name"),
        (".", "is the root, not a domain name"),
        ("a..b.test", "empty label"),
        (".a.test", "empty label"),
        ("a.test..", "empty label"),
        ("a b.test", "contains a space"),
        (" a.test", "contains a space"),
        ("a\tb", "contains a space"),
        ("1.2.3.4", "is an IP address, not a domain name"),
        ("10.0.0.1.", "is an IP address, not a domain name"),
        ("::1", "is an IP address, not a domain name"),
        ("2001:db8::1", "is an IP address, not a domain name"),
        ("a" * 64 + ".test", "label longer than 63 bytes"),
        (".".join(["a" * 63] * 4), "name longer than 253 bytes"),
        ("a!.test", "invalid character '!'"),
        ("*.example.test", "invalid character '*'"),  # wildcards are the callers' business
        ("a/b.test", "invalid character '/'"),
        ("ví dụ.test", "contains a space"),
        ("ví..test", "empty label"),
    ],
)
def test_normalize_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as exc:
        normalize_name(text)
    assert str(exc.value) == reason


def test_idn_that_uts46_rejects_falls_back_or_fails_cleanly() -> None:
    # A label mixing scripts in a way IDNA 2008 forbids must still give ValueError, never
    # another exception type.
    with pytest.raises(ValueError):
        normalize_name("\u0627a.test")  # Arabic letter followed by Latin in one label


@pytest.mark.parametrize(
    ("key", "offsets"),
    [
        (b"a.b.c", [0, 2, 4]),
        (b"www.example.com", [0, 4, 12]),
        (b"com", [0]),
    ],
)
def test_suffix_offsets(key: bytes, offsets: list[int]) -> None:
    assert suffix_offsets(key) == offsets
