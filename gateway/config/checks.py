"""Checks of the files gateway.yaml names: run by `safegate check`, at startup and on reload.

load_config only reads gateway.yaml; these open what it points at (certificates, CA bundles,
keys, policies, lists) and report a problem at the gateway.yaml line that names the file.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.config.feeds import public_key_ref
from gateway.config.gateway import GatewayConfig
from gateway.config.tls import TlsConfig
from gateway.errors import ConfigError
from gateway.util.readfile import file_problem


def check_files(config: GatewayConfig) -> None:
    """Every file gateway.yaml names exists and loads, or a ConfigError at its line."""
    refs = config.file_refs

    def fail(ref: str, message: str) -> ConfigError:
        return ConfigError(message, *refs.get(ref, (str(config.path), None)))

    if config.forwarder.tls_ca is not None:
        try:
            ssl.create_default_context(cafile=config.forwarder.tls_ca)
        except (OSError, ValueError) as exc:   # ssl.SSLError is an OSError
            raise fail("dns.upstream_ca", f"dns.upstream_ca: {config.forwarder.tls_ca}: not a "
                       f"readable PEM CA bundle ({exc})") from None
    for feed in config.feeds:
        for k, key in enumerate(feed.public_keys):
            if not key.is_file():
                raise fail(public_key_ref(feed.name, k),
                           f"feed {feed.name!r}: public key file {key} not found")
    for what, tls in (("dns.tls", config.dot), ("web.tls", config.web_tls)):
        if tls is not None:
            _check_tls(tls, what, fail)
    if config.subscribers is not None and config.subscribers_source is None:
        problem = file_problem(config.subscribers, sys.maxsize, "")   # size: checked when read
        if problem is not None:
            raise fail("subscribers", f"subscribers: file {config.subscribers} {problem}")
    source = config.subscribers_source
    if source is not None and source.token_file is not None and not source.token_file.is_file():
        raise fail("subscribers.token_file",
                   f"subscribers.token_file {source.token_file} not found")
    ca = config.proxy.upstream_ca
    if ca is not None and not ca.is_file():
        raise fail("proxy.upstream_ca", f"proxy.upstream_ca: file {ca} not found")
    _check_paths(config)


def _check_paths(config: GatewayConfig) -> None:
    """The policy and list paths exist and are files (or policy directories), or an error at
    the gateway.yaml line naming them: a file's own reader knows only the file."""
    named = [(f"policies[{i}]", p, "policies") for i, p in enumerate(config.policies)]
    for key, path, what in [*named, ("blocklists", config.blocklists, "blocklists")]:
        if what == "policies" and path.is_dir():
            continue
        problem = file_problem(path, sys.maxsize, "")   # sizes are checked as they are read
        if problem is not None:
            raise ConfigError(f"{what}: {path} {problem}", str(config.path),
                              config.path_lines.get(key) or None)


def _check_tls(tls: TlsConfig, what: str, fail: Callable[[str, str], ConfigError]) -> None:
    """The certificate and key load into a TLS 1.2+ server context, as the listener's will."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(Path(tls.cert), Path(tls.key))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise fail(what, f"{what}: cannot load certificate {tls.cert} with key {tls.key}: "
                   f"{exc}") from None
