"""Feed overlays go live atomically and self-probes see them through the live query path."""

from __future__ import annotations

from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.message

from gateway.lists import SCOPE_BOTH, SCOPE_SELF, Action, Rule
from gateway.lists.overlay import Layered, Overlay
from gateway.runtime.app import Gateway
from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.procs import write_gateway_config

LEGAL = Rule("csam", SCOPE_BOTH, Action.DEFAULT, True, "BTTTT-2026-0042")


def test_overlay_matches_beside_the_index() -> None:
    from gateway.lists.index import ListIndex
    from gateway.lists.index_builder import IndexBuilder

    b = IndexBuilder()
    b.add(b"example.test", Rule("adult", SCOPE_BOTH, Action.DEFAULT, False))
    base = ListIndex.from_bytes(b.to_bytes())
    overlay = Overlay({b"a.example.test": (LEGAL,),
                       b"exact.test": (Rule("x", SCOPE_SELF, Action.DEFAULT, False),)})
    layered = Layered(base, [overlay])
    got = layered.match(b"w.a.example.test")
    assert [off for off, _ in got] == [2, 4]  # most specific first across both sources
    assert got[0][1] == (LEGAL,)
    assert layered.match(b"exact.test") and not layered.match(b"w.exact.test")
    assert overlay.entries_by_category == {"csam": 1, "x": 1}


async def test_set_overlay_blocks_with_the_entry_id_and_probe_sees_it(
        tmp_path: Path, unbound: ub.UnboundServer) -> None:
    cfg = write_gateway_config(tmp_path, upstream_port=unbound.port,
                               policies={"p.yaml": POLICY}, lists=LISTS, lists_yaml=LISTS_YAML)
    gw = Gateway(cfg)
    await gw.start()
    try:
        before = await gw.probe("malware.example")
        assert len(before.results) == 4 and not before.blocked
        gen = gw.set_overlay("central", Overlay({b"malware.example": (LEGAL,)}))
        after = await gw.probe("www.malware.example")
        assert after.blocked
        assert {r.ede for r in after.results} == {16}
        assert gen == gw.loaded.view.generation  # type: ignore[union-attr]
        # a real client sees the entry id in the EDE text
        port = gw.loaded.config.dns_listen[0][1]  # type: ignore[union-attr]
        q = dns.message.make_query("www.malware.example", "A", use_edns=0)
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=2)
        texts = [o.text for o in r.options if isinstance(o, dns.edns.EDEOption)]
        assert texts == ["csam: malware.example (BTTTT-2026-0042)"]
        # a file reload keeps the overlay
        assert await gw.reload("test")
        assert (await gw.probe("malware.example")).blocked
        gw.set_overlay("central", None)
        assert not (await gw.probe("malware.example")).blocked
    finally:
        await gw.stop()
