"""Streams fall over only before the first byte went out; after that a failure ends the stream
with an OpenAI-shaped error event and `data: [DONE]`."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from providers.standins import BreakStream, Fail, Reply
from tests.fixtures_proxy import providers_for

FIRST, SECOND = "cogito", "nebius"


@pytest.fixture
async def proxy(vendors, start_proxy):
    doc = {
        "providers": providers_for([vendors[FIRST], vendors[SECOND]]),
        "models": {"g": {"targets": [{"provider": FIRST, "model": "m-1"}, {"provider": SECOND, "model": "m-1"}]}},
        # One try per target, so a failed first target shows as a fallover, not a retry.
        "settings": {"retry": {"attempts": 1}},
    }
    return await start_proxy(doc, vendors=vendors)


def body(endpoint: str) -> tuple[str, dict[str, Any]]:
    if endpoint == "chat":
        return "/v1/chat/completions", {"model": "g", "stream": True,
                                        "messages": [{"role": "user", "content": "hi"}]}
    return "/v1/completions", {"model": "g", "stream": True, "prompt": "hi"}


async def stream(proxy, endpoint: str) -> tuple[int, dict[str, str], list[Any]]:
    """The raw SSE the client receives: each event's parsed JSON, or the string "[DONE]"."""
    path, payload = body(endpoint)
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + path, json=payload) as r:
            raw = (await r.read()).decode()
            status, headers = r.status, dict(r.headers)
    events: list[Any] = []
    for block in raw.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            events.append("[DONE]" if data == "[DONE]" else orjson.loads(data))
    return status, headers, events


def text_of(events: list[Any]) -> str:
    out = ""
    for e in events:
        for c in e.get("choices", []) if isinstance(e, dict) else []:
            out += c.get("text") or (c.get("delta") or {}).get("content") or ""
    return out


ENDPOINTS = ["completions", "chat"]
EARLY = [BreakStream(after=0), Fail("server_error"), Fail("rate_limit"), Fail("plain_502")]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("early", EARLY, ids=lambda s: f"{type(s).__name__}-{getattr(s, 'error', '')}")
async def test_failure_before_the_first_event_falls_over_to_the_next_target(proxy, vendors, endpoint, early):
    vendors[FIRST].control.push(early)
    vendors[SECOND].control.push(Reply(text="clean answer", chunks=4))
    status, headers, events = await stream(proxy, endpoint)
    assert status == 200
    assert headers["x-router-provider"] == SECOND and headers["x-router-attempts"] == "2"
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert not any("error" in e for e in events[:-1]), "a clean stream: no trace of the first target"
    assert text_of(events[:-1]) == "clean answer"
    assert all(e["provider"] == SECOND and e["model"] == "g" for e in events[:-1])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_failure_after_the_third_event_ends_the_stream_with_an_error_event(proxy, vendors, endpoint):
    vendors[FIRST].control.push(BreakStream(after=3))
    status, headers, events = await stream(proxy, endpoint)
    assert status == 200 and headers["x-router-provider"] == FIRST
    content, error, done = events[:3], events[3], events[4:]
    assert all("choices" in e and e["provider"] == FIRST for e in content)
    assert set(error) == {"error"}
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert (error["error"]["type"], error["error"]["code"]) == ("upstream_error", "upstream_stream_interrupted")
    assert done == ["[DONE]"]
    assert not vendors[SECOND].control.requests, "once bytes went out there is no fallover"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_unbroken_stream_ends_with_done_and_no_error(proxy, vendors, endpoint):
    vendors[FIRST].control.push(Reply(text="all of it", chunks=3))
    status, _, events = await stream(proxy, endpoint)
    assert status == 200 and events[-1] == "[DONE]"
    assert not any("error" in e for e in events[:-1])
    assert text_of(events[:-1]) == "all of it"


async def test_every_target_failing_before_the_first_event_is_a_plain_error_response(proxy, vendors):
    vendors[FIRST].control.push(BreakStream(after=0))
    vendors[SECOND].control.push(Fail("server_error"))
    path, payload = body("completions")
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + path, json=payload) as r:
            assert r.status == 502 and r.content_type == "application/json"
            assert (await r.json())["error"]["type"] == "upstream_error"
