"""The vendor stand-ins behave as scripted and answer only with what the vendors' specs allow.

Everything goes through real sockets with aiohttp's client, as the proxy will. The `vendors`
fixture also re-checks every body against the specs and fails on any violation, so each test
here doubles as proof that the fakes are honest; the last tests prove the checker can fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from providers.standins import (
    STANDIN_KINDS,
    BreakStream,
    Fail,
    Hang,
    Reply,
    StandinControl,
    create_standin_app,
)
from providers.standins import DIALECTS
from providers.standins.run import start_standin
from tests.fakes.contract import validate_request, validate_response
from tests.fixtures_vendors import Vendor, Vendors, start_vendor

OPS = ("completions", "chat")
MODELS = {
    "cogito": "moonshotai/kimi-k2.6:appliedcompute",
    "poolside": "malibu",
    "nebius": "meta-llama/Llama-3.3-70B-Instruct",
    "interactive": "openai/gpt-4o-mini",
    "openai": "gpt-4o-mini",
}
SERVED = {**MODELS, "cogito": "moonshotai/kimi-k2.6"}  # Cogito drops the catalog suffix
MISSING = object()  # "this field must be absent"


def path_of(kind: str, op: str) -> str:
    return DIALECTS[kind]().paths()[op]


def body_for(kind: str, op: str, **extra: Any) -> dict[str, Any]:
    """A request the vendor's schema accepts."""
    if op == "chat":
        body: dict[str, Any] = {"model": MODELS[kind], "messages": [{"role": "user", "content": "Say hi"}]}
    else:
        body = {"model": MODELS[kind], "prompt": "Say hi", "max_tokens": 16, "stop": ["\n\n"]}
    body.update(extra)
    return body


def auth(vendor: Vendor) -> dict[str, str]:
    return {"Authorization": f"Bearer {vendor.api_key}"}


def dig(body: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(body, list):
            body = body[int(part)] if int(part) < len(body) else MISSING
        elif isinstance(body, dict):
            body = body.get(part, MISSING)
        else:
            return MISSING
    return body


def expect(body: Any, wanted: dict[str, Any]) -> None:
    for dotted, want in wanted.items():
        got = dig(body, dotted)
        if isinstance(want, type):
            assert isinstance(got, want), f"{dotted}: {got!r} is not {want.__name__}"
        else:
            assert got is want if want is MISSING else got == want, f"{dotted}: {got!r} != {want!r}"


def sse_payloads(text: str) -> list[Any]:
    """The data of each SSE event: JSON objects, and the literal "[DONE]"."""
    out: list[Any] = []
    for event in text.split("\n\n"):
        if event.startswith("data: "):
            data = event[len("data: ") :]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(
    session: aiohttp.ClientSession, vendor: Vendor, op: str, body: Any, **kw: Any
) -> tuple[aiohttp.ClientResponse, bytes]:
    headers = kw.pop("headers", auth(vendor))
    async with session.post(vendor.root + path_of(vendor.kind, op), json=body, headers=headers, **kw) as resp:
        return resp, await resp.read()


# --- success -------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", STANDIN_KINDS)
async def test_success_json(vendors: Vendors, session: aiohttp.ClientSession, kind: str, op: str) -> None:
    vendor = vendors[kind]
    sent = body_for(kind, op)
    resp, raw = await post(session, vendor, op, sent)
    assert resp.status == 200 and resp.content_type == "application/json"
    body = orjson.loads(raw)
    assert validate_response(kind, path_of(kind, op), body) == []
    choice = body["choices"][0]
    text = choice["message"]["content"] if op == "chat" else choice["text"]
    assert text == Reply().text and choice["finish_reason"] == "stop"
    assert body["model"] == SERVED[kind]
    expect(body, {"usage.prompt_tokens": 7, "usage.completion_tokens": 5, "usage.total_tokens": 12})
    recorded = vendor.control.requests[-1]
    assert recorded.path == path_of(kind, op) and recorded.body == sent
    assert recorded.headers["authorization"] == recorded.headers["Authorization"] == f"Bearer {vendor.api_key}"


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", STANDIN_KINDS)
async def test_success_stream(
    vendors: Vendors, session: aiohttp.ClientSession, kind: str, op: str, include_usage: bool
) -> None:
    vendor = vendors[kind]
    vendor.control.push(Reply(text="abcdefghij", chunks=4, prompt_tokens=3, completion_tokens=4))
    extra: dict[str, Any] = {"stream": True}
    if include_usage:
        extra["stream_options"] = {"include_usage": True}
    resp, raw = await post(session, vendor, op, body_for(kind, op, **extra))
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    payloads = sse_payloads(raw.decode())
    assert payloads[-1] == "[DONE]" and raw.endswith(b"data: [DONE]\n\n")
    chunks = payloads[:-1]
    for chunk in chunks:
        assert validate_response(kind, path_of(kind, op), chunk, chunk=True) == []
        assert chunk["object"] == ("chat.completion.chunk" if op == "chat" else "text_completion")
    content = chunks[:4]
    assert len(chunks) == 4 + include_usage
    if op == "chat":
        assert content[0]["choices"][0]["delta"]["role"] == "assistant"
        assert "role" not in content[1]["choices"][0]["delta"]
        pieces = [c["choices"][0]["delta"]["content"] for c in content]
    else:
        pieces = [c["choices"][0]["text"] for c in content]
    assert "".join(pieces) == "abcdefghij"
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    unfinished = "" if (kind, op) == ("poolside", "completions") else None
    assert all(c["choices"][0]["finish_reason"] == unfinished for c in content[:-1])
    if include_usage:
        assert chunks[-1]["choices"] == []
        expect(chunks[-1], {"usage.prompt_tokens": 3, "usage.completion_tokens": 4, "usage.total_tokens": 7})


async def test_steps_are_consumed_in_order_then_default(vendors: Vendors, session: aiohttp.ClientSession) -> None:
    vendor = vendors.openai
    vendor.control.push(Fail("rate_limit"), Reply(text="second"))
    assert vendor.control.pending == 2
    statuses, texts = [], []
    for _ in range(3):
        resp, raw = await post(session, vendor, "completions", body_for("openai", "completions"))
        statuses.append(resp.status)
        texts.append(orjson.loads(raw).get("choices", [{}])[0].get("text"))
    assert statuses == [429, 200, 200] and texts == [None, "second", Reply().text]
    assert len(vendor.control.requests) == 3
    vendor.control.push(Reply())
    vendor.control.clear()
    assert vendor.control.requests == [] and vendor.control.pending == 0


async def test_batch_prompt_gets_one_choice_per_prompt(vendors: Vendors, session: aiohttp.ClientSession) -> None:
    for kind in ("cogito", "nebius", "interactive", "openai"):
        resp, raw = await post(session, vendors[kind], "completions", body_for(kind, "completions", prompt=["a", "b"]))
        assert resp.status == 200
        assert [c["index"] for c in orjson.loads(raw)["choices"]] == [0, 1]


async def test_reply_delays(vendors: Vendors, session: aiohttp.ClientSession) -> None:
    vendor = vendors.nebius
    vendor.control.push(Reply(delay=0.2), Reply(chunks=3, chunk_delay=0.1))
    started = time.monotonic()
    await post(session, vendor, "completions", body_for("nebius", "completions"))
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    await post(session, vendor, "chat", body_for("nebius", "chat", stream=True))
    assert time.monotonic() - started >= 0.2  # two gaps between three events


# --- errors --------------------------------------------------------------------------------------

_OPENAI_LIKE = {
    "model_not_found": (404, {"error.code": "model_not_found", "error.param": "model", "error.message": str}),
    "context_length": (400, {"error.code": "context_length_exceeded", "error.message": str}),
    "rate_limit": (429, {"error.message": str, "error.type": str}),
    "server_error": (500, {"error.message": str}),
    "auth": (401, {"error.message": str}),
    "bad_request": (400, {"error.param": "temperature", "error.type": "invalid_request_error"}),
}
_PROBLEM = {"type": "about:blank", "title": str, "detail": str, "instance": str}
ERRORS: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {
    "openai": _OPENAI_LIKE,
    "cogito": {**_OPENAI_LIKE, "bad_request": (400, {"error.code": "invalid_request_error", "error.param": "temperature"})},
    "poolside": {
        "model_not_found": (400, {**_PROBLEM, "status": 400, "code": "model-not-found", "errors.0.location": "body.model"}),
        "context_length": (400, {**_PROBLEM, "status": 400, "code": "max-tokens-exceeded"}),
        "rate_limit": (429, {**_PROBLEM, "status": 429, "code": MISSING}),
        "server_error": (500, {**_PROBLEM, "status": 500, "code": MISSING}),
        "auth": (401, {**_PROBLEM, "status": 401, "code": MISSING}),
        "bad_request": (400, {**_PROBLEM, "status": 400, "code": MISSING, "errors.0.location": "body.temperature"}),
    },
    "nebius": {
        "model_not_found": (404, {"detail": "The model `meta-llama/Llama-3.3-70B-Instruct` does not exist."}),
        "context_length": (400, {"detail": str}),
        "rate_limit": (429, {"detail": str}),
        "server_error": (500, {"detail": str}),
        "auth": (401, {"detail": str}),
        "bad_request": (422, {"detail.0.loc": ["body", "temperature"], "detail.0.msg": str, "detail.0.type": str}),
    },
    "interactive": {
        kind: (400 if kind == "model_not_found" else status, {**wanted, "error.code": str, "error.param": str,
                                                              "error.type": str, "error.message": str})
        for kind, (status, wanted) in _OPENAI_LIKE.items()
    },
}
ERRORS["interactive"]["model_not_found"][1]["error.code"] = "model_not_found"
ERRORS["interactive"]["context_length"][1]["error.code"] = "context_length_exceeded"


def error_content_type(kind: str, status: int) -> str:
    return "application/problem+json" if kind == "poolside" and status != 400 else "application/json"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("error", list(ERRORS["openai"]))
@pytest.mark.parametrize("kind", STANDIN_KINDS)
async def test_fail(vendors: Vendors, session: aiohttp.ClientSession, kind: str, error: str, op: str) -> None:
    vendor = vendors[kind]
    retry_after = 7 if error in ("rate_limit", "server_error") else None
    vendor.control.push(Fail(error, retry_after=retry_after, param="temperature" if error == "bad_request" else None))
    resp, raw = await post(session, vendor, op, body_for(kind, op))
    status, wanted = ERRORS[kind][error]
    assert resp.status == status
    assert resp.content_type == error_content_type(kind, status)
    body = orjson.loads(raw)
    expect(body, wanted)
    assert validate_response(kind, path_of(kind, op), body, status=status) == []
    assert resp.headers.get("Retry-After") == (str(retry_after) if retry_after else None)
    if kind == "cogito":
        assert resp.headers["x-request-id"] and "x-tokens-used" not in resp.headers


@pytest.mark.parametrize("kind", STANDIN_KINDS)
async def test_plain_502_is_a_load_balancer_page(vendors: Vendors, session: aiohttp.ClientSession, kind: str) -> None:
    vendors[kind].control.push(Fail("plain_502"))
    resp, raw = await post(session, vendors[kind], "chat", body_for(kind, "chat"))
    assert resp.status == 502 and resp.content_type == "text/html"
    assert raw == b"<html><body><h1>502 Bad Gateway</h1></body></html>"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["missing", "wrong"])
@pytest.mark.parametrize("kind", STANDIN_KINDS)
async def test_bad_key_is_refused(
    vendors: Vendors, session: aiohttp.ClientSession, kind: str, headers: dict[str, str]
) -> None:
    vendor = vendors[kind]
    vendor.control.push(Reply(text="not for you"))
    resp, raw = await post(session, vendor, "completions", body_for(kind, "completions"), headers=headers)
    assert resp.status == 401
    expect(orjson.loads(raw), ERRORS[kind]["auth"][1])
    assert vendor.control.pending == 1  # refused before the script ran
    assert len(vendor.control.requests) == 1  # but still recorded


@pytest.mark.parametrize("kind", STANDIN_KINDS)
async def test_missing_model_fails_without_scripting(
    vendors: Vendors, session: aiohttp.ClientSession, kind: str
) -> None:
    resp, raw = await post(session, vendors[kind], "chat", body_for(kind, "chat", model="acme/missing-model"))
    assert resp.status == ERRORS[kind]["model_not_found"][0]
    assert "acme/missing-model" in raw.decode()


# --- broken streams and hangs --------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", STANDIN_KINDS)
async def test_break_stream_cuts_the_connection(
    vendors: Vendors, session: aiohttp.ClientSession, kind: str, op: str
) -> None:
    vendor = vendors[kind]
    vendor.control.push(BreakStream(after=2))
    url = vendor.root + path_of(kind, op)
    lines: list[bytes] = []
    async with session.post(url, json=body_for(kind, op, stream=True), headers=auth(vendor)) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in resp.content:
                lines.append(line)
    payloads = sse_payloads(b"".join(lines).decode())
    assert len(payloads) == 2 and "[DONE]" not in payloads
    assert all(p["choices"][0]["finish_reason"] != "stop" for p in payloads)


@pytest.mark.parametrize("kind", STANDIN_KINDS)
async def test_break_stream_truncates_a_json_answer(
    vendors: Vendors, session: aiohttp.ClientSession, kind: str
) -> None:
    vendor = vendors[kind]
    vendor.control.push(BreakStream())
    url = vendor.root + path_of(kind, "completions")
    async with session.post(url, json=body_for(kind, "completions"), headers=auth(vendor)) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


@pytest.mark.parametrize("kind", STANDIN_KINDS)
async def test_hang_trips_the_client_timeout(vendors: Vendors, session: aiohttp.ClientSession, kind: str) -> None:
    vendor = vendors[kind]
    vendor.control.push(Hang(seconds=5), Hang(seconds=0.05))
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await post(session, vendor, "chat", body_for(kind, "chat"), timeout=aiohttp.ClientTimeout(total=0.3))
    assert time.monotonic() - started < 2
    resp, _ = await post(session, vendor, "chat", body_for(kind, "chat"))  # a short hang then answers
    assert resp.status == 200


# --- each vendor's particulars -------------------------------------------------------------------


async def test_cogito_headers_ids_and_usage(vendors: Vendors, session: aiohttp.ClientSession) -> None:
    vendor = vendors.cogito
    resp, raw = await post(session, vendor, "chat", body_for("cogito", "chat"))
    body = orjson.loads(raw)
    assert resp.headers["x-request-id"] and resp.headers["x-tokens-used"] == "12"
    assert body["id"].startswith("req_") and body["usage"]["cached_input_tokens"] == 2
    resp, raw = await post(session, vendor, "completions", body_for("cogito", "completions"))
    body = orjson.loads(raw)
    assert resp.headers["x-request-id"] and "x-tokens-used" not in resp.headers
    assert body["id"].startswith("cmpl_") and "cached_input_tokens" not in body["usage"]
    assert body["model"] == "moonshotai/kimi-k2.6"
    resp, _ = await post(session, vendor, "chat", body_for("cogito", "chat", stop=["a", "b", "c", "d", "e"]))
    assert resp.status == 400  # more than the documented four stop sequences
    assert vendor.violations  # which the contract checker also flags
    vendor.violations.clear()


@pytest.mark.parametrize(
    "op,field,value",
    [("completions", "prompt", ["one", "two"]), ("completions", "stop", "\n"), ("chat", "stop", "\n"),
     ("completions", "top_p", 0)],
)
async def test_poolside_refuses_what_its_schema_does(
    vendors: Vendors, session: aiohttp.ClientSession, op: str, field: str, value: Any
) -> None:
    vendor = vendors.poolside
    resp, raw = await post(session, vendor, op, body_for("poolside", op, **{field: value}))
    assert resp.status == 400 and resp.content_type == "application/json"
    expect(orjson.loads(raw), {"status": 400, "errors.0.location": f"body.{field}", "errors.0.value": value})
    assert vendor.violations  # the contract checker saw the bad request too
    vendor.violations.clear()


async def test_poolside_completion_shape(vendors: Vendors, session: aiohttp.ClientSession) -> None:
    _, raw = await post(session, vendors.poolside, "completions", body_for("poolside", "completions"))
    body = orjson.loads(raw)
    assert "id" not in body and body["$schema"].endswith("/Completion.json")


async def test_nebius_tier_cache_and_project(vendors: Vendors, session: aiohttp.ClientSession) -> None:
    vendor = vendors.nebius
    url = vendor.root + "/v1/completions?ai_project_id=proj-1"
    sent = body_for("nebius", "completions", service_tier="flex")
    async with session.post(url, json=sent, headers=auth(vendor)) as resp:
        body = await resp.json()
    assert body["service_tier"] == "flex" and body["usage"]["prompt_tokens_details"]["cached_tokens"] == 2
    assert vendor.control.requests[-1].query == {"ai_project_id": "proj-1"}
    resp, raw = await post(session, vendor, "completions", {"model": MODELS["nebius"]})
    assert resp.status == 422
    expect(orjson.loads(raw), {"detail.0.loc": ["body", "prompt"], "detail.0.type": "missing"})
    vendor.violations.clear()  # that request broke the schema on purpose


async def test_interactive_numbers_are_floats(vendors: Vendors, session: aiohttp.ClientSession) -> None:
    vendor = vendors.interactive
    body = {"models": ["openai/gpt-4o-mini", "anthropic/claude"], "prompt": "hi"}  # no `model`: allowed
    _, raw = await post(session, vendor, "completions", body)
    answer = orjson.loads(raw)
    assert isinstance(answer["created"], float) and isinstance(answer["usage"]["total_tokens"], float)
    choice = answer["choices"][0]
    assert isinstance(choice["index"], float) and choice["logprobs"] is None and choice["reasoning"] is None
    assert answer["provider"] and answer["system_fingerprint"] and answer["model"] == "openai/gpt-4o-mini"


# --- the demo ------------------------------------------------------------------------------------


async def test_demo_replies_say_who_answered(session: aiohttp.ClientSession) -> None:
    for kind in STANDIN_KINDS:
        running = await start_standin(kind)  # no control given: demo mode, no key required
        try:
            url = running.root + path_of(kind, "chat")
            async with session.post(url, json=body_for(kind, "chat")) as resp:
                text = (await resp.json())["choices"][0]["message"]["content"]
            assert text.startswith(f"[{kind}:{MODELS[kind]}]") and "Say hi" in text
            async with session.post(url, json=body_for(kind, "chat", model="missing")) as resp:
                assert resp.status == ERRORS[kind]["model_not_found"][0]
        finally:
            await running.close()


def test_create_standin_app_and_control_api() -> None:
    assert STANDIN_KINDS == ("cogito", "poolside", "nebius", "interactive", "openai")
    create_standin_app("nebius", StandinControl(), api_key="k")
    with pytest.raises(ValueError):
        create_standin_app("acme")
    with pytest.raises(ValueError):
        Fail("teapot")
    with pytest.raises(TypeError):
        StandinControl().push("reply")  # type: ignore[arg-type]


# --- the checker can fail ------------------------------------------------------------------------

BAD_REQUESTS = [
    ("poolside", "/openai/v1/completions", {"model": "m", "prompt": ["a"]}, "prompt"),
    ("poolside", "/openai/v1/completions", {"model": "m", "prompt": "a", "stop": "x"}, "stop"),
    ("poolside", "/openai/v1/chat/completions", {"model": "m", "messages": [], "stop": "x"}, "stop"),
    ("cogito", "/v1/chat/completions", {"model": "m", "messages": [{"role": "user"}], "temperature": 3}, "temperature"),
    ("cogito", "/v1/completions", {"model": "m", "prompt": "a", "stop": ["1", "2", "3", "4", "5"]}, "stop"),
    ("nebius", "/v1/completions", {"model": "m"}, "prompt"),
    ("nebius", "/v1/chat/completions", {"model": "m", "prompt": "a"}, "messages"),
    ("nebius", "/v1/completions", {"model": "m", "prompt": "a", "service_tier": "gold"}, "service_tier"),
    ("interactive", "/api/v1/completions", {"prompt": "a", "max_tokens": "ten"}, "max_tokens"),
    ("interactive", "/api/v1/completions", {"prompt": [["a"]]}, "prompt"),
    ("interactive", "/v1/completions", {"prompt": "a"}, "no operation"),
]


@pytest.mark.parametrize("kind,path,body,mentions", BAD_REQUESTS)
def test_checker_catches_bad_requests(kind: str, path: str, body: dict[str, Any], mentions: str) -> None:
    errors = validate_request(kind, path, body)
    assert errors and any(mentions in e for e in errors), errors


def test_checker_accepts_nulls_where_interactive_allows_them() -> None:
    body = {"model": "m", "prompt": "a", "max_tokens": None, "stop": None, "stream_options": None, "seed": None}
    assert validate_request("interactive", "/api/v1/completions", body) == []


BAD_RESPONSES = [
    ("nebius", "/v1/completions", 200, False,
     {"id": "x", "object": "text_completion", "created": 1, "model": "m", "choices": [],
      "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}, "service_tier"),
    ("poolside", "/openai/v1/completions", 200, True,
     {"object": "text_completion", "created": 1, "model": "m",
      "choices": [{"index": 0, "text": "a", "finish_reason": None}]}, "finish_reason"),
    ("poolside", "/openai/v1/completions", 400, False, {"status": 400, "code": "model_not_found"}, "code"),
    ("interactive", "/api/v1/completions", 429, False,
     {"error": {"code": "rate_limit", "message": "slow down", "param": None, "type": "requests"}}, "param"),
    ("interactive", "/api/v1/completions", 200, False,
     {"id": "x", "object": "text_completion", "created": 1, "model": "m",
      "choices": [{"index": 0, "text": "a", "finish_reason": "stop"}]}, "logprobs"),
    ("cogito", "/v1/chat/completions", 200, True,
     {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": []}, "object"),
    ("nebius", "/v1/completions", 422, False, {"detail": [{"loc": ["body"], "msg": "bad"}]}, "type"),
]


@pytest.mark.parametrize("kind,path,status,chunk,body,mentions", BAD_RESPONSES)
def test_checker_catches_bad_responses(
    kind: str, path: str, status: int, chunk: bool, body: dict[str, Any], mentions: str
) -> None:
    errors = validate_response(kind, path, body, status=status, chunk=chunk)
    assert errors and any(mentions in e for e in errors), errors


async def test_fixture_records_violations_on_both_sides(session: aiohttp.ClientSession) -> None:
    vendor = await start_vendor("poolside")
    try:
        async with session.post(vendor.root + "/openai/v1/completions", json={"model": "m", "prompt": 1},
                                headers=auth(vendor)) as resp:
            assert resp.status == 400
        async with session.post(vendor.root + "/v1/completions", data=b"not json", headers=auth(vendor)) as resp:
            assert resp.status == 404
    finally:
        assert vendor.running is not None
        await vendor.running.close()
    assert any("$.prompt" in v for v in vendor.violations)
    assert any("no operation at /v1/completions" in v for v in vendor.violations)
    assert any("not JSON" in v for v in vendor.violations)
