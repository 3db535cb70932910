"""The bundled Public Suffix List (util/psl.py): the list's own test vectors, and the wire-form
zone the forwarder's in-flight share counts against."""

from __future__ import annotations

import os
from pathlib import Path

import dns.message
import pytest

from gateway.util.names import normalize_name
from gateway.util.psl import default_suffixes


def _shared_data() -> Path:
    """$SAFEGATE_SHARED_DATA, else ../shared/data next to the checkout, else /work/shared/data."""
    env = os.environ.get("SAFEGATE_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "data",
                   Path("/work/shared/data")]
    return next((p for p in candidates if p.is_dir()), candidates[0])


VECTORS = _shared_data() / "psl" / "tests.txt"


def _vectors() -> list[tuple[str, str]]:
    if not VECTORS.is_file():
        return []
    out = []
    for line in VECTORS.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("//"):
            given, want = line.split()
            if given != "null" and not given.startswith("."):  # not names a query can carry
                out.append((given, want))
    return out


@pytest.mark.skipif(not VECTORS.is_file(), reason=f"{VECTORS} (shared test data) missing")
@pytest.mark.parametrize(("given", "want"), _vectors())
def test_official_vectors(given: str, want: str) -> None:
    """`null` (the name is a public suffix itself): the name is its own zone."""
    name = normalize_name(given)
    assert default_suffixes().registrable(name) == (
        name if want == "null" else normalize_name(want))


@pytest.mark.parametrize(("qname", "zone"), [
    ("x1.flood.test", b"flood.test"),
    ("x1.y2.flood.test", b"flood.test"),
    ("a.b.c.d.victim.co.uk", b"victim.co.uk"),
    ("someone.github.io", b"someone.github.io"),   # the list's private section
    ("co.uk", b"co.uk"),
    (".".join(["a"] * 120) + ".flood.test", b"flood.test"),   # only the last labels are read
    ("test", b"test"),
    (".", b""),
])
def test_zone_of_a_question(qname: str, zone: bytes) -> None:
    question = dns.message.make_query(qname, "A").to_wire()[12:]
    assert default_suffixes().zone_of_wire(question) == zone
