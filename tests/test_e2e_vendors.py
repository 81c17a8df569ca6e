"""End to end through the real server with the official `openai` SDK, against every vendor."""

from __future__ import annotations

import logging

import openai
import pytest

from providers.standins import BreakStream, Fail, Fault, Reply
from router.errors import RouterError
from tests.fixtures_proxy import providers_for, single_target_models

KINDS = ["cogito", "poolside", "nebius", "interactive", "openai"]


@pytest.fixture(autouse=True)
def no_vendor_key_in_any_output(vendors, caplog, monkeypatch):
    """After each test: no vendor's key in any error body the proxy built or any log line."""
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    real_body = RouterError.body

    def spy(self: RouterError) -> dict:
        out = real_body(self)
        bodies.append(repr(out) + repr(self.headers))
        return out

    monkeypatch.setattr(RouterError, "body", spy)
    yield
    output = bodies + [r.getMessage() for r in caplog.records] + [repr(r.__dict__) for r in caplog.records]
    for vendor in vendors:
        leaked = [o for o in output if vendor.api_key in o]
        assert not leaked, f"{vendor.kind}'s key in the proxy's output: {leaked[:1]}"


@pytest.fixture
async def proxy(vendors, start_proxy):
    doc = {"providers": providers_for(vendors), "models": single_target_models(vendors)}
    return await start_proxy(doc, vendors=vendors)


@pytest.mark.parametrize("kind", KINDS)
async def test_completion_answers_in_openai_shape(kind, vendors, proxy):
    vendors[kind].control.push(Reply(text="four words of text", prompt_tokens=11, completion_tokens=4))
    raw = await proxy.client().completions.with_raw_response.create(model=f"via-{kind}", prompt="Say four words")
    c = raw.parse()
    assert c.object == "text_completion"
    assert c.model == f"via-{kind}"
    assert c.choices[0].text == "four words of text"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (11, 4, 15)
    assert c.model_extra["provider"] == kind
    assert isinstance(c.created, int) and isinstance(c.choices[0].index, int)
    assert raw.headers["x-router-provider"] == kind
    assert raw.headers["x-router-model"] == "m-1"
    assert raw.headers["x-router-attempts"] == "1"
    assert raw.headers["x-request-id"]
    sent = vendors[kind].control.requests[-1]
    assert sent.body["model"] == "m-1" and sent.headers["authorization"] == f"Bearer {vendors[kind].api_key}"


@pytest.mark.parametrize("kind", KINDS)
async def test_chat_answers_in_openai_shape(kind, vendors, proxy):
    vendors[kind].control.push(Reply(text="hi there"))
    c = await proxy.client().chat.completions.create(
        model=f"via-{kind}", messages=[{"role": "user", "content": "hello"}])
    assert c.object == "chat.completion"
    assert c.model == f"via-{kind}"
    assert c.choices[0].message.content == "hi there"
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("include_usage", [True, False])
async def test_completion_stream_relays_chunks_and_honours_include_usage(kind, include_usage, vendors, proxy):
    vendors[kind].control.push(Reply(text="one two three", chunks=3, prompt_tokens=9, completion_tokens=3))
    stream = await proxy.client().completions.create(
        model=f"via-{kind}", prompt="count", stream=True, stream_options={"include_usage": include_usage})
    chunks = [c async for c in stream]
    text = "".join(ch.text for c in chunks for ch in c.choices)
    assert text == "one two three"
    assert all(c.model == f"via-{kind}" for c in chunks)
    usage = [c.usage for c in chunks if c.usage]
    if include_usage:
        assert len(usage) == 1 and usage[0].prompt_tokens == 9 and usage[0].completion_tokens == 3
    else:
        assert usage == []
    # The proxy always asks for usage upstream, for accounting, whatever the client asked.
    assert vendors[kind].control.requests[-1].body["stream_options"]["include_usage"] is True


@pytest.mark.parametrize("kind", KINDS)
async def test_chat_stream_relays_deltas(kind, vendors, proxy):
    vendors[kind].control.push(Reply(text="streamed reply", chunks=4))
    stream = await proxy.client().chat.completions.create(
        model=f"via-{kind}", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed reply"
    assert all(c.object == "chat.completion.chunk" for c in chunks)


# Plain pieces the relay shapes as bytes, between pieces with quotes, escapes and characters
# of every width that go the whole way: the client gets every character, in order.
MIXED = 'plain words, "quoted", back\\slash, new\nline, tab\t, café, 😀, </script> and more plain words.'


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_text_of_every_kind_arrives_exactly(kind, vendors, proxy):
    vendors[kind].control.push(Reply(text=MIXED, chunks=24))
    chat = await proxy.client().chat.completions.create(
        model=f"via-{kind}", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [c async for c in chat]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == MIXED
    assert {c.model for c in chunks} == {f"via-{kind}"} and len({c.id for c in chunks}) == 1
    vendors[kind].control.push(Reply(text=MIXED, chunks=24))
    text = await proxy.client().completions.create(model=f"via-{kind}", prompt="hi", stream=True)
    chunks = [c async for c in text]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == MIXED
    assert {c.model for c in chunks} == {f"via-{kind}"} and len({c.id for c in chunks}) == 1


ERRORS = [
    # (stand-in failure, openai exception, status, code)
    ("model_not_found", openai.NotFoundError, 404, "model_not_found"),
    ("context_length", openai.BadRequestError, 400, "context_length_exceeded"),
    ("bad_request", openai.BadRequestError, 400, None),
    ("rate_limit", openai.RateLimitError, 429, "rate_limit_exceeded"),
    ("server_error", openai.InternalServerError, 502, "upstream_error"),
    ("plain_502", openai.InternalServerError, 502, "upstream_error"),
    ("auth", openai.InternalServerError, 502, "upstream_auth_failed"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("failure", "exc_class", "status", "code"), ERRORS)
async def test_vendor_error_arrives_as_matching_openai_exception(kind, failure, exc_class, status, code,
                                                                  vendors, proxy):
    vendors[kind].control.push(*[Fail(failure, retry_after=0, param="temperature")] * 3)
    with pytest.raises(exc_class) as info:
        await proxy.client().completions.create(model=f"via-{kind}", prompt="hello")
    err = info.value
    assert err.status_code == status
    body = err.body
    assert set(body) >= {"message", "type", "param", "code"}
    if code:
        assert body["code"] == code
    assert body["message"]
    assert err.response.headers["x-router-provider"] == kind
    assert err.response.headers["x-request-id"]


async def test_vendor_rate_limit_passes_retry_after(vendors, proxy):
    vendors.nebius.control.push(Fail("rate_limit", retry_after=30))
    with pytest.raises(openai.RateLimitError) as info:
        await proxy.client().completions.create(model="via-nebius", prompt="x")
    # 30 s is over the retry cap, so the proxy does not sleep: it answers with the vendor's hint.
    assert info.value.response.headers["retry-after"] == "30"
    assert info.value.response.headers["x-router-attempts"] == "1"


async def test_client_request_id_is_kept_and_sent_upstream(vendors, proxy):
    raw = await proxy.client().completions.with_raw_response.create(
        model="via-cogito", prompt="x", extra_headers={"X-Request-Id": "trace-abc.123"})
    assert raw.headers["x-request-id"] == "trace-abc.123"
    assert vendors.cogito.control.requests[-1].headers["x-request-id"] == "trace-abc.123"


async def test_insane_request_id_is_replaced(vendors, proxy):
    raw = await proxy.client().completions.with_raw_response.create(
        model="via-cogito", prompt="x", extra_headers={"X-Request-Id": "bad id <with> spaces"})
    assert raw.headers["x-request-id"] != "bad id <with> spaces"
    assert len(raw.headers["x-request-id"]) == 32


async def test_stream_broken_after_commit_ends_with_error_event(vendors, proxy):
    vendors.poolside.control.push(BreakStream(after=3))
    stream = await proxy.client().completions.create(model="via-poolside", prompt="x", stream=True)
    got = []
    with pytest.raises(openai.APIError) as info:
        async for c in stream:
            got.append(c)
    assert len(got) == 3
    assert "broke off" in str(info.value) or "ended" in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
async def test_vendor_error_echoing_our_key_reaches_the_client_without_it(kind, vendors, proxy):
    vendors[kind].control.push(Fault("echo_key", status=400))
    with pytest.raises(openai.BadRequestError) as caught:
        await proxy.client().completions.create(model=f"via-{kind}", prompt="hi")
    assert "Invalid credentials" in str(caught.value)
    assert vendors[kind].api_key not in str(caught.value) and vendors[kind].api_key not in str(caught.value.body)
