"""The stand-ins honour `tools`, `response_format` and `n` where each vendor's contract takes them.

Straight to the stand-ins over real sockets; the `vendors` fixture holds every request and
every answer (whole, and each stream chunk) to the vendor's published schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest

from providers.standins import DIALECTS
from providers.standins.answers import sample
from tests.fixtures_vendors import Vendor, Vendors

MODELS = {"cogito": "gpt-oss-120b", "poolside": "malibu", "nebius": "meta-llama/Llama-3.3-70B-Instruct",
          "interactive": "openai/gpt-4o-mini", "openai": "gpt-4o-mini"}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                                           "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["name", "age", "tags"], "additionalProperties": False}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}

TOOL_KINDS = ["cogito", "openai"]                           # chat takes tools per their contracts
JSON_KINDS = [("cogito", "chat"), ("openai", "chat"), ("interactive", "chat"), ("interactive", "completions")]
N_KINDS = [("nebius", "chat"), ("nebius", "completions"), ("interactive", "chat"),
           ("interactive", "completions"), ("openai", "chat"), ("openai", "completions")]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def body_for(kind: str, op: str, **extra: Any) -> dict[str, Any]:
    if op == "chat":
        body: dict[str, Any] = {"model": MODELS[kind], "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    else:
        body = {"model": MODELS[kind], "prompt": "Weather in Paris?"}
    return {**body, **extra}


async def post(session: aiohttp.ClientSession, vendor: Vendor, op: str, body: dict[str, Any]) -> Any:
    url = vendor.root + DIALECTS[vendor.kind]().paths()[op]
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {vendor.api_key}"}) as resp:
        assert resp.status == 200, await resp.text()
        if not body.get("stream"):
            return await resp.json()
        events = []
        async for line in resp.content:
            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                events.append(orjson.loads(line[6:]))
        return events


@pytest.mark.parametrize("kind", TOOL_KINDS)
async def test_tools_answer_with_a_tool_call(vendors: Vendors, session: aiohttp.ClientSession, kind: str) -> None:
    answer = await post(session, vendors[kind], "chat", body_for(kind, "chat", tools=[WEATHER]))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    args = orjson.loads(call["function"]["arguments"])
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    assert args == {"city": "Weather in Paris?", "unit": "celsius"}


@pytest.mark.parametrize("kind", TOOL_KINDS)
async def test_tool_call_streams_as_openai_does(vendors: Vendors, session: aiohttp.ClientSession, kind: str) -> None:
    events = await post(session, vendors[kind], "chat", body_for(kind, "chat", tools=[WEATHER], stream=True))
    deltas = [e["choices"][0]["delta"] for e in events]
    head = deltas[0]["tool_calls"][0]
    assert deltas[0]["role"] == "assistant"
    assert head["index"] == 0 and head["id"].startswith("call_") and head["type"] == "function"
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    fragments = [d["tool_calls"][0] for d in deltas[1:-1]]
    assert len(fragments) > 1 and all(set(f) == {"index", "function"} and set(f["function"]) == {"arguments"}
                                      for f in fragments)
    whole = "".join(f["function"]["arguments"] for f in fragments)
    assert orjson.loads(whole)["city"] == "Weather in Paris?"
    assert deltas[-1] == {} and events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])


TOOL_CHOICES = [
    # (tool_choice, conversation ends in a tool result, function called or None for text)
    ("auto", False, "get_weather"),
    (None, False, "get_weather"),
    ("none", False, None),
    ("auto", True, None),
    ({"type": "function", "function": {"name": "get_time"}}, False, "get_time"),
    ({"type": "function", "function": {"name": "get_time"}}, True, "get_time"),
]


@pytest.mark.parametrize(("tool_choice", "after_tool", "called"), TOOL_CHOICES)
async def test_tool_choice_decides_between_a_call_and_text(vendors: Vendors, session: aiohttp.ClientSession,
                                                           tool_choice: Any, after_tool: bool, called: str | None) -> None:
    body = body_for("cogito", "chat", tools=[WEATHER, TIME])
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if after_tool:
        body["messages"] += [
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                                                                 "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        ]
    message = (await post(session, vendors.cogito, "chat", body))["choices"][0]["message"]
    if called is None:
        assert message["content"] == "Hello from the stand-in." and "tool_calls" not in message
    else:
        assert [c["function"]["name"] for c in message["tool_calls"]] == [called]
        assert message["content"] == ""  # Cogito's message content is a string: no null


@pytest.mark.parametrize(("kind", "op"), JSON_KINDS)
@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_answer_satisfies_the_schema(vendors: Vendors, session: aiohttp.ClientSession,
                                                       kind: str, op: str, stream: bool) -> None:
    answer = await post(session, vendors[kind], op, body_for(kind, op, response_format=JSON_SCHEMA, stream=stream))
    text = _text(answer, op, stream)
    value = orjson.loads(text)
    jsonschema.validate(value, PERSON)
    assert value["name"] == "Weather in Paris?"


@pytest.mark.parametrize(("kind", "op"), JSON_KINDS)
async def test_json_object_answer_is_a_json_object(vendors: Vendors, session: aiohttp.ClientSession,
                                                   kind: str, op: str) -> None:
    answer = await post(session, vendors[kind], op, body_for(kind, op, response_format={"type": "json_object"}))
    assert orjson.loads(_text(answer, op, False)) == {"answer": "Hello from the stand-in."}


@pytest.mark.parametrize(("kind", "op"), N_KINDS)
@pytest.mark.parametrize("stream", [False, True])
async def test_n_answers_with_n_choices(vendors: Vendors, session: aiohttp.ClientSession,
                                        kind: str, op: str, stream: bool) -> None:
    answer = await post(session, vendors[kind], op, body_for(kind, op, n=3, stream=stream))
    if stream:
        indexes = sorted({int(e["choices"][0]["index"]) for e in answer if e["choices"]})
        finished = [e for e in answer if e["choices"] and e["choices"][0]["finish_reason"] == "stop"]
        assert indexes == [0, 1, 2] and len(finished) == 3
    else:
        assert [int(c["index"]) for c in answer["choices"]] == [0, 1, 2]


async def test_n_multiplies_each_prompt_of_a_batch_in_prompt_order(vendors: Vendors,
                                                                   session: aiohttp.ClientSession) -> None:
    vendors.nebius.control.demo = True  # replies echo the prompt, so each choice shows its prompt
    answer = await post(session, vendors.nebius, "completions", body_for("nebius", "completions", prompt=["a", "b"], n=2))
    said = [c["text"].rsplit(" ", 1)[-1] for c in answer["choices"]]
    assert said == ["'a'", "'a'", "'b'", "'b'"]


IGNORED = [
    # Fields a vendor's contract does not take are ignored, as an open schema would.
    ("poolside", "completions", {"n": 2}),
    ("poolside", "chat", {"tools": [WEATHER], "response_format": JSON_SCHEMA}),
    ("nebius", "chat", {"tools": [WEATHER], "response_format": {"type": "json_object"}}),
    ("cogito", "completions", {"n": 2}),
]


@pytest.mark.parametrize(("kind", "op", "extra"), IGNORED)
async def test_fields_outside_a_vendors_contract_are_ignored(vendors: Vendors, session: aiohttp.ClientSession,
                                                             kind: str, op: str, extra: dict[str, Any]) -> None:
    answer = await post(session, vendors[kind], op, body_for(kind, op, **extra))
    assert len(answer["choices"]) == 1
    assert _text(answer, op, False) == "Hello from the stand-in."


SAMPLES = [
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "$defs": {"A": {"type": "integer", "minimum": 5}}},
     {"a": 5}),
    ({"type": "object", "properties": {"x": {"anyOf": [{"type": "null"}, {"type": "number"}]}}}, {"x": 1.0}),
    ({"type": "object", "properties": {"k": {"const": "v"}, "b": {"type": "boolean"}}}, {"k": "v", "b": True}),
    ({"type": "array", "items": {"type": "string", "maxLength": 2}, "minItems": 2}, ["hi", "hi"]),
    ({"type": "object", "required": ["undeclared"]}, {"undeclared": "hint"}),
]


@pytest.mark.parametrize(("schema", "value"), SAMPLES)
def test_sample_builds_a_value_of_the_schema(schema: dict[str, Any], value: Any) -> None:
    got = sample(schema, "hint")
    jsonschema.validate(got, schema)
    assert got == value


def test_sample_stops_following_a_recursive_schema() -> None:
    got = sample({"type": "object", "properties": {"next": {"$ref": "#"}}}, "hint")
    depth = 0
    while isinstance(got, dict):
        got, depth = got["next"], depth + 1
    assert got is None and 3 < depth < 10


def _text(answer: Any, op: str, stream: bool) -> str:
    if stream:
        return "".join((e["choices"][0]["delta"].get("content") or "") if op == "chat" else e["choices"][0]["text"]
                       for e in answer if e["choices"])
    choice = answer["choices"][0]
    return choice["message"]["content"] if op == "chat" else choice["text"]
