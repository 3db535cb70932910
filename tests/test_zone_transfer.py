"""The publisher's RPZ zone transfer, asked directly (kdig, dig, dnspython, raw sockets): AXFR
and IXFR answers, TSIG, the address ACL, NOTIFY resends, and the connection limits."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
from pathlib import Path

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import pytest

from gateway.errors import ConfigError
from gateway.feedformat.document import FeedEntry, LegalBasis
from gateway.publisher.config import load_publisher_config
from gateway.publisher.store import Store
from gateway.publisher.zonejournal import OwnerIndex, ZoneJournal
from tests.support.procs import KDIG, dig, kdig
from tests.support.publisher import write_publisher_config
from tests.support.wait import wait_for
from tests.support.xfr import (
    TSIG_NAME,
    TSIG_SECRET,
    WRONG_SECRET,
    ZONE,
    XfrPublisher,
    start_xfr_publisher,
)

KEY = f"hmac-sha256:{TSIG_NAME}:{TSIG_SECRET}"
WRONG = f"hmac-sha256:{TSIG_NAME}:{WRONG_SECRET}"


def _kdig_err(*args: str) -> str:
    """kdig's stdout and stderr (it reports a refused transfer on stderr, exit 1)."""
    r = subprocess.run([KDIG, *args], capture_output=True, text=True, timeout=20, check=False)
    return r.stdout + r.stderr


def _xfr(x: XfrPublisher, **labels: str) -> float:
    return x.metric("safegate_publisher_xfr_total", **labels)


def _records(text: str) -> list[tuple[str, str, str]]:
    """(owner, type, rdata) of the RRs in kdig/dig output."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if line.startswith(";") or len(parts) < 5 or parts[2] != "IN":
            continue
        out.append((parts[0], parts[3], " ".join(parts[4:])))
    return out


def _soa_serials(text: str) -> list[int]:
    return [int(r[2].split()[2]) for r in _records(text) if r[1] == "SOA"]


def _ixfr_parts(text: str) -> tuple[list[int], list[str], list[str]]:
    """(SOA serials, owners deleted, owners added) of an incremental answer, owners relative."""
    recs = _records(text)
    soas = [i for i, r in enumerate(recs) if r[1] == "SOA"]
    cut = soas[2] if len(soas) > 2 else len(recs)
    suffix = f".{ZONE}."
    deleted = [r[0].removesuffix(suffix) for r in recs[:cut] if r[1] == "CNAME"]
    added = [r[0].removesuffix(suffix) for r in recs[cut:] if r[1] == "CNAME"]
    return _soa_serials(text), deleted, added


def _read_frames(sock: socket.socket, until_soas: int) -> list[bytes]:
    """Length-prefixed messages until `until_soas` SOA records were seen (or EOF)."""
    frames: list[bytes] = []
    soas = 0
    buf = b""
    while soas < until_soas:
        while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return frames
            buf += chunk
        size = struct.unpack("!H", buf[:2])[0]
        frames.append(buf[2:2 + size])
        buf = buf[2 + size:]
        m = dns.message.from_wire(frames[-1], xfr=True, keyring=False)
        soas += sum(len(r) for r in m.answer if r.rdtype == dns.rdatatype.SOA)
        if m.rcode() != dns.rcode.NOERROR:
            return frames
    return frames


def _ask(port: int, q: dns.message.Message, *, source: str = "127.0.0.1",
         until_soas: int = 1) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as s:
        wire = q.to_wire()
        s.sendall(struct.pack("!H", len(wire)) + wire)
        return _read_frames(s, until_soas)


# ---------------------------------------------------------------------- the journal (no I/O)


def test_journal_condenses_deltas_and_forgets_beyond_its_bounds() -> None:
    j = ZoneJournal(1, frozenset({"a.example"}), max_deltas=3, max_records=100)
    assert j.update(2, frozenset({"a.example", "b.example"}))
    assert not j.update(2, frozenset({"a.example", "b.example"}))   # same serial: no delta
    j.update(3, frozenset({"b.example", "c.example"}))
    j.update(4, frozenset({"b.example", "a.example"}))
    d = j.since(1)      # a: removed at 3, back at 4 -> no change; c: added and removed
    assert d is not None and (d.old, d.new) == (1, 4)
    assert (d.deleted, d.added) == (frozenset(), frozenset({"b.example"}))
    d = j.since(3)
    assert d is not None and (d.deleted, d.added) == ({"c.example"}, {"a.example"})
    j.update(5, frozenset())          # a 4th delta: the oldest (1 -> 2) is forgotten
    assert j.since(1) is None and j.since(2) is not None
    assert j.since(99) is None        # a serial never served
    small = ZoneJournal(1, frozenset(), max_deltas=10, max_records=2)
    small.update(2, frozenset({"x.example", "y.example", "z.example"}))
    assert small.since(1) is None     # 3 changed records > max_records: kept nothing


def _entry(eid: str, value: str, etype: str = "domain", mandatory: bool = True) -> FeedEntry:
    return FeedEntry(eid, etype, value, ("csam",), "block", mandatory,
                     LegalBasis("Authority", "7/QD", "2026-11-20") if mandatory else None,
                     "2026-11-20T00:00:00Z")


def test_owner_index_follows_store_diffs_exactly(tmp_path: Path) -> None:
    """From the store's diffs, including what its rows forget: a removed id reused for another
    name, two entries on one name, an entry added and removed between two looks."""
    store = Store(tmp_path / "p.sqlite3")
    try:
        zone = "rpz.safegate.example"
        store.add_entries([_entry("A", "one.example"), _entry("B", "shared.example"),
                           _entry("C", "shared.example", "domain-exact"),
                           _entry("W", "warn.example", mandatory=False)])
        serial, entries = store.snapshot()
        index = OwnerIndex(zone, entries)
        assert index.owners() == {"one.example", "*.one.example", "shared.example",
                                  "*.shared.example"}

        def follow() -> frozenset[str]:
            nonlocal serial
            new, added, removed = store.diff(serial)
            index.apply(added, removed)
            serial = new
            return index.owners()

        store.remove_entry("A", "2026-11-21T00:00:00Z")
        store.add_entries([_entry("A", "two.example", "domain-exact")])   # id reused
        store.remove_entry("B", "2026-11-21T00:00:00Z")                   # C still has it
        store.add_entries([_entry("T", "transient.example")])
        store.remove_entry("T", "2026-11-21T00:00:00Z")
        assert follow() == {"two.example", "shared.example"}
        store.remove_entry("C", "2026-11-21T00:00:00Z")
        assert follow() == {"two.example"}
        assert follow() == {"two.example"}                               # nothing new
    finally:
        store.close()


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize(("zt", "message"), [
    ({"zone": ZONE, "allow": ["127.0.0.1"]}, "zone_transfer needs 'listen'"),
    ({"listen": ["127.0.0.1:5300"]}, "zone_transfer.allow must list"),
    ({"listen": ["127.0.0.1:5300"], "allow": ["300.0.0.1"]}, "zone_transfer.allow:"),
    ({"listen": ["nowhere:53"], "allow": ["::1"]}, "zone_transfer.listen:"),
    ({"listen": ["::1"], "allow": ["::1"], "tsig": {"name": "k", "secret_file": "none.key"}},
     "secret_file"),
    ({"listen": ["::1"], "allow": ["::1"], "tsig": {"name": "k", "algorithm": "hmac-md5",
                                                    "secret_file": "k.key"}},
     "algorithm must be one of"),
    ({"listen": ["::1"], "allow": ["::1"], "tsig": {"name": "k", "secret_file": "short.key"}},
     "at least 16 bytes"),
    ({"listen": ["::1"], "allow": ["::1"], "primary": "x"}, "unknown key 'primary'"),
])
def test_config_errors_name_the_file_and_problem(tmp_path: Path, zt: dict[str, object],
                                                 message: str) -> None:
    (tmp_path / "k.key").write_text(TSIG_SECRET)
    (tmp_path / "short.key").write_text("c2hvcnQ=")
    setup = write_publisher_config(tmp_path, extra={"zone_transfer": zt}, keygen=False)
    with pytest.raises(ConfigError) as exc:
        load_publisher_config(setup.config)
    assert message in str(exc.value) and "publisher.yaml" in str(exc.value)


def test_config_reads_a_tsig_keygen_file(tmp_path: Path) -> None:
    x_dir = tmp_path / "p"
    setup = write_publisher_config(x_dir, keygen=False, extra={"zone_transfer": {
        "listen": ["127.0.0.1:5300", "[::1]"], "allow": ["127.0.0.0/8"],
        "notify": ["127.0.0.1:5301"],
        "tsig": {"name": TSIG_NAME, "secret_file": "xfr.key"}}})
    (x_dir / "xfr.key").write_text(f'key "{TSIG_NAME}" {{\n\talgorithm hmac-sha256;\n'
                                   f'\tsecret "{TSIG_SECRET}";\n}};\n')
    zt = load_publisher_config(setup.config).zone_transfer
    assert zt is not None and zt.tsig is not None
    assert zt.listen == (("127.0.0.1", 5300), ("::1", 53)) and zt.zone == "rpz.safegate.invalid"
    assert zt.tsig.algorithm == "hmac-sha256" and len(zt.tsig.secret) == 34


# ---------------------------------------------------------------------- a real publisher


def test_axfr_and_ixfr_answers(tmp_path: Path) -> None:
    x = start_xfr_publisher(tmp_path / "pub")
    with x.pub:
        x.wait_serial(x.add("malware.example", "A-1"))
        x.wait_serial(x.add("phish.example", "A-2"))
        out = kdig("@127.0.0.1", "-p", str(x.port), ZONE, "axfr")
        owners = {r[0] for r in _records(out) if r[1] == "CNAME"}
        assert owners == {f"{n}.{ZONE}." for n in (
            "malware.example", "*.malware.example", "phish.example", "*.phish.example")}
        assert _soa_serials(out) == [2, 2]
        # the same records as GET /v1/rpz (one renderer for both)
        text = x.pub.request("GET", "/v1/rpz").body.decode()
        assert sum(1 for line in text.splitlines() if line.endswith("CNAME .")) == 4
        x.wait_serial(x.remove("A-1"))
        # condensed 1 -> 3 (RFC 1995 allows it): malware deleted, phish added
        assert _ixfr_parts(dig("@127.0.0.1", "-p", str(x.port), ZONE, "ixfr=1")) == (
            [3, 1, 3, 3], ["*.malware.example", "malware.example"],
            ["*.phish.example", "phish.example"])
        assert _ixfr_parts(kdig("@127.0.0.1", "-p", str(x.port), ZONE, "ixfr=2")) == (
            [3, 2, 3, 3], ["*.malware.example", "malware.example"], [])
        assert _xfr(x, type="ixfr", result="ok") == 2
        # up to date: one SOA; unknown serial: the whole zone (AXFR form)
        assert _soa_serials(kdig("@127.0.0.1", "-p", str(x.port), ZONE, "ixfr=3")) == [3]
        assert _xfr(x, type="ixfr", result="current") == 1
        out = kdig("@127.0.0.1", "-p", str(x.port), ZONE, "ixfr=77")
        assert _soa_serials(out) == [3, 3] and len(_records(out)) == 5   # SOA NS 2x CNAME SOA
        assert _xfr(x, type="ixfr", result="full") == 1
        # SOA over UDP (how secondaries check the serial)
        assert "3 3600 600 604800 300" in dig("@127.0.0.1", "-p", str(x.port), ZONE, "SOA",
                                              "+short")


def test_ixfr_after_a_restart_is_a_full_answer(tmp_path: Path) -> None:
    """The journal is what this process served: an older serial gets the whole zone."""
    x = start_xfr_publisher(tmp_path / "pub")
    with x.pub:
        x.wait_serial(x.add("malware.example", "A-1"))
    x.pub.start()
    with x.pub:
        out = kdig("@127.0.0.1", "-p", str(x.port), ZONE, "ixfr=0")
        assert _soa_serials(out) == [1, 1]
        assert _xfr(x, type="ixfr", result="full") == 1 and _xfr(x, type="ixfr",
                                                                  result="ok") == 0


def test_tsig_required_and_checked(tmp_path: Path) -> None:
    x = start_xfr_publisher(tmp_path / "pub", tsig=True)
    with x.pub:
        x.wait_serial(x.add("malware.example", "A-1"))
        p = str(x.port)
        out = kdig("@127.0.0.1", "-p", p, "-y", KEY, ZONE, "axfr")
        assert _soa_serials(out) == [1, 1] and "failed" not in out.lower()
        out = dig("@127.0.0.1", "-p", p, "-y", KEY, ZONE, "ixfr=0")
        assert _soa_serials(out) == [1, 0, 1, 1] and "tsig verify failure" not in out.lower()
        assert "REFUSED" in _kdig_err("@127.0.0.1", "-p", p, ZONE, "axfr")
        # NOTAUTH with the TSIG error (RFC 8945 5.2), which kdig reports by name
        assert "error 'BADSIG'" in _kdig_err("@127.0.0.1", "-p", p, "-y", WRONG, ZONE, "axfr")
        other = f"hmac-sha256:other-key:{TSIG_SECRET}"
        assert "error 'BADKEY'" in _kdig_err("@127.0.0.1", "-p", p, "-y", other, ZONE, "axfr")
        wrong = dns.tsigkeyring.from_text({TSIG_NAME: ("hmac-sha256", WRONG_SECRET)})
        q = dns.message.make_query(ZONE, "AXFR")
        q.use_tsig(wrong, TSIG_NAME)
        reply = dns.message.from_wire(_ask(x.port, q)[0], keyring=False)
        assert reply.rcode() == dns.rcode.NOTAUTH and reply.tsig_error == dns.rcode.BADSIG
        assert _xfr(x, type="axfr", result="refused") == 1
        # the NOTAUTH counts under "other": an unverified message's question is not trusted
        assert _xfr(x, result="notauth") == 3
        # SOA may be asked unsigned (the serial is all it tells)
        assert "localhost." in dig("@127.0.0.1", "-p", p, ZONE, "SOA", "+short")
        # dnspython checks every message's MAC of a multi-message signed transfer
        for i in range(40):
            serial = x.add(f"n{i}.malware.example", f"B-{i}")
        x.wait_serial(serial)
        keyring = dns.tsigkeyring.from_text({TSIG_NAME: ("hmac-sha256", TSIG_SECRET)})
        q = dns.message.make_query(ZONE, "AXFR")
        q.use_tsig(keyring, TSIG_NAME)
        msgs = list(dns.query.xfr("127.0.0.1", ZONE, port=x.port, keyring=keyring,
                                  keyname=TSIG_NAME, keyalgorithm="hmac-sha256"))
        assert len(msgs) >= 1
        names = {rrs.name.to_text() for m in msgs for rrs in m.answer
                 if rrs.rdtype == dns.rdatatype.CNAME}
        assert len(names) == 82


def _add_batch(x: XfrPublisher, directory: Path, values: list[str]) -> None:
    """One `feed add --file` of mandatory domain entries; waits for the zone to have them."""
    f = directory / "batch.json"
    f.write_text(json.dumps([{"id": f"B-{i}", "type": "domain", "value": v,
                              "categories": ["csam"], "mandatory": True,
                              "legal_basis": {"authority": "A", "decision": "1",
                                              "date": "2026-11-20"},
                              "issued_at": "2026-11-20T00:00:00Z"}
                             for i, v in enumerate(values)]))
    r = x.pub.feed("add", "--file", str(f), "--force")
    assert r.returncode == 0, r.stderr
    x.wait_serial(1)


def test_message_size_bound(tmp_path: Path) -> None:
    x = start_xfr_publisher(tmp_path / "pub", limits={"xfr_message_bytes": 1024})
    with x.pub:
        _add_batch(x, tmp_path, [f"n{i:03d}-long-label-for-size.malware.example"
                                 for i in range(60)])
        frames = _ask(x.port, dns.message.make_query(ZONE, "AXFR"), until_soas=2)
        assert len(frames) > 5 and max(len(f) for f in frames) <= 1024
        got = {rrs.name.to_text() for f in frames
               for rrs in dns.message.from_wire(f, xfr=True).answer
               if rrs.rdtype == dns.rdatatype.CNAME}
        assert len(got) == 120


def test_outside_clients_are_refused(tmp_path: Path) -> None:
    x = start_xfr_publisher(tmp_path / "pub", allow=["127.0.0.2/32"])
    with x.pub:
        frames = _ask(x.port, dns.message.make_query(ZONE, "AXFR"))
        assert dns.message.from_wire(frames[0]).rcode() == dns.rcode.REFUSED
        q = dns.message.make_query(ZONE, "SOA")
        assert dns.query.udp(q, "127.0.0.1", port=x.port, timeout=2).rcode() == \
            dns.rcode.REFUSED
        # the allowed address transfers
        frames = _ask(x.port, dns.message.make_query(ZONE, "AXFR"), source="127.0.0.2",
                      until_soas=2)
        assert dns.message.from_wire(frames[0]).rcode() == dns.rcode.NOERROR
        assert _xfr(x, type="axfr", result="refused") == 1
        assert _xfr(x, type="soa", result="refused") == 1
        assert _xfr(x, type="axfr", result="ok") == 1
        # another zone, another type: REFUSED; garbage: FORMERR or dropped, server lives on
        assert "REFUSED" in _kdig_err("@127.0.0.1", "-b", "127.0.0.2", "-p", str(x.port),
                                      "example", "axfr")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
            s.settimeout(2)
            s.sendto(b"\x12\x34\x00\x00" + b"\xff" * 30, ("127.0.0.1", x.port))
            assert s.recv(512)[3] & 0x0F == dns.rcode.FORMERR
        assert "localhost." in dig("@127.0.0.1", "-p", str(x.port), "-b", "127.0.0.2", ZONE,
                                   "SOA", "+short")


def _open(port: int, source: str, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5,
                                     source_address=(source, 0))
        socks.append(s)
    return socks


def _closed_by_server(s: socket.socket) -> bool:
    s.settimeout(5)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_many_connections_cannot_pass_the_bounds(tmp_path: Path) -> None:
    """A stranger opening 30 connections holds at most limits.xfr_outside of them; an allowed
    host opening 30 holds at most limits.xfr_connections; the rest are closed at once, idle
    ones after xfr_idle_timeout, and a secondary still transfers."""
    x = start_xfr_publisher(tmp_path / "pub", allow=["127.0.0.1/32"],
                            limits={"xfr_connections": 3, "xfr_outside": 2,
                                    "xfr_idle_timeout": 2})
    with x.pub:
        strangers = _open(x.port, "127.0.0.2", 30)
        wait_for(lambda: x.metric("safegate_publisher_xfr_connections_dropped_total",
                                  client="outside") == 28, timeout=10,
                 what="28 stranger connections dropped")
        assert x.metric("safegate_publisher_xfr_connections", client="outside") == 2
        secondary = _open(x.port, "127.0.0.1", 30)
        wait_for(lambda: x.metric("safegate_publisher_xfr_connections_dropped_total",
                                  client="allowed") == 27, timeout=10,
                 what="27 allowed connections dropped")
        assert x.metric("safegate_publisher_xfr_connections", client="allowed") == 3
        assert sum(_closed_by_server(s) for s in secondary[3:]) == 27
        # held connections that send nothing are closed by the idle timeout
        assert all(_closed_by_server(s) for s in secondary[:3] + strangers[:2])
        wait_for(lambda: x.metric("safegate_publisher_xfr_connections") == 0, timeout=10,
                 what="no connection left open")
        for s in strangers + secondary:
            s.close()
        frames = _ask(x.port, dns.message.make_query(ZONE, "AXFR"), until_soas=2)
        assert dns.message.from_wire(frames[0]).rcode() == dns.rcode.NOERROR
        held = _open(x.port, "127.0.0.1", 1)[0]
        wait_for(lambda: x.metric("safegate_publisher_xfr_connections", client="allowed") == 1,
                 timeout=10, what="a connection open at shutdown")
    # leaving `with` stopped the publisher, asserting a clean exit 0 with that connection open
    assert _closed_by_server(held)
    held.close()


def test_notify_is_resent_then_given_up(tmp_path: Path) -> None:
    """A secondary that never answers gets 1 + limits.notify_retries NOTIFYs per serial; one
    that answers is counted as acked."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    answering = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with silent, answering:
        silent.bind(("127.0.0.1", 0))
        answering.bind(("127.0.0.1", 0))
        x = start_xfr_publisher(tmp_path / "pub", limits={"notify_retries": 2}, notify=[
            f"127.0.0.1:{silent.getsockname()[1]}", f"127.0.0.1:{answering.getsockname()[1]}"])
        with x.pub:
            x.add("malware.example", "A-1")
            answering.settimeout(10)
            data, addr = answering.recvfrom(4096)
            n = dns.message.from_wire(data)
            assert n.opcode() == dns.opcode.NOTIFY and n.question[0].name.to_text() == ZONE + "."
            assert n.answer[0][0].serial == 1
            answering.sendto(dns.message.make_response(n).to_wire(), addr)
            wait_for(lambda: x.metric("safegate_publisher_notify_total", result="acked") == 1,
                     timeout=10, what="NOTIFY acked")
            silent.settimeout(15)
            got = [dns.message.from_wire(silent.recv(4096)).answer[0][0].serial
                   for _ in range(3)]
            assert got == [1, 1, 1]
            wait_for(lambda: x.metric("safegate_publisher_notify_total", result="gave_up")
                     == 1, timeout=15, what="NOTIFY given up")
            assert x.metric("safegate_publisher_notify_total", result="retried") == 2
            silent.settimeout(0.5)
            with pytest.raises(TimeoutError):
                silent.recv(4096)   # nothing after giving up


def test_transfer_slots_are_bounded(tmp_path: Path) -> None:
    """With limits.xfr_transfers 1, a secondary that asks for the zone and stops reading holds
    the only slot until xfr_idle_timeout drops it (limits.xfr_send_buffer keeps the kernel
    from absorbing the whole zone): a second AXFR is never served alongside it. It waits up
    to xfr_idle_timeout and gets SERVFAIL (busy), or is served after the first is dropped."""
    x = start_xfr_publisher(tmp_path / "pub", limits={"xfr_transfers": 1,
                                                      "xfr_idle_timeout": 2,
                                                      "xfr_send_buffer": 65536})
    with x.pub:
        _add_batch(x, tmp_path, [f"n{i:05d}.stalled-reader-test.malware.example"
                                 for i in range(6000)])    # ~450 kB of zone
        stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)   # a small window
        stalled.connect(("127.0.0.1", x.port))
        wire = dns.message.make_query(ZONE, "AXFR").to_wire()
        stalled.sendall(struct.pack("!H", len(wire)) + wire)           # ... and never read
        wait_for(lambda: x.metric("safegate_publisher_xfr_transfers_active") == 1, timeout=10,
                 what="the stalled transfer holding the slot")
        frames = _ask(x.port, dns.message.make_query(ZONE, "AXFR"), until_soas=2)
        if dns.message.from_wire(frames[0], xfr=True).rcode() == dns.rcode.NOERROR:
            # served only after the stalled one was dropped (counted before its slot freed)
            assert _xfr(x, type="axfr", result="error") == 1
        else:
            assert dns.message.from_wire(frames[0]).rcode() == dns.rcode.SERVFAIL
            assert _xfr(x, type="axfr", result="busy") == 1
        wait_for(lambda: _xfr(x, type="axfr", result="error") == 1, timeout=20,
                 what="the stalled transfer dropped after xfr_idle_timeout")
        assert _xfr(x, type="axfr", result="ok") <= 1
        stalled.close()
        wait_for(lambda: x.metric("safegate_publisher_xfr_transfers_active") == 0,
                 timeout=10, what="no transfer left running")


def test_malformed_requests_never_end_the_server(tmp_path: Path) -> None:
    x = start_xfr_publisher(tmp_path / "pub", limits={"xfr_message_bytes": 2048})
    with x.pub:
        def raw(payload: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", x.port), timeout=5) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data
        assert raw(b"\x00\x03abc") == b""                      # not even a header: closed
        reply = raw(struct.pack("!H", 20) + b"\x12\x34\x00\x00" + b"\xff" * 16)
        assert reply[2:4] == b"\x12\x34" and reply[5] & 0x0F == dns.rcode.FORMERR
        assert raw(struct.pack("!H", 4096) + b"\x00" * 4096) == b""   # > xfr_message_bytes
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            s.sendto(b"\x01\x02\x03", ("127.0.0.1", x.port))    # dropped, no answer
            with pytest.raises(TimeoutError):
                s.recv(512)
        # an AXFR over UDP is FORMERR (TCP only); SOA over UDP still answers
        q = dns.message.make_query(ZONE, "AXFR")
        assert dns.query.udp(q, "127.0.0.1", port=x.port, timeout=2).rcode() == \
            dns.rcode.FORMERR
        assert "localhost." in dig("@127.0.0.1", "-p", str(x.port), ZONE, "SOA", "+short")
        assert x.pub.proc is not None and x.pub.proc.poll() is None
        assert _xfr(x, type="other", result="formerr") == 3   # the two short ones, garbage
        assert _xfr(x, type="axfr", result="formerr") == 1


def test_ipv6_transfer_and_notify(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as secondary:
        secondary.bind(("::1", 0))
        secondary.settimeout(10)
        x = start_xfr_publisher(tmp_path / "pub", ipv6=True, allow=["::1"],
                                notify=[f"[::1]:{secondary.getsockname()[1]}"])
        with x.pub:
            x.wait_serial(x.add("malware.example", "A-1"))
            data, addr = secondary.recvfrom(4096)
            n = dns.message.from_wire(data)
            assert n.opcode() == dns.opcode.NOTIFY and n.answer[0][0].serial == 1
            secondary.sendto(dns.message.make_response(n).to_wire(), addr)
            out = kdig("@::1", "-p", str(x.port), ZONE, "axfr")
            assert _soa_serials(out) == [1, 1]
            assert "REFUSED" in _kdig_err("@127.0.0.1", "-p", str(x.port), ZONE, "axfr")
            wait_for(lambda: x.metric("safegate_publisher_notify_total", result="acked") == 1,
                     timeout=10, what="NOTIFY over IPv6 acked")
