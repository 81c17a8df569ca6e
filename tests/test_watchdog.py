"""The movable deadline on the per-chunk path: moving it is a store, expiry is a TimeoutError,
and a cancellation that is not its own passes through untouched."""

from __future__ import annotations

import asyncio

import pytest

from router.watchdog import Watchdog


async def test_deadline_moved_on_every_read_arms_no_timer_per_read():
    loop = asyncio.get_running_loop()
    armed = 0
    real_call_at = loop.call_at

    def counting_call_at(when, callback, *args, **kw):
        nonlocal armed
        armed += getattr(callback, "__name__", "") == "_fire"
        return real_call_at(when, callback, *args, **kw)

    loop.call_at = counting_call_at   # type: ignore[method-assign]
    try:
        async with Watchdog(loop, loop.time() + 0.2) as wd:
            for _ in range(200):
                await asyncio.sleep(0.001)
                wd.when = loop.time() + 0.2
    finally:
        del loop.call_at
    assert not wd.expired
    assert armed <= 5, f"{armed} timer handles for 200 moves"


async def test_silence_past_the_deadline_ends_the_block_with_timeout_error():
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with Watchdog(loop, loop.time() + 0.05, "upstream") as wd:
            await asyncio.sleep(5)
    assert wd.expired and wd.phase == "upstream"


async def test_deadline_moved_earlier_fires_at_the_earlier_time():
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with Watchdog(loop, loop.time() + 30) as wd:
            wd.rearm(loop.time() + 0.05)
            await asyncio.sleep(5)
    assert loop.time() - started < 5


async def test_a_cancellation_that_is_not_the_watchdogs_stays_a_cancellation():
    loop = asyncio.get_running_loop()

    async def guarded() -> None:
        async with Watchdog(loop, loop.time() + 30):
            await asyncio.sleep(5)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
