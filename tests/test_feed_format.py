"""Feed format v1: entry validation, diffs, canonical bytes, signatures, and the JSON Schema."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.feedformat.document import (
    Feed,
    FeedEntry,
    FeedError,
    LegalBasis,
    apply_diff,
    make_entry,
    normalize_value,
    parse_feed,
)
from gateway.feedformat.signing import Signer, Verifier, generate_keys, load_signer
from tests.support.feedschema import SCHEMA, _errors

T = "2026-11-23T10:00:00Z"
BASIS = {"authority": "Authority of Example", "decision": "12/QD", "date": "2026-11-20"}


def raw(**kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "E-1", "type": "domain", "value": "bad.example",
                           "categories": ["csam"], "issued_at": T}
    out.update(kw)
    return {k: v for k, v in out.items() if v is not None}


# ------------------------------------------------------------------ values

@pytest.mark.parametrize(("etype", "value", "expected"), [
    ("domain", "Bad.Example", "bad.example"),
    ("domain", "bad.example.", "bad.example"),
    ("domain", "bücher.example", "xn--bcher-kva.example"),
    ("domain-exact", "www.bad.example", "www.bad.example"),
    ("url", "https://Bad.Example/a/b?x=1", "https://bad.example/a/b?x=1"),
    ("url", "bad.example", "http://bad.example/"),
    ("ip", "192.0.2.1", "192.0.2.1"),
    ("ip", "2001:DB8::0:1", "2001:db8::1"),
    ("cidr", "198.51.100.0/24", "198.51.100.0/24"),
    ("cidr", "2001:db8::/32", "2001:db8::/32"),
    ("sha256", "AB" * 32, "ab" * 32),
    ("pdq", "0f" * 32, "0f" * 32),
])
def test_normalize_good(etype: str, value: str, expected: str) -> None:
    assert normalize_value(etype, value) == expected


@pytest.mark.parametrize(("etype", "value"), [
    ("domain", "bad..example"),
    ("domain", "bad example"),
    ("domain", "192.0.2.1"),
    ("domain", "a" * 64 + ".example"),
    ("domain", ""),
    ("domain-exact", "-*.example;"),
    ("url", "ftp://bad.example/x"),
    ("url", "https:///nohost"),
    ("ip", "192.0.2.256"),
    ("ip", "bad.example"),
    ("cidr", "198.51.100.1/24"),     # host bits set
    ("cidr", "198.51.100.0/33"),
    ("sha256", "ab" * 31),
    ("sha256", "zz" * 32),
    ("pdq", "ab" * 33),
    ("md5", "ab" * 16),
])
def test_normalize_bad(etype: str, value: str) -> None:
    with pytest.raises(ValueError):
        normalize_value(etype, value)


# ------------------------------------------------------------------ entries

@pytest.mark.parametrize(("kw", "problem"), [
    ({"id": ""}, "entry id"),
    ({"id": "has space"}, "entry id"),
    ({"id": "x" * 129}, "entry id"),
    ({"type": "hostname"}, "type must be one of"),
    ({"value": 5}, "value must be a string"),
    ({"value": "bad..example"}, "bad domain value"),
    ({"type": "cidr", "value": "10.0.0.1/8"}, "bad cidr value"),
    ({"categories": []}, "categories"),
    ({"categories": ["Bad Cat"]}, "categories"),
    ({"categories": "csam"}, "categories"),
    ({"action": "redirect"}, "action must be block or warn"),
    ({"mandatory": "yes"}, "mandatory must be true or false"),
    ({"mandatory": True}, "needs a legal_basis"),
    ({"mandatory": True, "legal_basis": {"authority": "A", "decision": "1"}},
     "legal_basis needs authority, decision and date"),
    ({"mandatory": True, "legal_basis": {**BASIS, "authority": "  "}},
     "legal_basis needs authority"),
    ({"mandatory": True, "legal_basis": {**BASIS, "date": "20/11/2026"}}, "YYYY-MM-DD"),
    ({"issued_at": None}, "issued_at"),
    ({"issued_at": "2026-11-23T10:00:00"}, "issued_at"),      # no timezone
    ({"deadline": "tomorrow"}, "deadline"),
    ({"surprise": 1}, "unknown field"),
])
def test_make_entry_rejects(kw: dict[str, Any], problem: str) -> None:
    with pytest.raises(FeedError, match=re.escape(problem)):
        make_entry(raw(**kw))


@pytest.mark.parametrize("kw", [
    {},
    {"mandatory": True, "legal_basis": BASIS, "deadline": "2026-11-24T12:00:00+07:00"},
    {"legal_basis": BASIS},                        # a basis without mandatory is fine
    {"action": "warn", "categories": ["adult", "gambling"]},
    {"type": "url", "value": "https://bad.example/x"},
    {"type": "sha256", "value": "AB" * 32},
])
def test_make_entry_accepts(kw: dict[str, Any]) -> None:
    e = make_entry(raw(**kw))
    assert e.id == "E-1"
    assert make_entry(e.to_json()) == e            # to_json round-trips


# ------------------------------------------------------------------ documents and diffs

def entry(eid: str, value: str, etype: str = "domain", mandatory: bool = False) -> FeedEntry:
    basis = LegalBasis("Authority", "1/QD", "2026-11-20") if mandatory else None
    return FeedEntry(eid, etype, value, ("csam",), "block", mandatory, basis, T,
                 "2026-11-24T10:00:00Z" if mandatory else None)


SNAPSHOT = Feed(3, T, (entry("A", "a.example", mandatory=True), entry("B", "b.example"),
                       entry("C", "https://c.example/x", "url"),
                       entry("D", "198.51.100.0/24", "cidr"), entry("E", "2001:db8::1", "ip"),
                       entry("F", "ab" * 32, "sha256"), entry("G", "cd" * 32, "pdq"),
                       entry("H", "www.h.example", "domain-exact")))
DIFF = Feed(5, T, (entry("I", "i.example"),), ("B", "C"), since=3)


def test_canonical_bytes_round_trip() -> None:
    for feed in (SNAPSHOT, DIFF, Feed(0, T)):
        data = feed.to_bytes()
        parsed = parse_feed(data)
        assert parsed == feed
        assert parsed.to_bytes() == data
        assert b" " not in data.replace(b"Authority", b"")   # no insignificant whitespace
        assert list(json.loads(data)) == sorted(json.loads(data))


def test_diff_applies() -> None:
    state = apply_diff({}, parse_feed(SNAPSHOT.to_bytes()))
    state = apply_diff(state, parse_feed(DIFF.to_bytes()))
    assert sorted(state) == ["A", "D", "E", "F", "G", "H", "I"]
    # a snapshot replaces everything
    assert list(apply_diff(state, Feed(6, T, (entry("Z", "z.example"),)))) == ["Z"]


@pytest.mark.parametrize(("doc", "problem"), [
    (b"not json", "not valid JSON"),
    (b"[]", "must be a JSON object"),
    (b'{"version":2,"serial":1,"generated_at":"' + T.encode() + b'","entries":[]}',
     "unsupported feed version"),
    (b'{"version":1,"serial":-1,"generated_at":"' + T.encode() + b'","entries":[]}', "serial"),
    (b'{"version":1,"serial":1,"generated_at":"now","entries":[]}', "generated_at"),
    (b'{"version":1,"serial":1,"since":1,"generated_at":"' + T.encode() + b'","entries":[]}',
     "since must be an integer below serial"),
    (b'{"version":1,"serial":1,"generated_at":"' + T.encode()
     + b'","entries":[{"id":"A","removed":true}]}', "only allowed in a diff"),
    (b'{"version":1,"serial":1,"generated_at":"' + T.encode() + b'","entries":{}}',
     "entries must be a list"),
])
def test_parse_feed_rejects(doc: bytes, problem: str) -> None:
    with pytest.raises(FeedError, match=re.escape(problem)):
        parse_feed(doc)


def test_parse_feed_rejects_duplicate_ids_and_bad_entries_whole() -> None:
    twice = Feed(1, T, (entry("A", "a.example"), entry("A", "b.example")))
    with pytest.raises(FeedError, match="appears twice"):
        parse_feed(twice.to_bytes())
    doc = json.loads(SNAPSHOT.to_bytes())
    doc["entries"][-1]["value"] = "not a domain!"
    with pytest.raises(FeedError, match="'H'"):
        parse_feed(json.dumps(doc).encode())


# ------------------------------------------------------------------ signatures

@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    k1, p1 = generate_keys(d, "one")
    k2, p2 = generate_keys(d, "two")
    return {"key1": k1, "pub1": p1, "key2": k2, "pub2": p2}


def test_keygen_refuses_overwrite_and_protects_key(keys: dict[str, Path]) -> None:
    assert keys["key1"].stat().st_mode & 0o077 == 0
    with pytest.raises(FileExistsError, match="rotation"):
        generate_keys(keys["key1"].parent, "one")


def _tamper(data: bytes, header: str) -> tuple[bytes, str]:
    return data.replace(b"a.example", b"x.example"), header


def _truncate(data: bytes, header: str) -> tuple[bytes, str]:
    return data[:-10], header


def _truncated_sig(data: bytes, header: str) -> tuple[bytes, str]:
    return data, header[:-12]


def _unsigned(data: bytes, header: str) -> tuple[bytes, str]:
    return data, ""


def _not_base64(data: bytes, header: str) -> tuple[bytes, str]:
    return data, header.split("ed25519=")[0] + "ed25519=***"


def _wrong_keyid(data: bytes, header: str) -> tuple[bytes, str]:
    return data, "keyid=0000000000000000," + header.split(",", 1)[1]


@pytest.mark.parametrize(("mutate", "reason"), [
    (_tamper, "bad_signature"), (_truncate, "bad_signature"),
    (_truncated_sig, "bad_signature"), (_unsigned, "unsigned"),
    (_not_base64, "bad_signature"),
])
def test_verify_rejects(keys: dict[str, Path], mutate: Any, reason: str) -> None:
    data = SNAPSHOT.to_bytes()
    header = load_signer(keys["key1"]).sign(data)
    bad_data, bad_header = mutate(data, header)
    with pytest.raises(FeedError) as err:
        Verifier.from_files([keys["pub1"]]).verify(bad_data, bad_header)
    assert err.value.reason == reason


def test_verify_ok_and_wrong_key(keys: dict[str, Path]) -> None:
    data = SNAPSHOT.to_bytes()
    signer = load_signer(keys["key1"])
    header = signer.sign(data)
    assert re.fullmatch(r"keyid=[0-9a-f]{16},ed25519=[A-Za-z0-9+/]+=*", header)
    assert len(base64.b64decode(header.split("ed25519=")[1])) == 64
    assert Verifier.from_files([keys["pub1"]]).verify(data, header) == signer.key_id
    with pytest.raises(FeedError, match="bad signature") as err:
        Verifier.from_files([keys["pub2"]]).verify(data, header)
    assert err.value.reason == "bad_signature"
    # an unknown key id still verifies against every trusted key (ids are hints only)
    assert Verifier.from_files([keys["pub1"]]).verify(*_wrong_keyid(data, header))


def test_rotation_trusts_both_keys(keys: dict[str, Path]) -> None:
    data = DIFF.to_bytes()
    both = Verifier.from_files([keys["pub1"], keys["pub2"]])
    for name in ("key1", "key2"):
        signer = load_signer(keys[name])
        assert both.verify(data, signer.sign(data)) == signer.key_id
    assert isinstance(load_signer(keys["key2"]), Signer)


# ------------------------------------------------------------------ JSON Schema

@pytest.mark.parametrize("feed", [SNAPSHOT, DIFF, Feed(0, T)], ids=["snapshot", "diff", "empty"])
def test_real_documents_match_schema(feed: Feed) -> None:
    assert _errors(SCHEMA, json.loads(feed.to_bytes()), SCHEMA) == []


@pytest.mark.parametrize(("path", "value"), [
    (("version",), 2),
    (("serial",), -1),
    (("generated_at",), "2026-11-23 10:00"),
    (("entries", 0, "type"), "hostname"),
    (("entries", 0, "legal_basis"), None),          # mandatory without a basis
    (("entries", 0, "categories"), []),
    (("entries", 0, "value"), "Bad..Example"),
    (("entries", 5, "value"), "xyz"),               # sha256
    (("entries", 0, "extra"), 1),
    (("since",), None),                             # removals in a snapshot
])
def test_schema_rejects_broken_documents(path: tuple[Any, ...], value: Any) -> None:
    doc = json.loads(DIFF.to_bytes() if path == ("since",) else SNAPSHOT.to_bytes())
    target = doc
    for p in path[:-1]:
        target = target[p]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    assert _errors(SCHEMA, doc, SCHEMA), f"schema accepted {path}={value!r}"


def test_url_keeps_a_non_default_port_and_refuses_credentials() -> None:
    from gateway.feedformat.document import normalize_value

    assert normalize_value("url", "HTTPS://X.Example:8443/a?b=1") == "https://x.example:8443/a?b=1"
    assert normalize_value("url", "http://x.example:80/") == "http://x.example/"
    with pytest.raises(ValueError):
        normalize_value("url", "http://user:pw@x.example/")


def test_legal_basis_date_must_be_yyyy_mm_dd() -> None:
    from gateway.feedformat.document import FeedError, make_entry

    raw = {"id": "A-1", "type": "domain", "value": "x.example", "categories": ["csam"],
           "mandatory": True, "issued_at": "2026-11-20T00:00:00Z",
           "legal_basis": {"authority": "Bộ TT&TT", "decision": "1/QĐ", "date": "20261120"}}
    with pytest.raises(FeedError, match="YYYY-MM-DD"):
        make_entry(raw)
