"""Feed entries, the gateway side of a publisher in gateway.yaml, and ack checks, for the
end-to-end feed tests (a real publisher process and real gateways)."""

from __future__ import annotations

import time
from typing import Any

import dns.edns
import dns.message
import dns.query
from prometheus_client.parser import text_string_to_metric_families

from tests.support.publisher import (
    PublisherProcess,
    gateway_token,
)

NAME = "malware.example"  # resolves upstream (tests/support/unbound.py BLOCKED_NAMES)


def entry(rid: str, value: str = NAME, **kw: Any) -> dict[str, Any]:
    e = {"id": rid, "type": "domain", "value": value, "categories": ["csam"],
         "mandatory": True, "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "legal_basis": {"authority": "Bộ Công an", "decision": "123/QĐ-BCA",
                         "date": "2026-11-20"}}
    e.update(kw)
    return e


def acked(pub: PublisherProcess, rid: str, gateway: str) -> bool:
    r = pub.request("GET", f"/v1/entries/{rid}")
    if r.status != 200:
        return False
    for g in r.json().get("gateways", []):
        if g.get("gateway") == gateway and g.get("verified_at"):
            return True
    return False


def gateway_extra(pub: PublisherProcess, gw_id: str) -> dict[str, Any]:
    return {
        "gateway": {"id": gw_id, "token": gateway_token(gw_id)},
        "feeds": [{"name": "central", "url": pub.url + "/v1/feed", "type": "safegate",
                   "public_key": str(pub.setup.public_key), "interval": 60,
                   "long_poll": 10}],
    }


def ede_of(port: int, name: str) -> int | None:
    """The EDE code of a gateway's answer to `name` A (None: no EDE, resolved as usual)."""
    q = dns.message.make_query(name, "A", use_edns=0)
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=2)
    codes = [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)]
    return codes[0] if codes else None


def sample_of(text: str, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus text exposition (None when absent)."""
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None
