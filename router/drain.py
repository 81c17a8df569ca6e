"""Shutting down without cutting anyone off: SIGTERM to exit within one grace period.

On SIGTERM aiohttp stops accepting connections and waits up to the grace period for the
requests in flight; /readyz answers 503 meanwhile. Streams still open shortly before the
grace period ends have their upstream closed, so each ends the way any broken stream
does, with an OpenAI error event and `data: [DONE]`, instead of a cut connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from router.exchange import Exchange

log = logging.getLogger("router")
MARGIN_S = 1.0  # before the grace period ends: time for the last events to be written


class Drain:
    """The requests in flight, and whether the process is shutting down."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self.live: set[Exchange] = set()
        self._task: asyncio.Task[None] | None = None
        # What a finished request leaves for the loop's next turn (its settle) batches with
        # other requests'. When the last request in flight is done there is nobody to batch
        # with, and the next turn may be spent reading the next request first: then it goes at
        # once, off that request's path.
        self.on_idle: list[Callable[[], None]] = []

    def idle(self) -> None:
        """The last request in flight is done: what it left goes now."""
        for flush in self.on_idle:
            flush()

    async def begin(self, app: web.Application) -> None:
        """on_shutdown: readiness goes false; a timer will end the streams still open."""
        self.draining = True
        log.info("shutting down: %d request(s) in flight get up to %gs to finish", len(self.live), self.grace_s)
        self._task = asyncio.get_running_loop().create_task(self._end_streams())

    async def _end_streams(self) -> None:
        await asyncio.sleep(max(0.0, self.grace_s - MARGIN_S))
        open_streams = [ex for ex in self.live if ex.upstream is not None]
        if open_streams:
            log.warning("grace period over: ending %d open stream(s) with an error event", len(open_streams))
        for ex in open_streams:
            ex.draining = True
            if ex.upstream is not None:
                ex.upstream.close()

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        yield
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


DRAIN = web.AppKey("drain", Drain)
