"""Time limits that hold whatever the upstream sends: a first-event limit that keep-alive
comments do not extend, an idle limit between events (settings or per provider), and a
deadline that, once passed, sends nothing more."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from providers.standins import Fault, Reply
from router.handlers import STATE
from tests.fixtures_proxy import providers_for

FIRST, SECOND = "cogito", "nebius"


def two_targets(vendors, **group: Any) -> dict[str, Any]:
    return {"providers": providers_for([vendors[FIRST], vendors[SECOND]]),
            "models": {"g": {"targets": [{"provider": FIRST, "model": "m-1"}, {"provider": SECOND, "model": "m-1"}],
                             **group}}}


async def send(proxy, stream: bool = True, timeout: float = 15) -> tuple[int, dict[str, str], bytes, float]:
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        async with s.post(proxy.url + "/v1/completions", json={"model": "g", "prompt": "hi", "stream": stream}) as r:
            return r.status, dict(r.headers), await r.read(), time.monotonic() - started


async def test_keep_alive_comments_do_not_extend_the_first_event_limit(vendors, start_proxy):
    doc = two_targets(vendors, deadline_s=2)
    doc["providers"][FIRST]["timeout_s"] = 1
    proxy = await start_proxy(doc, vendors=vendors)
    vendors[FIRST].control.push(Fault("ping", seconds=30))   # `: ping` every 50 ms, never an event
    vendors[SECOND].control.push(Reply(text="from the second"))
    status, headers, raw, _ = await send(proxy)
    assert status == 200 and headers["x-router-provider"] == SECOND, raw[:300]
    assert headers["x-router-attempts"] == "2", "the stuck target is left at once, not retried"
    assert raw.endswith(b"data: [DONE]\n\n") and b'"error"' not in raw


@pytest.mark.parametrize("where", ["settings", "provider"])
async def test_stream_silent_between_events_ends_with_error_event_and_done(vendors, start_proxy, where):
    doc = two_targets(vendors)
    if where == "settings":
        doc["settings"] = {"stream_idle_timeout_s": 1}
    else:
        doc["settings"] = {"stream_idle_timeout_s": 300}
        doc["providers"][FIRST]["stream_idle_timeout_s"] = 1
    proxy = await start_proxy(doc, vendors=vendors)
    vendors[FIRST].control.push(Fault("stall", after=2, seconds=30))
    status, headers, raw, took = await send(proxy)
    assert status == 200 and headers["x-router-provider"] == FIRST
    events = [b for b in raw.split(b"\n\n") if b]
    assert len(events) == 4 and events[-1] == b"data: [DONE]", events
    error = orjson.loads(events[2].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_stream_interrupted" and "1s" in error["message"]
    assert took < 10
    assert not vendors[SECOND].control.requests, "a begun stream never falls over"


async def test_request_whose_deadline_passed_is_answered_at_once_and_never_sent(vendors, start_proxy, monkeypatch):
    doc = two_targets(vendors, deadline_s=0.3)
    doc["models"]["g"]["targets"][0]["limits"] = {"rpm": 1000}   # so the target is reserved first
    proxy = await start_proxy(doc, vendors=vendors)
    state = proxy.app[STATE]
    reserve = state.reserve_target

    async def slow_reserve(*args: Any, **kw: Any) -> Any:
        await asyncio.sleep(0.5)   # a slow shared-state call: the deadline passes meanwhile
        return await reserve(*args, **kw)

    monkeypatch.setattr(state, "reserve_target", slow_reserve)
    vendors[FIRST].control.push(Fault("stall", after=0, seconds=5))
    status, headers, raw, took = await send(proxy, stream=False)
    assert status == 504 and orjson.loads(raw)["error"]["code"] == "deadline_exceeded"
    assert headers["x-router-attempts"] == "0"
    assert not vendors[FIRST].control.requests and not vendors[SECOND].control.requests
    assert took < 3
    vendors[FIRST].control.clear()
