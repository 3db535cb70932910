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
from gateway.publisher.app import WATCHER, make_app
from gateway.publisher.config import PublisherConfig
from gateway.publisher.store import Store
from gateway.publisher.tiers import add_tiers
from gateway.publisher.watch import SerialWatcher
from gateway.publisher.xfr import ZoneTransferServer

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
        add_tiers(app, store, config, registry)
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
            xfr = await start_zone_transfer(config, store, registry, app[WATCHER])
            try:
                await stop.wait()
                log.info("shutting down")
            finally:
                if xfr is not None:
                    await xfr.close()
        finally:
            await runner.cleanup()
    finally:
        store.close()


async def start_zone_transfer(config: PublisherConfig, store: Store,
                              registry: CollectorRegistry, watcher: SerialWatcher
                              ) -> ZoneTransferServer | None:
    """The RPZ zone over AXFR/IXFR when publisher.yaml has `zone_transfer:`."""
    if config.zone_transfer is None:
        return None
    xfr = ZoneTransferServer(config.zone_transfer, store.snapshot, store.diff, config.limits,
                             registry, config.diff_history)
    await xfr.start(watcher)
    return xfr


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
