"""Clients that leave, clients that stop reading: the upstream is closed, nothing is held
forever, nothing is buffered without bound, and what was used is still charged."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from providers.standins import Fault, Reply, StandinControl
from router.edge import METRICS
from router.handlers import PROXY, STATE
from tests.fixtures_proxy import providers_for
from tests.fixtures_vendors import counting_standin

PRICE = {"input": 1000.0, "output": 2000.0}   # USD per million tokens: any charge shows


def metric(proxy, name: str, **labels: str) -> float:
    """The sum of a metric's samples (those with `labels`) in the proxy's own /metrics text."""
    return sum(s.value for family in text_string_to_metric_families(proxy.app[METRICS].render().decode())
               for s in family.samples if s.name == name and labels.items() <= s.labels.items())


async def wait_for(check, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


@pytest.fixture
async def slow_vendor(start_proxy):
    """One openai-kind stand-in streaming 100 events slowly, and a priced proxy in front of it."""
    vendor, sent = await counting_standin("openai", StandinControl())
    proxy = await start_proxy({"providers": {"up": {"kind": "openai", "base_url": vendor.url}},
                               "models": {"slow": {"targets": [{"provider": "up", "model": "m", "price": PRICE}]}}})
    yield proxy, vendor, sent
    await vendor.close()


async def test_client_disconnect_mid_stream_closes_the_upstream_connection_and_its_tasks(slow_vendor):
    proxy, vendor, sent = slow_vendor
    vendor.control.push(Reply(text="x" * 400, chunks=100, chunk_delay=0.02))
    await asyncio.sleep(0.1)
    tasks_before = len(asyncio.all_tasks())
    upstream_before = len(vendor.runner.server.connections)
    async with aiohttp.ClientSession() as s:
        resp = await s.post(proxy.url + "/v1/completions", json={"model": "slow", "prompt": "x", "stream": True})
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")
        assert len(vendor.runner.server.connections) == upstream_before + 1
        resp.close()   # the client goes away after its first event
    assert await wait_for(lambda: len(vendor.runner.server.connections) == upstream_before), \
        "the upstream connection stayed open after the client left"
    seen = len(sent)
    assert seen < 50, f"upstream kept streaming after the client left ({seen} events)"
    assert await wait_for(lambda: len(asyncio.all_tasks()) <= tasks_before), "tasks left behind"
    assert not proxy.app[PROXY].upstream.closed
    await asyncio.sleep(0.3)
    assert len(sent) == seen, "upstream still streaming"


async def test_abandoned_stream_is_charged_its_prompt_and_the_tokens_relayed(slow_vendor):
    proxy, vendor, _ = slow_vendor
    vendor.control.push(Reply(text="word " * 80, chunks=40, chunk_delay=0.02))
    async with aiohttp.ClientSession() as s:
        resp = await s.post(proxy.url + "/v1/completions",
                            json={"model": "slow", "prompt": "p" * 400, "stream": True})
        for _ in range(5):
            await resp.content.readuntil(b"\n\n")
        resp.close()
    assert await wait_for(lambda: metric(proxy, "router_requests_total") >= 1)
    prompt = metric(proxy, "router_tokens_total", model="slow", kind="prompt")
    completion = metric(proxy, "router_tokens_total", model="slow", kind="completion")
    assert prompt >= 100, "the prompt estimate (400 characters) was not charged"
    assert completion >= 5, "the tokens already relayed were not charged"
    assert metric(proxy, "router_spend_usd_total") >= (prompt * PRICE["input"] + completion * PRICE["output"]) / 1e6 * 0.99


async def test_cancelled_attempt_records_no_health(slow_vendor):
    proxy, vendor, _ = slow_vendor
    for _ in range(3):
        vendor.control.push(Fault("stall", after=0, seconds=1.0))   # headers, then nothing yet
        async with aiohttp.ClientSession() as s:
            try:
                await s.post(proxy.url + "/v1/completions", json={"model": "slow", "prompt": "x", "stream": True},
                             timeout=aiohttp.ClientTimeout(total=0.2))
            except asyncio.TimeoutError:
                pass
    await asyncio.sleep(0.3)
    health = (await proxy.app[STATE].health(["up/m"]))["up/m"]
    assert health.ttft_ewma is None and health.latency_ewma is None, "time to hang up counted as latency"
    assert health.samples == 0 and health.consecutive_failures == 0


# --- a client that stops reading ---------------------------------------------------------------

EVENT = b"data: " + orjson.dumps({"id": "c", "object": "text_completion", "created": 1, "model": "m",
                                  "choices": [{"index": 0, "text": "y" * 32000, "finish_reason": None}]}) + b"\n\n"
BLOCK = EVENT * 32   # about 1 MiB


@pytest.fixture
async def firehose(start_proxy):
    """A raw upstream streaming ~1 MiB blocks as fast as it is read, counting what it sent."""
    state = {"sent": 0, "last_write": 0.0, "closed": asyncio.Event()}

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        try:
            while True:
                await resp.write(BLOCK)
                state["sent"] += len(BLOCK)
                state["last_write"] = time.monotonic()
        except (ConnectionError, asyncio.CancelledError):
            state["closed"].set()
            raise

    proxy, runner = await in_front_of(start_proxy, handler)
    yield proxy, state
    await runner.cleanup()


async def in_front_of(start_proxy, handler) -> tuple[Any, web.AppRunner]:
    """A proxy whose model `big` is served by `handler` (a raw upstream), with a 1.5 s idle limit."""
    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    proxy = await start_proxy({"providers": {"up": {"kind": "openai", "base_url": base}},
                               "models": {"big": {"targets": [{"provider": "up", "model": "m"}]}},
                               "settings": {"stream_idle_timeout_s": 1.5}})
    return proxy, runner


async def open_unread_stream(url: str) -> socket.socket:
    """A client that sends its request and then never reads (a 4 KiB receive buffer)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    body = orjson.dumps({"model": "big", "prompt": "x", "stream": True})
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    await asyncio.get_running_loop().sock_sendall(sock, request)
    return sock


async def test_client_that_stops_reading_does_not_make_the_proxy_buffer_without_bound(firehose):
    proxy, state = firehose
    sock = await open_unread_stream(proxy.url)
    try:
        # Back-pressure reaches the vendor: its writes stop completing long before the end.
        assert await wait_for(lambda: state["sent"] > 0 and time.monotonic() - state["last_write"] > 0.5, 10)
        # Kernel socket buffers on both hops, plus the proxy's own stated ~256 KiB per stream.
        assert state["sent"] < 24 * 2**20, f"the vendor could push {state['sent']} bytes through a client not reading"
    finally:
        sock.close()


async def test_client_that_stops_reading_ends_the_request_and_frees_the_upstream(firehose, caplog):
    proxy, state = firehose
    caplog.set_level(logging.INFO, logger="router.access")
    sock = await open_unread_stream(proxy.url)
    try:
        assert await wait_for(lambda: state["closed"].is_set(), 10), \
            "a client that stopped reading held the upstream connection"
        assert await wait_for(lambda: metric(proxy, "router_requests_in_flight") == 0, 5), "the request never ended"
        lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "router.access"]
        assert [(line["status"], line["error"]) for line in lines] == [(499, "client_stalled")]
    finally:
        sock.close()


async def test_client_that_never_reads_a_stream_s_last_write_is_let_go(start_proxy, caplog):
    """A stream's last events go out with [DONE] in one write at its end; one too large for
    the socket's buffer, left unread, ends the request after the idle limit like any other."""
    huge = b"data: " + orjson.dumps({"id": "c", "object": "text_completion", "created": 1, "model": "m",
                                     "choices": [{"index": 0, "text": "y" * 6_000_000, "finish_reason": "stop"}]})

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(huge + b"\n\ndata: [DONE]\n\n")   # one event and [DONE]: one batch
        await resp.write_eof()
        return resp

    proxy, runner = await in_front_of(start_proxy, handler)
    caplog.set_level(logging.INFO, logger="router.access")
    sock = await open_unread_stream(proxy.url)
    try:
        def ended() -> list[tuple[int, str]]:
            return [(line["status"], line["error"]) for line in
                    (orjson.loads(r.getMessage()) for r in caplog.records if r.name == "router.access")]
        assert await wait_for(ended, 10), "the last write held the request"
        assert ended() == [(499, "client_stalled")]
        assert metric(proxy, "router_requests_in_flight") == 0
    finally:
        sock.close()
        await runner.cleanup()


async def test_abandoned_answer_the_vendor_had_begun_keeps_its_tpm_reservation(vendors, start_proxy, monkeypatch):
    monkeypatch.setenv("ROUTER_TEST_KEY_T", "sk-t")
    proxy = await start_proxy({"providers": providers_for([vendors.openai]),
                               "models": {"m": {"targets": [{"provider": "openai", "model": "m-1"}]}},
                               "keys": {"t": {"key_env": "ROUTER_TEST_KEY_T", "limits": {"tpm": 300}}}},
                              vendors=vendors)
    body = {"model": "m", "prompt": "hi", "max_tokens": 200}
    auth = {"Authorization": "Bearer sk-t"}
    vendors.openai.control.push(Fault("stall", after=0, seconds=3))   # headers and half the body, then a wait
    async with aiohttp.ClientSession() as s:
        with pytest.raises(asyncio.TimeoutError):
            await s.post(proxy.url + "/v1/completions", json=body, headers=auth,
                         timeout=aiohttp.ClientTimeout(total=0.5))
        assert await wait_for(lambda: metric(proxy, "router_requests_in_flight") == 0)
        async with s.post(proxy.url + "/v1/completions", json=body, headers=auth) as r:
            assert r.status == 429, "the abandoned answer's tokens were handed back although the vendor bills them"
    vendors.openai.control.clear()
