"""Serving the gateway's HTTP side with bounds a slow or hostile client cannot stretch.

- Headers: aiohttp closes a connection whose next request's headers are not complete within
  its keep-alive timeout, counted from the connection (or the previous response) and not
  reset by trickled bytes; we set it to ``GATEWAY_HEADERS_TIMEOUT_SECONDS``.
- Body: the webhook handler reads its body within ``GATEWAY_BODY_TIMEOUT_SECONDS`` (408).
- Connections: at most ``GATEWAY_CONNECTIONS_MAX`` open at once; one more is closed as it is
  accepted, so 500 trickling clients cannot hold 500 sockets and handlers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import web
from creditwallet.core import limits

log = logging.getLogger(__name__)


class _Refused(asyncio.Protocol):
    """The protocol of a connection over the cap: closed at once, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class CappedSite(web.TCPSite):
    """A TCP site that accepts at most ``connections_max`` connections at once."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        connections_max: int = limits.GATEWAY_CONNECTIONS_MAX,
    ) -> None:
        super().__init__(runner, host, port)
        self._connections_max = connections_max
        self.refused = 0
        self.open_connections = 0

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        # Counted at accept, not when aiohttp registers the connection: a burst of accepts
        # runs before any of them is registered.
        forget = server.connection_lost

        def lost(handler: Any, exc: BaseException | None) -> None:
            self.open_connections -= 1
            forget(handler, exc)

        server.connection_lost = lost  # type: ignore[method-assign,assignment]

        def accept() -> Any:
            if self.open_connections >= self._connections_max:
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning("connection refused: %d open", self._connections_max)
                return _Refused()
            self.open_connections += 1
            return server()

        self._server = await asyncio.get_running_loop().create_server(
            accept, self._host, self._port, backlog=self._backlog
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


def runner(
    app: web.Application, headers_timeout_seconds: float = limits.GATEWAY_HEADERS_TIMEOUT_SECONDS
) -> web.AppRunner:
    return web.AppRunner(app, keepalive_timeout=headers_timeout_seconds)


async def start(
    app: web.Application,
    host: str,
    port: int,
    *,
    connections_max: int = limits.GATEWAY_CONNECTIONS_MAX,
    headers_timeout_seconds: float = limits.GATEWAY_HEADERS_TIMEOUT_SECONDS,
) -> tuple[web.AppRunner, CappedSite]:
    """Set the app up and listen; (runner, site), ``runner.cleanup()`` stops both."""
    app_runner = runner(app, headers_timeout_seconds)
    await app_runner.setup()
    site = CappedSite(app_runner, host, port, connections_max=connections_max)
    await site.start()
    return app_runner, site


async def serve_until_stopped(app: web.Application, host: str, port: int) -> None:
    """The gateway process: serve until SIGINT or SIGTERM, then clean up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app_runner, _ = await start(app, host, port)
    try:
        await stop.wait()
    finally:
        await app_runner.cleanup()
