"""SIGTERM: stop taking requests, let those in flight finish within one grace period, exit 0;
a stream still open at the end of it ends with an error event and [DONE], not a cut connection.

A real `router serve` process in front of a stand-in that streams slowly.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import orjson

from providers.standins import Reply
from tests.serving import serve
from tests.test_replicas import routes


async def serve_with_grace(tmp_path: Path, vendor, grace_s: float) -> tuple[asyncio.subprocess.Process, str]:
    return await serve(tmp_path, routes(vendor, {}), vendor, env={"REDIS_URL": "", "ROUTER_SHUTDOWN_GRACE_S": str(grace_s)})


async def read_stream(s: aiohttp.ClientSession, url: str, started: asyncio.Event) -> list[bytes]:
    body = {"model": "m", "prompt": "hi", "max_tokens": 50, "stream": True}
    async with s.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200
        events = []
        async for line in r.content:
            if line.startswith(b"data: "):
                events.append(line[6:].strip())
                started.set()
        return events


async def test_a_stream_that_ends_within_the_grace_period_finishes_and_the_process_exits_0(tmp_path, vendors) -> None:
    vendors.openai.control.push(Reply(chunks=6, chunk_delay=0.3))  # about 1.8 s of stream
    proc, url = await serve_with_grace(tmp_path, vendors.openai, grace_s=10)
    started = asyncio.Event()
    async with aiohttp.ClientSession() as s:
        stream = asyncio.ensure_future(read_stream(s, url, started))
        await started.wait()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        try:  # no new requests once shutting down
            async with s.post(url + "/v1/completions", json={"model": "m", "prompt": "hi"},
                              timeout=aiohttp.ClientTimeout(total=2)) as r:
                refused = r.status >= 500
        except aiohttp.ClientError:
            refused = True
        events = await stream
    assert refused
    assert events[-1] == b"[DONE]"
    assert not any(b'"error"' in e for e in events)
    assert await asyncio.wait_for(proc.wait(), 15) == 0


async def test_a_stream_still_open_at_the_end_of_the_grace_period_gets_an_error_event_and_done(
    tmp_path, vendors,
) -> None:
    vendors.openai.control.push(Reply(chunks=100, chunk_delay=0.2))  # 20 s: longer than the grace period
    proc, url = await serve_with_grace(tmp_path, vendors.openai, grace_s=2)
    started = asyncio.Event()
    async with aiohttp.ClientSession() as s:
        stream = asyncio.ensure_future(read_stream(s, url, started))
        await started.wait()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        events = await asyncio.wait_for(stream, 15)
    assert time.monotonic() - t0 < 3
    assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1
    error = orjson.loads(events[-2])["error"]
    assert error["code"] == "server_shutting_down" and error["type"]
    assert await asyncio.wait_for(proc.wait(), 15) == 0
