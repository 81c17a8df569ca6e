"""Upstreams that break the rules: the client still gets an honest answer, never a 500 or a hang.

These upstreams are deliberately outside every vendor's contract (a cut-off error body, an
over-long SSE line, nonsense usage), so they are small raw aiohttp apps, not the stand-ins.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from aiohttp import web

from router.handlers import STATE

CHUNK = {"id": "c", "object": "text_completion", "created": 1, "model": "m",
         "choices": [{"index": 0, "text": "hi", "finish_reason": None}]}
ANSWER = {"id": "c", "object": "text_completion", "created": 1, "model": "m",
          "choices": [{"index": 0, "text": "fine", "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def event(obj) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def sse(request, *parts: bytes, cut: bool = False):
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for p in parts:
        await resp.write(p)
    if cut:
        request.transport.close()
        return resp
    await resp.write_eof()
    return resp


async def truncated_503(request):
    resp = web.StreamResponse(status=503, headers={"Content-Type": "application/json", "Content-Length": "1000"})
    await resp.prepare(request)
    await resp.write(b'{"error": {"mess')
    request.transport.close()
    return resp


BEHAVIOURS = {
    "huge-line": lambda r: sse(r, event(CHUNK), b"data: " + b"x" * (4 << 20) + b"\n\n", event(CHUNK), b"data: [DONE]\n\n"),
    "bad-usage-stream": lambda r: sse(r, event(CHUNK), event({**CHUNK, "choices": [], "usage": {
        "prompt_tokens": "many", "completion_tokens": 1e300}}), b"data: [DONE]\n\n"),
    "bad-usage": lambda r: asyncio.sleep(0, web.json_response({**ANSWER, "usage": {"prompt_tokens": "many"}})),
    "detail-first": lambda r: sse(r, event({"detail": "overloaded"}), b"data: [DONE]\n\n"),
    "cut-after-one": lambda r: sse(r, event(CHUNK), cut=True),
    "truncated-503": truncated_503,
}


async def upstream(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    behaviour = BEHAVIOURS.get(body["model"])
    if behaviour is None:  # the healthy fallback target
        if body.get("stream"):
            return await sse(request, event(CHUNK), b"data: [DONE]\n\n")
        return web.json_response(ANSWER)
    return await behaviour(request)


@pytest.fixture
async def proxy(start_proxy):
    app = web.Application()
    app.router.add_post("/v1/completions", upstream)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    models = {name: {"targets": [{"provider": "bad", "model": name}, {"provider": "good", "model": "ok"}]}
              for name in BEHAVIOURS}
    doc = {"providers": {"bad": {"kind": "openai", "base_url": base}, "good": {"kind": "openai", "base_url": base}},
           "models": models}
    yield await start_proxy(doc)
    await runner.cleanup()


async def call(proxy, model: str, stream: bool) -> tuple[int, dict, bytes]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        async with s.post(proxy.url + "/v1/completions", json={"model": model, "prompt": "x", "stream": stream}) as r:
            return r.status, dict(r.headers), await r.read()


@pytest.mark.parametrize(("model", "stream", "served_by", "attempts"), [
    ("truncated-503", False, "good", "3"),   # a 503 is retried once, then the next target serves
    ("truncated-503", True, "good", "3"),
    ("detail-first", True, "good", "2"),
    ("bad-usage", False, "bad", "1"),
])
async def test_broken_upstream_falls_over_or_answers_cleanly(proxy, model, stream, served_by, attempts):
    status, headers, _ = await call(proxy, model, stream)
    assert status == 200
    assert (headers["x-router-provider"], headers["x-router-attempts"]) == (served_by, attempts)


@pytest.mark.parametrize("model", ["huge-line", "cut-after-one"])
async def test_stream_broken_after_commit_ends_with_error_event_and_done(proxy, model):
    status, _, body = await call(proxy, model, True)
    assert status == 200
    events = [e for e in body.split(b"\n\n") if e]
    assert events[0].startswith(b"data: {") and b'"text":"hi"' in events[0]
    error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert error["code"] in {"upstream_bad_response", "upstream_stream_interrupted"}
    assert events[-1] == b"data: [DONE]"


async def test_nonsense_usage_in_a_stream_is_counted_as_zero_not_a_crash(proxy):
    status, _, body = await call(proxy, "bad-usage-stream", True)
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    assert b'"error"' not in body


async def test_stream_broken_after_commit_counts_against_the_targets_health(proxy):
    await call(proxy, "cut-after-one", True)
    await asyncio.sleep(0.05)
    health = await proxy.app[STATE].health(["bad/cut-after-one"])
    assert health["bad/cut-after-one"].consecutive_failures == 1
