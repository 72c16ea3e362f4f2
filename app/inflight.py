"""Which requests are being handled, and whether the service is draining.

``InFlight.middleware`` is the outermost middleware: a request counts from the moment its
handler starts (aiohttp starts it as soon as the head is parsed, so a body still arriving
counts) until its response is returned. The drain (``app.server``) waits for the count
to reach zero before it lets aiohttp close the connections.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from app.middlewares import Handler

# Loop turns that turn bytes already received into a running handler: one to read and
# parse them, one for the connection's task to take the request, one for the handler task
# to start; one spare.
_SETTLE_TURNS = 4


class InFlight:
    def __init__(self) -> None:
        self.draining = False
        self._handling = 0
        self._idle: asyncio.Future[None] | None = None

    @property
    def handling(self) -> int:
        """Requests whose handler started and has not returned a response yet."""
        return self._handling

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._handling += 1
        try:
            response = await handler(request)
            if self.draining:  # "Connection: close": the client does not send another here
                response.force_close()
            return response
        finally:
            self._handling -= 1
            if not self._handling and self._idle is not None and not self._idle.done():
                self._idle.set_result(None)

    async def wait_idle(self) -> None:
        """Return once no request is being handled, counting those whose bytes had already
        arrived. Bound it with ``asyncio.timeout``."""
        while True:
            for _ in range(_SETTLE_TURNS):
                await asyncio.sleep(0)
            if not self._handling:
                return
            self._idle = asyncio.get_running_loop().create_future()
            try:
                await self._idle
            finally:
                self._idle = None
