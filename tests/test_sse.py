"""SSE reading: whole events however the bytes are split, one batch per read."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import pytest
import aiohttp
from aiohttp import web

from router.sse import MAX_EVENT_BYTES, EventBatches, SSEError, general_payloads, payloads

STREAM = ('data: {"a": "caf\u00e9"}\n\n'
          ": a comment line\n\n"
          "event: message\r\nid: 7\r\ndata: {\"b\": 1}\r\n\r\n"
          "data: line one\ndata: line two\n\n"
          "data:[DONE]\n\n").encode()
EXPECTED = [b'{"a": "caf\xc3\xa9"}', b'{"b": 1}', b"line one\nline two", b"[DONE]"]


@contextlib.asynccontextmanager
async def sse_from(pieces: list[bytes], pause: asyncio.Event | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
    """An SSE answer on a real loopback socket, its `pieces` in separate writes (after the
    first, waiting for `pause` to be set when there is one); the client's response to it."""
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, p in enumerate(pieces):
            if i == 1 and pause is not None:
                await pause.wait()
            await resp.write(p)
            await asyncio.sleep(0.001)   # a separate TCP segment, most of the time
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{runner.addresses[0][1]}/") as r:
            yield r
    finally:
        if pause is not None:
            pause.set()   # a test that failed while the handler waited does not hold the cleanup
        await runner.cleanup()


async def read_all(pieces: list[bytes]) -> list[list[bytes]]:
    """Serve `pieces` as separate writes; read them as the relay does."""
    async with sse_from(pieces) as r:
        return [batch async for batch in EventBatches(r.content)]


@pytest.mark.parametrize("size", [1, 3, 7, 64, len(STREAM)])
async def test_events_survive_any_split_of_the_bytes(size):
    pieces = [STREAM[i:i + size] for i in range(0, len(STREAM), size)]
    batches = await read_all(pieces)
    assert [p for b in batches for p in b] == EXPECTED


async def test_one_read_with_many_events_is_one_batch():
    assert await read_all([STREAM]) == [EXPECTED]


async def test_a_last_event_without_its_blank_line_is_still_read():
    assert await read_all([b"data: x\n\ndata: y"]) == [[b"x"], [b"y"]]


async def test_an_endless_event_is_refused():
    with pytest.raises(SSEError):
        await read_all([b"data: " + b"x" * (MAX_EVENT_BYTES + 10)])


@pytest.mark.parametrize("events", [
    b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]',
    b"data: one",
    b"data: ",
    b"data: a\n\ndata:b",
    b"data: a\n\n\ndata: b",
    b"data: a\n",
    b"data: a\n\n: comment\n\ndata: b",
    b"data: a\n\nevent: x\ndata: b",
    b"data: line one\ndata: line two\n\ndata: c",
    b"data: a\n\nid: 3",
    b"\ndata: a",
    b": only a comment",
    b'data: {"text": "data: not an event"}',
])
def test_the_one_line_fast_path_reads_what_the_general_reader_reads(events):
    assert payloads(events) == general_payloads(events)


async def test_a_reader_waiting_for_the_next_read_holds_nothing_it_handed_over():
    """A stream held open for minutes keeps only an unfinished event, not its last read."""
    release = asyncio.Event()
    pieces = [b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: {"c"', b': 3}\n\ndata: [DONE]\n\n']
    async with sse_from(pieces, release) as r:
        batches = EventBatches(r.content).__aiter__()
        first = await anext(batches)
        assert first == [b'{"a": 1}', b'{"b": 2}']
        waiting = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.05)   # the reader now waits for the next read
        assert not waiting.done()
        assert sys.getrefcount(first) == 2, "the reader still holds the batch it handed over"
        release.set()
        assert await waiting == [b'{"c": 3}', b"[DONE]"]
