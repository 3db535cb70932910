"""Zone transfer and NOTIFY metrics; every label value is from a fixed set (no addresses)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

XFR_TYPES = ("axfr", "ixfr", "soa", "other")
# ok: served as asked (IXFR: incrementally); full: an IXFR answered with the whole zone (serial
# unknown or too old); current: an IXFR from the current serial (one SOA); refused: address
# not allowed, TSIG required but missing, or not our zone; notauth: bad TSIG key/signature;
# busy: no transfer slot freed within limits.xfr_idle_timeout; formerr; error: the client
# went away or stopped reading mid-transfer.
XFR_RESULTS = ("ok", "full", "current", "refused", "notauth", "busy", "formerr", "error")
# acked: the secondary answered NOERROR; error: it answered with another RCODE (e.g. REFUSED:
# its allow-notify lacks us); retried: a resend after no answer; gave_up: no answer after
# limits.notify_retries resends.
NOTIFY_RESULTS = ("acked", "error", "retried", "gave_up")
CLIENT_KINDS = ("allowed", "outside")


class XfrMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.xfr = Counter("safegate_publisher_xfr", "Zone transfer requests (SOA, AXFR, IXFR) "
                           "by type and result.", ["type", "result"], registry=registry)
        self.notify = Counter("safegate_publisher_notify", "NOTIFY messages to secondaries, "
                              "by result.", ["result"], registry=registry)
        self.connections = Gauge("safegate_publisher_xfr_connections", "Open zone transfer "
                                 "TCP connections, by whether the client is in "
                                 "zone_transfer.allow.", ["client"], registry=registry)
        self.dropped = Counter("safegate_publisher_xfr_connections_dropped",
                               "TCP connections closed at accept: limits.xfr_connections "
                               "(allowed) or limits.xfr_outside (outside) reached.",
                               ["client"], registry=registry)
        self.active = Gauge("safegate_publisher_xfr_transfers_active", "AXFR/IXFR answers "
                            "being sent now (at most limits.xfr_transfers).", registry=registry)
        self.serial = Gauge("safegate_publisher_xfr_serial", "SOA serial of the served RPZ "
                            "zone.", registry=registry)
        for t in XFR_TYPES:
            for r in XFR_RESULTS:
                self.xfr.labels(t, r)
        for r in NOTIFY_RESULTS:
            self.notify.labels(r)
        for k in CLIENT_KINDS:
            self.connections.labels(k)
            self.dropped.labels(k)
