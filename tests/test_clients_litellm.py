"""LiteLLM used as a client: the proxy as an OpenAI-compatible base, as a LiteLLM user points it.

`openai/<model>` sends chat to /v1/chat/completions; `text-completion-openai/<model>` sends
`text_completion` to /v1/completions. Sync calls run in a thread: the proxy is served by
this loop. LiteLLM reads its cost map from its own package, not the network.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
import pytest  # noqa: E402

from tests.fixtures_proxy import RunningProxy  # noqa: E402

litellm.telemetry = False
litellm.suppress_debug_info = True
# LiteLLM's own pydantic models warn about their TypedDicts as they are first built.
pytestmark = pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(autouse=True)
async def fresh_litellm_clients() -> AsyncIterator[None]:
    """LiteLLM caches its HTTP clients across calls; each test has its own loop and proxy, so
    close them with it rather than leave sockets for the garbage collector to complain of."""
    yield
    cache = litellm.in_memory_llm_clients_cache
    for client in list(cache.cache_dict.values()):
        close = getattr(client, "close", None)
        closing = close() if callable(close) else None
        if inspect.isawaitable(closing):
            await closing
    cache.flush_cache()


def via(proxy: RunningProxy) -> dict[str, Any]:
    return {"api_base": proxy.url + "/v1", "api_key": "unused", "num_retries": 0}


async def test_litellm_completion(vendors, demo_proxy) -> None:
    r = await asyncio.to_thread(litellm.completion, model="openai/kimi", messages=HELLO, **via(demo_proxy))
    assert r.choices[0].message.content == "Hello from the stand-in."
    assert r.usage.total_tokens == 12
    assert vendors.cogito.control.requests[-1].path == "/v1/chat/completions"


async def test_litellm_completion_stream(vendors, demo_proxy) -> None:
    def run() -> list[Any]:
        return list(litellm.completion(model="openai/kimi", messages=HELLO, stream=True, **via(demo_proxy)))
    chunks = await asyncio.to_thread(run)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the stand-in."
    assert vendors.cogito.control.requests[-1].body["stream"] is True


# Every demo model: Cogito, Poolside, Nebius, and a fallback from Cogito to Interactive.
SERVED_BY = {"kimi": "cogito", "malibu": "poolside", "llama": "nebius", "fallback-demo": "interactive"}


@pytest.mark.parametrize("model", list(SERVED_BY))
async def test_litellm_acompletion_on_every_vendor(vendors, demo_proxy, model) -> None:
    r = await litellm.acompletion(model=f"openai/{model}", messages=HELLO, **via(demo_proxy))
    assert r.choices[0].message.content == "Hello from the stand-in."
    assert vendors[SERVED_BY[model]].control.requests[-1].path.endswith("/chat/completions")


async def test_litellm_acompletion_stream(vendors, demo_proxy) -> None:
    stream = await litellm.acompletion(model="openai/llama", messages=HELLO, stream=True, **via(demo_proxy))
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == "Hello from the stand-in."


async def test_litellm_tool_call(vendors, demo_proxy) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    r = await litellm.acompletion(model="openai/kimi", messages=HELLO, tools=tools, **via(demo_proxy))
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"Hello"}'
    assert r.choices[0].finish_reason == "tool_calls"


async def test_litellm_text_completion(vendors, demo_proxy) -> None:
    r = await asyncio.to_thread(litellm.text_completion, model="text-completion-openai/llama", prompt="Say hi",
                                **via(demo_proxy))
    assert r.choices[0].text == "Hello from the stand-in."
    assert vendors.nebius.control.requests[-1].path == "/v1/completions"


async def test_litellm_text_completion_stream(vendors, demo_proxy) -> None:
    def run() -> list[Any]:
        return list(litellm.text_completion(model="text-completion-openai/llama", prompt="Say hi", stream=True,
                                            **via(demo_proxy)))
    chunks = await asyncio.to_thread(run)
    assert "".join(c.choices[0].text or "" for c in chunks if c.choices) == "Hello from the stand-in."
    sent = vendors.nebius.control.requests[-1]
    assert sent.path == "/v1/completions" and sent.body["stream"] is True


@pytest.mark.parametrize("model", list(SERVED_BY))
async def test_litellm_atext_completion_on_every_vendor(vendors, demo_proxy, model) -> None:
    r = await litellm.atext_completion(model=f"text-completion-openai/{model}", prompt="Say hi", **via(demo_proxy))
    assert r.choices[0].text == "Hello from the stand-in."
    sent = vendors[SERVED_BY[model]].control.requests[-1]
    assert sent.path.endswith("/completions") and not sent.path.endswith("/chat/completions")
    assert sent.body["prompt"] == "Say hi"
