"""`safegate feed serve`: run the publisher until SIGTERM/SIGINT (then exit 0)."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector

from gateway.config.addresses import format_address
from gateway.errors import SafeGateError
from gateway.feedformat.signing import Signer, load_signer
from gateway.publisher.app import make_app
from gateway.publisher.config import PublisherConfig
from gateway.publisher.store import Store

log = logging.getLogger("safegate.publisher")
SHUTDOWN_TIMEOUT = 5.0


def load_signing_key(config: PublisherConfig) -> Signer:
    """The signer, or an error that says how to make the key."""
    try:
        return load_signer(config.signing_key)
    except FileNotFoundError:
        raise SafeGateError(
            f"{config.path}: signing_key {config.signing_key} does not exist; create it with "
            f"`safegate feed keygen --out {config.signing_key.parent}`") from None
    except (ValueError, TypeError) as exc:
        raise SafeGateError(f"{config.signing_key}: not a usable private key ({exc})") from None


def tls_context(config: PublisherConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise SafeGateError(f"{config.path}: cannot load tls cert/key: {exc}") from None
    return ctx


async def serve(config: PublisherConfig, signer: Signer, stop: asyncio.Event) -> None:
    """Serve until `stop` is set; long polls are released before the listener closes."""
    store = Store(config.database)
    try:
        store.ensure_gateways(config.gateways)
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        app = make_app(store, signer, config, registry)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            ctx = tls_context(config)
            site = web.TCPSite(runner, config.listen[0], config.listen[1], ssl_context=ctx,
                               backlog=config.limits.listen_backlog)
            try:
                await site.start()
            except OSError as exc:
                raise SafeGateError(f"{config.path}: cannot listen on "
                                    f"{format_address(config.listen)}: {exc.strerror}") from None
            log.info("publisher on %s://%s, serial %d, signing key id %s",
                     "https" if ctx else "http", format_address(config.listen),
                     store.serial(), signer.key_id)
            await stop.wait()
            log.info("shutting down")
        finally:
            await runner.cleanup()
    finally:
        store.close()


def run(config: PublisherConfig) -> int:
    """Run with uvloop when installed; SIGTERM and SIGINT end it cleanly."""
    signer = load_signing_key(config)
    tls_context(config)   # fail before binding, with a clear message

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, signer, stop)

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
    return 0
