"""Serve the app until SIGTERM or SIGINT, then drain it and return (the process exits 0).

Why not ``web.run_app``: its shutdown (``BaseRunner.cleanup``) closes the listener, then
calls ``RequestHandler.close()`` on every connection (``Server.pre_shutdown``), and from
then on a connection drops every byte it receives (``data_received`` returns early once
``_close`` or ``_force_close`` is set). A body still arriving never completes: its handler
waits out the body timeout and answers 408, and shutdown waits with it. So the service
drains first and hands over to aiohttp's cleanup only when no handler is running:

1. close the listener: new connections are refused;
2. mark the app draining: each response from now on carries ``Connection: close``,
   ``/readyz`` answers 503, the rollup scheduler stops and a running pass ends after the
   day it is on;
3. wait until no request is being handled: a body still arriving is read to its end and
   committed, or gets its 408 within the body timeout. Meanwhile an open keep-alive
   connection may still send one request; it is answered, with ``Connection: close``;
4. aiohttp's cleanup: idle keep-alive connections are closed, a request that arrived in
   the last loop turn gets ``STRAGGLER_S`` seconds, then the app's cleanup stops the
   rollup runner, drains the writer (everything queued is committed) and closes the store.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from app.config import Config
from app.keys import CONFIG, INFLIGHT, RUNNER
from app.logs import AccessLogger

log = logging.getLogger("analytics")

KEEPALIVE_S = 75.0  # an idle keep-alive connection is closed after this (run_app's default)
STRAGGLER_S = 3.0  # step 4: aiohttp's shutdown_timeout for a request of the last loop turn
DRAIN_MARGIN_S = 5.0  # step 3: beyond the body timeout and one busy wait for the database


def drain_timeout(config: Config) -> float:
    """The longest step 3 waits, in seconds: a handler that started just before SIGTERM may
    take the body timeout to read its body, then wait for the database to commit."""
    return config.body_timeout_s + config.busy_timeout_ms / 1000 + DRAIN_MARGIN_S


class ListenError(RuntimeError):
    """The listening socket could not be opened (``str(exc)`` names the address and why)."""


async def serve(app: web.Application, config: Config, *, access_log: logging.Logger | None) -> None:
    """Listen on ``config.host``/``config.port`` until SIGTERM or SIGINT, then drain."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # before startup, so none is missed
        loop.add_signal_handler(signum, _on_signal, signum, stop)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=access_log,
        keepalive_timeout=KEEPALIVE_S,
        shutdown_timeout=STRAGGLER_S,
    )
    try:
        await runner.setup()  # the app's startup: storage, writer, scheduler
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as exc:  # the port is taken, the address is not this machine's
            raise ListenError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
            ) from None
        log.info("listening on %s", site.name)
        await stop.wait()
        await drain(app, runner)
    finally:
        await runner.cleanup()
        log.info("stopped")


def _on_signal(signum: int, stop: asyncio.Event) -> None:
    log.info("%s: draining", signal.Signals(signum).name)
    stop.set()


async def drain(app: web.Application, runner: web.AppRunner) -> None:
    """Steps 1–3 above; ``runner.cleanup()`` is step 4."""
    for site in list(runner.sites):
        await site.stop()
    inflight = app[INFLIGHT]
    inflight.draining = True
    app[RUNNER].stop()
    if inflight.handling:
        log.info("waiting for %d requests in progress", inflight.handling)
    limit = drain_timeout(app[CONFIG])
    try:
        async with asyncio.timeout(limit):
            await inflight.wait_idle()
    except TimeoutError:
        log.warning(
            "%d requests still in progress after %.1f s of draining; cancelled in %g s",
            inflight.handling,
            limit,
            STRAGGLER_S,
        )
