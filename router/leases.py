"""Concurrency slots are leased, so a crashed replica's slots free themselves; a request
that outlives a lease (a long stream) must keep its slot, so every third of a lease the
slots of the requests still in flight are renewed, in one batched call for all of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from router.drain import DRAIN
from router.handlers import STATE
from router.settings import SETTINGS


async def renew_leases(app: web.Application) -> AsyncIterator[None]:
    state, live = app[STATE], app[DRAIN].live
    every = app[SETTINGS].concurrency_lease_s / 3

    async def renew() -> None:
        while True:
            await asyncio.sleep(every)
            grants = [ex.grant for ex in live if ex.grant is not None]
            if grants:
                state.renew_soon(grants)

    task = asyncio.get_running_loop().create_task(renew())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
