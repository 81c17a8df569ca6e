"""The proxy's upstream client against a real vendor-side server on a loopback socket: the
request as the vendor sees it, keep-alive reuse and when a connection is not reused, the
per-origin limit, each timeout, and failures as aiohttp's exception types."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from router.upstream import Upstream


@dataclass
class Vendor:
    url: str
    connections: set[object] = field(default_factory=set)   # peers seen
    seen: list[dict[str, object]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0


@pytest.fixture
async def vendor() -> AsyncIterator[Vendor]:
    """/echo answers what it got; /slow answers after 0.1 s; /big sends 1 MiB; /trickle sends
    headers then one byte every 0.3 s; /chunks sends n HTTP chunks of `size` bytes; /close
    answers with Connection: close."""
    v = Vendor("")

    async def handle(request: web.Request) -> web.StreamResponse:
        v.connections.add(request.transport.get_extra_info("peername"))   # type: ignore[union-attr]
        body = await request.read()
        v.seen.append({"path": request.path_qs, "method": request.method, "host": request.host,
                       "headers": dict(request.headers), "body": body})
        v.in_flight += 1
        v.most_in_flight = max(v.most_in_flight, v.in_flight)
        try:
            if request.path == "/slow":
                await asyncio.sleep(0.1)
            if request.path == "/big":
                return web.Response(body=b"x" * (1 << 20))
            if request.path == "/trickle":
                resp = web.StreamResponse()
                await resp.prepare(request)
                for _ in range(20):
                    await resp.write(b".")
                    await asyncio.sleep(0.3)
                return resp
            if request.path == "/chunks":   # one HTTP chunk per write, as a vendor sends events
                n, size = int(request.query["n"]), int(request.query["size"])
                resp = web.StreamResponse()
                await resp.prepare(request)
                for i in range(n):
                    await resp.write(bytes([65 + i % 26]) * size)
                return resp
            if request.path == "/close":
                return web.Response(body=b"bye", headers={"Connection": "close"})
            return web.Response(body=body, status=int(request.query.get("status", 200)))
        finally:
            v.in_flight -= 1

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    v.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"   # type: ignore[union-attr]
    yield v
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[Upstream]:
    c = Upstream(limit_per_host=2)
    yield c
    await c.close()


async def test_the_vendor_sees_a_plain_post_with_its_path_host_headers_and_body(vendor, client):
    resp = await client.post(vendor.url + "/v1/chat/completions?api-version=2", b'{"a": 1}',
                             {"Content-Type": "application/json", "Authorization": "Bearer k"}, 5)
    assert resp.status == 200 and await resp.read() == b'{"a": 1}'
    resp.release()
    got = vendor.seen[0]
    assert got["method"] == "POST" and got["path"] == "/v1/chat/completions?api-version=2"
    assert got["host"] == vendor.url.removeprefix("http://")
    headers = got["headers"]
    assert isinstance(headers, dict)
    assert headers["Authorization"] == "Bearer k" and headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == "8"


async def test_the_answers_status_and_headers_come_back_as_sent(vendor, client):
    resp = await client.post(vendor.url + "/e?status=429", b"slow down", {}, 5)
    assert resp.status == 429 and resp.headers["Content-Length"] == "9"
    assert await resp.read() == b"slow down"
    resp.release()


@pytest.mark.parametrize(("path", "read_all", "how", "connections"), [
    ("/echo", True, "release", 1),     # read to its end: the connection is reused
    ("/big", False, "release", 2),     # a body left unread cannot be reused
    ("/big", False, "close", 2),       # hung up
    ("/close", True, "release", 2),    # the vendor said Connection: close
])
async def test_a_connection_is_reused_only_after_a_whole_answer(vendor, client, path, read_all, how, connections):
    for _ in range(2):
        resp = await client.post(vendor.url + path, b"{}", {}, 5)
        if read_all:
            await resp.read()
        else:
            await resp.content.read(10)
        getattr(resp, how)()
        await asyncio.sleep(0.05)   # the vendor sees a hang-up before the next call
    assert len(vendor.connections) == connections


async def test_an_idle_connection_past_its_keepalive_is_not_reused(vendor):
    client = Upstream(keepalive_s=0.05)
    try:
        for _ in range(2):
            resp = await client.post(vendor.url + "/echo", b"{}", {}, 5)
            await resp.read()
            resp.release()
            await asyncio.sleep(0.1)
    finally:
        await client.close()
    assert len(vendor.connections) == 2


async def slow_call(client: Upstream, vendor: Vendor) -> bytes:
    resp = await client.post(vendor.url + "/slow", b"ok", {}, 5)
    try:
        return await resp.read()
    finally:
        resp.release()


async def test_calls_past_the_per_origin_limit_wait_for_a_connection(vendor, client):
    assert await asyncio.gather(*(slow_call(client, vendor) for _ in range(6))) == [b"ok"] * 6
    assert vendor.most_in_flight == 2 and len(vendor.connections) == 2


async def test_a_cancelled_wait_for_a_connection_leaves_the_limit_as_it_was(vendor, client):
    held = [await client.post(vendor.url + "/trickle", b"", {}, 5) for _ in range(2)]   # bodies never end
    waiting = asyncio.ensure_future(client.post(vendor.url + "/echo", b"", {}, 5))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    for resp in held:
        resp.close()
    resp = await asyncio.wait_for(client.post(vendor.url + "/echo", b"after", {}, 5), 2)
    assert await resp.read() == b"after"
    resp.release()


@pytest.mark.parametrize(("kw", "path"), [
    ({"total_s": 0.5}, "/trickle"),   # the whole call, body included
    ({"read_s": 0.1}, "/trickle"),    # each wait for the next bytes
])
async def test_a_timeout_fails_the_read_as_a_timeout_error(vendor, client, kw, path):
    resp = await client.post(vendor.url + path, b"", {}, 5, **kw)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(resp.read(), 5)
    resp.close()


async def test_nothing_listening_is_aiohttps_connector_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # bound, never listening: refused
        client = Upstream()
        try:
            with pytest.raises(aiohttp.ClientConnectorError):
                await client.post(f"http://127.0.0.1:{port}/v1/completions", b"{}", {}, 5)
        finally:
            await client.close()


async def test_a_newline_in_a_header_value_is_refused_before_anything_is_sent(vendor, client):
    with pytest.raises(ValueError, match="newline"):
        await client.post(vendor.url + "/echo", b"{}", {"Authorization": "Bearer k\r\nX-Evil: 1"}, 5)
    assert vendor.seen == []


async def test_closing_the_client_fails_a_read_still_waiting(vendor):
    client = Upstream()
    resp = await client.post(vendor.url + "/trickle", b"", {}, 5)
    read = asyncio.ensure_future(resp.read())
    await asyncio.sleep(0.05)
    await client.close()
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(read, 2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.post(vendor.url + "/echo", b"", {}, 5)


async def test_a_burst_on_an_empty_pool_opens_a_few_connections_at_a_time(vendor, monkeypatch):
    """Opening every connection of a burst at once overflows a vendor's accept queue."""
    loop = asyncio.get_running_loop()
    real, opening, most = loop.create_connection, 0, 0

    async def counting(*args, **kw):
        nonlocal opening, most
        opening += 1
        most = max(most, opening)
        try:
            await asyncio.sleep(0.02)   # a vendor slow to accept
            return await real(*args, **kw)
        finally:
            opening -= 1

    monkeypatch.setattr(loop, "create_connection", counting)
    client = Upstream(connecting=2)
    try:
        assert await asyncio.gather(*(slow_call(client, vendor) for _ in range(8))) == [b"ok"] * 8
    finally:
        await client.close()
    assert most == 2


async def test_the_proxys_upstream_client_takes_its_limit_from_the_settings(start_proxy, vendor):
    from router.handlers import PROXY
    from router.settings import ServeSettings

    proxy = await start_proxy({"providers": {"up": {"kind": "openai", "base_url": vendor.url + "/v1"}},
                               "models": {"m": {"targets": [{"provider": "up", "model": "m"}]}}},
                              settings=ServeSettings(upstream_connections=7))
    assert proxy.app[PROXY].upstream.limit_per_host == 7


@pytest.mark.parametrize("n, size, reader_pause_s", [
    (50, 100, 0.0),          # small events, read as they come
    (3000, 100, 0.05),       # a reader that falls behind: the buffer passes its high water mark
    (40, 20_000, 0.05),      # large chunks, reading paused and resumed
])
async def test_a_body_of_many_chunks_reads_whole_and_in_order_however_they_are_joined(vendor, client, n, size,
                                                                                      reader_pause_s):
    resp = await client.post(f"{vendor.url}/chunks?n={n}&size={size}", b"", {}, 10)
    got, reads = [], 0
    async for data in resp.content.iter_any():
        got.append(data)
        reads += 1
        if reads == 1:
            await asyncio.sleep(reader_pause_s)
    assert b"".join(got) == b"".join(bytes([65 + i % 26]) * size for i in range(n))
    if reader_pause_s:
        assert max(map(len, got)) > size   # chunks that waited were joined into one read
