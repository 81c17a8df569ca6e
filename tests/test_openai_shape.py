"""Every answer in OpenAI's own shape, as OpenAI's published schemas judge it.

The `start_proxy` fixture holds every answer the SDK receives to tests/specs/openai.schemas.json
(tests/fakes/openai_contract.py) and fails a test at teardown on any violation; the tests here
drive every vendor through both endpoints, plain and streamed, whole and failed, and also
assert the check found nothing, so a passing run here means the schemas were met.
"""

from __future__ import annotations

import aiohttp
import openai
import pytest

from providers.standins import BreakStream, Fail, Reply
from tests.fakes.openai_contract import check_answer
from tests.fixtures_proxy import providers_for, single_target_models

KINDS = ["cogito", "poolside", "nebius", "interactive", "openai"]
ENDPOINTS = ["completions", "chat"]


@pytest.fixture
async def proxy(vendors, start_proxy):
    doc = {"providers": providers_for(vendors), "models": single_target_models(vendors)}
    return await start_proxy(doc, vendors=vendors)


async def call(client, endpoint: str, model: str, **kw):
    if endpoint == "chat":
        return await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **kw)
    return await client.completions.create(model=model, prompt="hi", **kw)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_whole_answer_validates_against_openai_schema(kind, endpoint, vendors, proxy):
    got = await call(proxy.client(), endpoint, f"via-{kind}")
    assert got.id and isinstance(got.created, int)
    assert got.choices[0].logprobs is None
    if endpoint == "chat":
        assert got.choices[0].message.refusal is None
    assert proxy.violations == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("include_usage", [True, False])
async def test_every_stream_chunk_validates_and_shares_one_id(kind, endpoint, include_usage, vendors, proxy):
    vendors[kind].control.push(Reply(text="one two three", chunks=3))
    stream = await call(proxy.client(), endpoint, f"via-{kind}", stream=True,
                        stream_options={"include_usage": include_usage})
    chunks = [c async for c in stream]
    assert len(chunks) == 3 + include_usage
    assert len({c.id for c in chunks}) == 1 and chunks[0].id
    assert len({c.created for c in chunks}) == 1
    assert proxy.violations == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("failure", ["model_not_found", "bad_request", "rate_limit", "server_error", "plain_502"])
async def test_error_bodies_validate_against_openai_schema(kind, endpoint, stream, failure, vendors, proxy):
    vendors[kind].control.push(*[Fail(failure, retry_after=0, param="temperature")] * 3)
    with pytest.raises(openai.APIStatusError):
        await call(proxy.client(), endpoint, f"via-{kind}", stream=stream)
    assert proxy.violations == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_in_band_error_event_validates_against_openai_schema(kind, endpoint, vendors, proxy):
    vendors[kind].control.push(BreakStream(after=2))
    stream = await call(proxy.client(), endpoint, f"via-{kind}", stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    await stream.close()
    assert proxy.violations == []


async def test_models_list_and_one_model_validate_against_openai_schema(vendors, proxy):
    client = proxy.client()
    listed = await client.models.list()
    assert {m.id for m in listed.data} == {f"via-{k}" for k in KINDS}
    one = await client.models.retrieve("via-poolside")
    assert (one.id, one.object, one.owned_by) == ("via-poolside", "model", "router")
    assert proxy.violations == []


async def test_unknown_model_retrieved_is_404_in_openai_shape(vendors, proxy):
    with pytest.raises(openai.NotFoundError) as info:
        await proxy.client().models.retrieve("no-such-model")
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
    assert proxy.violations == []


async def test_models_path_with_trailing_slash_lists_models(vendors, proxy):
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/v1/models/") as r:
            assert r.status == 200
            body = await r.read()
    assert check_answer("/v1/models", 200, "application/json", body, True) == []


@pytest.mark.parametrize("stream", [False, True])
async def test_poolside_bookkeeping_field_is_dropped(stream, vendors, proxy):
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/completions",
                          json={"model": "via-poolside", "prompt": "hi", "stream": stream}) as r:
            raw = await r.read()
    assert b"$schema" not in raw
    assert b'"id":"cmpl-' in raw


@pytest.mark.parametrize(("asked", "field", "value"), [
    ("flex", "service_tier", "flex"),                     # one of OpenAI's tiers: kept
    ("no-limit", "nebius_service_tier", "no-limit"),      # Nebius's own: renamed
])
async def test_nebius_service_tier_stays_only_as_openai_value(asked, field, value, vendors, proxy):
    got = await proxy.client().completions.create(model="via-nebius", prompt="hi", extra_body={"service_tier": asked})
    assert got.model_extra.get(field, getattr(got, field, None)) == value
    assert proxy.violations == []


def test_checker_finds_a_missing_required_field():
    """The schema check is not vacuous: an answer without `id` or `logprobs` fails it."""
    body = b'{"object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"x","finish_reason":"stop"}]}'
    found = check_answer("/v1/completions", 200, "application/json", body, True)
    assert any("'id' is a required property" in f for f in found)
    assert any("'logprobs' is a required property" in f for f in found)
    event = b'data: {"error": {"message": "x"}}\n\ndata: [DONE]\n\n'
    assert any("'type' is a required property" in f
               for f in check_answer("/v1/chat/completions", 200, "text/event-stream", event, True))


@pytest.mark.parametrize(("body", "status", "provider"), [
    ({"model": "via-poolside", "prompt": "x", "n": 2}, 400, "poolside"),        # about one target: names it
    ({"model": "via-cogito", "prompt": "x", "logprobs": 2}, 400, "cogito"),
    ({"model": "no-such-model", "prompt": "x"}, 404, "none"),                   # before any target
    ({"model": "via-poolside", "prompt": 5}, 400, "none"),
])
async def test_error_header_names_the_provider_the_error_is_about(body, status, provider, vendors, proxy):
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/completions", json=body) as r:
            assert r.status == status
            assert r.headers["x-router-provider"] == provider
            message = (await r.json())["error"]["message"]
    assert (provider in message) == (provider != "none")


async def test_model_named_with_a_slash_is_retrieved(vendors, start_proxy):
    proxy = await start_proxy({"providers": providers_for([vendors.openai]),
                               "models": {"org/model-1": {"targets": [{"provider": "openai", "model": "m"}]}}},
                              vendors=[vendors.openai])
    assert (await proxy.client().models.retrieve("org/model-1")).id == "org/model-1"
