"""LangChain's `ChatOpenAI` and `OpenAI` pointed at the proxy, as a LangChain user would.

Each call crosses a real socket to the proxy, which serves the demo's routes in front of the
contract-checked stand-ins. Sync calls run in a thread: the proxy is served by this loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAI
from pydantic import BaseModel

from tests.fixtures_proxy import RunningProxy



def chat(proxy: RunningProxy, model: str = "kimi", **kw: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=proxy.url + "/v1", api_key="unused", model=model, max_retries=0, **kw)


def llm(proxy: RunningProxy, model: str, **kw: Any) -> OpenAI:
    return OpenAI(base_url=proxy.url + "/v1", api_key="unused", model=model, max_retries=0, **kw)


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


class Person(BaseModel):
    name: str
    age: int


async def test_langchain_chat_invoke(vendors, demo_proxy) -> None:
    message = await asyncio.to_thread(chat(demo_proxy).invoke, "Hello")
    assert message.content == "Hello from the stand-in."
    assert message.response_metadata["model_name"] == "kimi"
    assert message.usage_metadata["total_tokens"] == 12
    assert vendors.cogito.control.requests[-1].body["messages"] == [{"role": "user", "content": "Hello"}]


# Every demo model: Cogito, Poolside, Nebius, and a fallback from Cogito to Interactive.
SERVED_BY = {"kimi": "cogito", "malibu": "poolside", "llama": "nebius", "fallback-demo": "interactive"}


@pytest.mark.parametrize("model", list(SERVED_BY))
async def test_langchain_chat_ainvoke_on_every_vendor(vendors, demo_proxy, model) -> None:
    message = await chat(demo_proxy, model).ainvoke("Hello")
    assert message.content == "Hello from the stand-in."
    assert message.response_metadata["model_name"] == model
    assert len(vendors[SERVED_BY[model]].control.requests) == 1


@pytest.mark.parametrize("model", list(SERVED_BY))
async def test_langchain_chat_stream_arrives_in_pieces(vendors, demo_proxy, model) -> None:
    chunks = [c async for c in chat(demo_proxy, model).astream("Hello")]
    assert len([c for c in chunks if c.content]) == 3  # the stand-in's three pieces
    assert "".join(str(c.content) for c in chunks) == "Hello from the stand-in."
    assert vendors[SERVED_BY[model]].control.requests[-1].body["stream"] is True


async def test_langchain_max_tokens_reaches_the_vendor(vendors, demo_proxy) -> None:
    """ChatOpenAI(max_tokens=N) sends `max_completion_tokens`; the vendor gets a limit of N."""
    message = await chat(demo_proxy, "llama", max_tokens=7).ainvoke("Hello")
    assert message.content == "Hello from the stand-in."
    sent = vendors.nebius.control.requests[-1].body
    assert 7 in (sent.get("max_tokens"), sent.get("max_completion_tokens"))


async def test_langchain_max_tokens_is_served_by_a_cogito_first_model(vendors, demo_proxy) -> None:
    await chat(demo_proxy, "kimi", max_tokens=7).ainvoke("Hello")
    assert [r.body.get("max_tokens") for r in vendors.cogito.control.requests] == [7]
    assert vendors.nebius.control.requests == []


async def test_langchain_bind_tools_calls_the_tool_and_takes_its_result_back(vendors, demo_proxy) -> None:
    model = chat(demo_proxy).bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    asked = await model.ainvoke([question])
    (call,) = asked.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "What is the weather in Paris?"}
    result = await get_weather.ainvoke(call["args"])
    answer = await model.ainvoke([question, asked, ToolMessage(result, tool_call_id=call["id"])])
    assert answer.content == "Hello from the stand-in." and answer.tool_calls == []
    sent = vendors.cogito.control.requests[-1].body["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": call["id"], "content": "sunny in What is the weather in Paris?"}
    assert sent[-2]["tool_calls"][0]["id"] == call["id"]


async def test_langchain_streams_a_tool_call_in_pieces(vendors, demo_proxy) -> None:
    model = chat(demo_proxy).bind_tools([get_weather], tool_choice="get_weather")
    chunks = [c async for c in model.astream("Weather in Oslo?")]
    assert sum(1 for c in chunks if c.tool_call_chunks) > 2  # the head, then argument fragments
    whole: Any = AIMessageChunk(content="")
    for c in chunks:
        whole = whole + c
    assert [(t["name"], t["args"]) for t in whole.tool_calls] == [("get_weather", {"city": "Weather in Oslo?"})]


@pytest.mark.parametrize(("method", "sent"), [("json_schema", "response_format"), ("function_calling", "tools")])
async def test_langchain_with_structured_output(vendors, demo_proxy, method, sent) -> None:
    person = await chat(demo_proxy).with_structured_output(Person, method=method).ainvoke("Who is Ada?")
    assert person == Person(name="Who is Ada?", age=1)
    assert sent in vendors.cogito.control.requests[-1].body


async def test_langchain_llm_batch_of_prompts(vendors, demo_proxy) -> None:
    """`OpenAI.batch` sends its prompts as one list; Nebius takes a list."""
    answers = await llm(demo_proxy, "llama").abatch(["Say a", "Say b"])
    assert answers == ["Hello from the stand-in."] * 2
    assert vendors.nebius.control.requests[-1].body["prompt"] == ["Say a", "Say b"]


async def test_langchain_llm_invoke_on_a_poolside_model(vendors, demo_proxy) -> None:
    assert await asyncio.to_thread(llm(demo_proxy, "malibu").invoke, "Say hi") == "Hello from the stand-in."
    assert vendors.poolside.control.requests[-1].body["prompt"] == "Say hi"


async def test_langchain_llm_batch_on_a_poolside_model(vendors, demo_proxy) -> None:
    answers = await llm(demo_proxy, "malibu").abatch(["Say a", "Say b"])
    assert answers == ["Hello from the stand-in."] * 2
    assert sorted(r.body["prompt"] for r in vendors.poolside.control.requests) == ["Say a", "Say b"]
