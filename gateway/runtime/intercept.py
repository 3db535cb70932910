"""DNS steering (issue 5): the names the proxy must see, answered with the proxy's address.

The proxy process writes its intercept set to the state directory (gateway/proxy/intercept.py
owns the file's name and format); the view built from it steers those names.
"""

from __future__ import annotations

import ipaddress
import logging

from gateway.config.gateway import GatewayConfig
from gateway.proxy.intercept import INTERCEPT_FILE, read_intercept_file
from gateway.util.names import normalize_name

log = logging.getLogger(__name__)

def steering(config: GatewayConfig) -> list[str]:
    """The addresses DNS-steered names are answered with ([] when the proxy does not steer)."""
    proxy = config.proxy
    if not proxy.enabled or not proxy.intercept_listen:
        return []
    hosts = [host for _, (host, _) in proxy.intercept_listen
             if not ipaddress.ip_address(host).is_unspecified]
    if not hosts and proxy.public_address:
        hosts = [proxy.public_address]
    return list(dict.fromkeys(hosts))


def read_intercept(config: GatewayConfig) -> frozenset[bytes]:
    """The proxy's intercept set, if the proxy steers and has written it (else empty)."""
    if not steering(config):
        return frozenset()
    try:
        return frozenset(read_intercept_file(config.state_dir / INTERCEPT_FILE))
    except OSError:
        return frozenset()


def steer_scopes(config: GatewayConfig, intercept: frozenset[bytes]) -> frozenset[bytes]:
    """proxy.scan_hosts in the intercept set: their subdomains are steered too."""
    if not intercept:
        return frozenset()
    return frozenset(n for n in (normalize_name(h) for h in config.proxy.scan_hosts)
                     if n in intercept)
