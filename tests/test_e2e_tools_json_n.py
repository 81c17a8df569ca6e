"""Tool calls, structured output and `n` end to end: the official Python SDK, the proxy, and each
vendor whose contract takes them (whole answers and streams)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.fixtures_proxy import providers_for, single_target_models

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
async def proxy(vendors, start_proxy):
    doc = {"providers": providers_for(vendors), "models": single_target_models(vendors)}
    return await start_proxy(doc, vendors=vendors)


@pytest.mark.parametrize("kind", ["cogito", "openai"])
async def test_tool_call_through_the_proxy(kind, vendors, proxy):
    c = await proxy.client().chat.completions.create(model=f"via-{kind}", messages=HELLO, tools=[WEATHER])
    choice = c.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Hello"}
    assert vendors[kind].control.requests[-1].body["tools"] == [WEATHER]


@pytest.mark.parametrize("kind", ["cogito", "openai"])
async def test_streamed_tool_call_through_the_proxy(kind, vendors, proxy):
    stream = await proxy.client().chat.completions.create(model=f"via-{kind}", messages=HELLO, tools=[WEATHER],
                                                          stream=True)
    chunks = [c async for c in stream]
    calls = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id and calls[0].function.name == "get_weather" and calls[0].function.arguments == ""
    assert all(t.id is None and t.function.name is None for t in calls[1:])
    assert json.loads("".join(t.function.arguments for t in calls)) == {"city": "Hello"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(("kind", "endpoint"), [("cogito", "chat"), ("openai", "chat"), ("interactive", "chat"),
                                                ("interactive", "completions")])
async def test_json_schema_answer_through_the_proxy(kind, endpoint, vendors, proxy):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    client = proxy.client()
    if endpoint == "chat":
        c = await client.chat.completions.create(model=f"via-{kind}", messages=HELLO, response_format=fmt)
        text = c.choices[0].message.content
    else:
        c = await client.completions.create(model=f"via-{kind}", prompt="Hello", extra_body={"response_format": fmt})
        text = c.choices[0].text
    value = json.loads(text)
    jsonschema.validate(value, PERSON)
    assert value == {"name": "Hello", "age": 1}


@pytest.mark.parametrize("kind", ["nebius", "interactive", "openai"])
@pytest.mark.parametrize("stream", [False, True])
async def test_n_choices_through_the_proxy(kind, stream, vendors, proxy):
    client = proxy.client()
    c = await client.chat.completions.create(model=f"via-{kind}", messages=HELLO, n=2, stream=stream)
    if stream:
        chunks = [x async for x in c]
        finished = sorted(ch.index for x in chunks for ch in x.choices if ch.finish_reason == "stop")
        assert finished == [0, 1]
    else:
        assert [ch.index for ch in c.choices] == [0, 1]
        assert all(ch.message.content == "Hello from the stand-in." for ch in c.choices)
