"""lists.yaml `url:` sources (issue #14.5), end to end.

A real HTTP server on loopback publishes a domains list; a real SafeGate downloads it on its
`refresh:` schedule with conditional requests. A changed list applies (new name blocked, removed
name resolves), an unchanged one costs a 304, a garbage page or an outage keeps the
last-known-good copy and counts a failure, and a restart during the outage starts from the copy.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from gateway.compliance.export import build_export
from gateway.config.limits import FileLimits
from gateway.errors import ConfigError
from gateway.lists.catalog import Source, load_catalog
from gateway.runtime.list_refresh import next_wait
from tests.support import unbound as ub
from tests.support.docserver import DocumentServer
from tests.support.procs import SafeGateProcess, write_gateway_config
from tests.support.wait import wait_for

V1 = b"gamble.test\ndrugs.test\n"
V2 = b"drugs.test\nsocial.test\n"
GARBAGE = b"<html><head><title>502 Bad Gateway</title></head>\n<body>try later</body></html>\n"
POLICY = """\
tiers:
  kids: {block: [gambling], answer: nxdomain}
networks:
  - {name: lan, cidrs: ["127.0.0.0/8"], tier: kids}
"""
LIST_NAME = "gambling-feed"


@pytest.fixture
def list_server() -> Iterator[DocumentServer]:
    """A list publisher with ETag and Last-Modified."""
    server = DocumentServer("/lists/gambling.txt", V1,
                            last_modified=formatdate(1_700_000_000, usegmt=True))
    yield server
    server.stop()


def _rcode(gw: SafeGateProcess, name: str) -> int:
    return gw.query(name).rcode()   # type: ignore[no-any-return]


def _count(gw: SafeGateProcess, result: str) -> float:
    found = re.search(rf'safegate_list_refresh_total{{list="{LIST_NAME}",result="{result}"}} '
                      r"(\S+)", gw.metrics_text())
    return float(found[1]) if found else -1.0


def _lists_yaml(url: str) -> str:
    return ("categories:\n  gambling:\n"
            f"    - {{url: \"{url}\", format: domains, refresh: 1s, name: {LIST_NAME}}}\n")


def _list_gateway(unbound: ub.UnboundServer, safegate_factory: Any,
                  list_server: DocumentServer, tmp_path: Path,
                  **files: int) -> SafeGateProcess:
    """A gateway whose gambling list comes from `list_server` (refreshed every second; more
    `limits.files` in `files`), once the first download is enforced."""
    cfg = write_gateway_config(
        tmp_path, upstream_port=unbound.port, policies={"p.yaml": POLICY}, ipv6=False,
        lists_yaml=_lists_yaml(list_server.url),
        extra={"reload": {"watch_interval": 0.2},
               "limits": {"files": {"list_refresh_min": 1, **files}}})
    gw: SafeGateProcess = safegate_factory(cfg)
    wait_for(lambda: _rcode(gw, "gamble.test") == dns.rcode.NXDOMAIN,
             what="the downloaded list was never enforced")
    return gw


@pytest.mark.integration
def test_a_list_from_a_url_refreshes_and_keeps_last_known_good(
        unbound: ub.UnboundServer, safegate_factory: Any, list_server: DocumentServer,
        tmp_path: Path) -> None:
    gw = _list_gateway(unbound, safegate_factory, list_server, tmp_path)
    assert _rcode(gw, "drugs.test") == dns.rcode.NXDOMAIN
    assert _rcode(gw, "social.test") == dns.rcode.NOERROR
    copies = list((tmp_path / "var" / "lists").glob("*.list"))
    assert [c.read_bytes() for c in copies] == [V1]

    # Unchanged: the next refresh is conditional and the server answers 304.
    wait_for(lambda: any(inm and ims and status == 304 for inm, ims, status in
                         list_server.answered), what="no conditional request answered 304")
    wait_for(lambda: _count(gw, "unchanged") >= 1, what="the 304 was not counted")
    assert 'safegate_list_last_success_timestamp_seconds{list="gambling-feed"}' in \
        gw.metrics_text()

    # Changed: the new name is blocked, the removed one resolves again.
    list_server.body = V2
    wait_for(lambda: _rcode(gw, "social.test") == dns.rcode.NXDOMAIN,
             what="the changed list was never enforced")
    wait_for(lambda: _rcode(gw, "gamble.test") == dns.rcode.NOERROR,
             what="the name removed from the list is still blocked")
    assert copies[0].read_bytes() == V2

    # Garbage (an error page answered 200): rejected, the running list stays.
    list_server.body = GARBAGE
    wait_for(lambda: _count(gw, "rejected") >= 1, what="the garbage page was not rejected")
    assert f"list {LIST_NAME}: rejected the download from {list_server.url}" in gw.stderr_text()
    assert copies[0].read_bytes() == V2
    assert _rcode(gw, "social.test") == dns.rcode.NXDOMAIN

    # Outage: counted as an error, the running list stays.
    list_server.stop()
    wait_for(lambda: _count(gw, "error") >= 1, what="the outage was not counted")
    assert f"list {LIST_NAME}: download of {list_server.url} failed" in gw.stderr_text()
    assert _rcode(gw, "social.test") == dns.rcode.NXDOMAIN
    gw.stop()

    # A restart while the publisher is down enforces the last-known-good copy at once.
    gw2 = safegate_factory(gw.config)
    assert _rcode(gw2, "social.test") == dns.rcode.NXDOMAIN
    assert _rcode(gw2, "drugs.test") == dns.rcode.NXDOMAIN
    assert _rcode(gw2, "gamble.test") == dns.rcode.NOERROR


@pytest.mark.parametrize(("source", "message"), [
    ('{url: "http://127.0.0.1:1/x", path: x.txt, format: domains}', "either 'path'"),
    ('{url: "ftp://lists.example/x", format: domains}', "url must be an http(s) URL"),
    ('{url: "http://127.0.0.1:1/x", format: domains, refresh: soon}', "refresh must be"),
    ('{path: x.txt, format: domains, refresh: 1h}', "'refresh' is only for a 'url' source"),
    ('{url: "http://127.0.0.1:1/x", format: domains, name: "Bad Name"}', "list name"),
])
def test_a_bad_url_source_is_a_located_error(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "x.txt").write_text("gamble.test\n")
    lists = tmp_path / "lists.yaml"
    lists.write_text(f"categories:\n  gambling:\n    - {source}\n")
    with pytest.raises(ConfigError) as err:
        load_catalog(lists, state_dir=tmp_path / "var")
    assert message in str(err.value)
    assert f"{lists}:3" in str(err.value)


def test_a_url_source_without_a_copy_enforces_nothing_yet(tmp_path: Path) -> None:
    lists = tmp_path / "lists.yaml"
    lists.write_text("categories:\n  gambling:\n"
                     "    - {url: \"http://127.0.0.1:1/x\", format: domains, refresh: 24h}\n")
    catalog = load_catalog(lists, state_dir=tmp_path / "var")
    (source,) = catalog.remote()
    assert (source.name, source.refresh, source.pending) == ("gambling-1", 86400.0, True)
    assert catalog.sources() == []
    assert source.path in catalog.files()         # its arrival triggers a reload
    source.path.parent.mkdir(parents=True)
    source.path.write_text("gamble.test\n")
    assert [s.path for s in load_catalog(lists, state_dir=tmp_path / "var").sources()] == \
        [source.path]


@pytest.mark.parametrize(("refresh", "result", "wait"), [
    (1.0, "updated", 300.0),          # `refresh: 1s` is raised to limits.files.list_refresh_min
    (86400.0, "unchanged", 86400.0),
    (86400.0, "error", 300.0),        # a failure is retried after the minimum
    (86400.0, "rejected", 300.0),
])
def test_a_list_is_never_fetched_sooner_than_the_minimum(refresh: float, result: str,
                                                         wait: float) -> None:
    source = Source("ads", Path("/x.list"), "domains", url="http://127.0.0.1:1/x",
                    refresh=refresh, name="ads-1")
    assert next_wait(source, result, FileLimits().list_refresh_min) == wait


@pytest.mark.integration
def test_a_download_larger_than_the_bound_is_refused_and_the_list_kept(
        unbound: ub.UnboundServer, safegate_factory: Any, list_server: DocumentServer,
        tmp_path: Path) -> None:
    gw = _list_gateway(unbound, safegate_factory, list_server, tmp_path, feed_bytes=256)
    list_server.body = V2 + b"".join(b"name-%d.social.test\n" % i for i in range(50))
    wait_for(lambda: _count(gw, "error") >= 1, what="the oversized list was not refused")
    assert "larger than limits.files.feed_bytes (256)" in gw.stderr_text()
    assert _rcode(gw, "gamble.test") == dns.rcode.NXDOMAIN     # the running list stays
    assert _rcode(gw, "social.test") == dns.rcode.NOERROR
    assert _count(gw, "updated") == 1


def test_the_rpz_export_includes_a_mandatory_list_downloaded_from_a_url(tmp_path: Path) -> None:
    """`safegate export rpz` reads the downloaded copy like any mandatory list file."""
    lists = tmp_path / "lists.yaml"
    lists.write_text("categories:\n  csam:\n"
                     "    - {url: \"http://127.0.0.1:1/csam.txt\", format: domains}\n")
    state = tmp_path / "var"
    (source,) = load_catalog(lists, state_dir=state).remote()
    source.path.parent.mkdir(parents=True)
    source.path.write_text("csam-test.invalid\n")
    result = build_export(None, lists, 7, state_dir=state)
    assert result.from_lists == 1
    assert "csam-test.invalid" in result.zone
