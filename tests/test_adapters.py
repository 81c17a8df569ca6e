"""Each adapter's translation, seen from what the vendor actually received, and its error map."""

from __future__ import annotations

import openai
import orjson
import pytest

from providers import REGISTRY, ProviderSettings
from providers.failures import Action
from tests.fixtures_proxy import providers_for


@pytest.fixture
async def proxy(vendors, start_proxy):
    providers = providers_for(vendors)
    providers["nebius"]["options"] = {"ai_project_id": "proj-42"}
    models = {f"via-{v.kind}": {"targets": [{"provider": v.kind, "model": "m-1"}]} for v in vendors}
    models["pool-then-nebius"] = {"targets": [{"provider": "poolside", "model": "p"},
                                              {"provider": "nebius", "model": "n"}]}
    return await start_proxy({"providers": providers, "models": models}, vendors=vendors)


async def sent(proxy, vendors, kind, **body):
    await proxy.client().completions.create(model=f"via-{kind}", **body)
    return vendors[kind].control.requests[-1]


@pytest.mark.parametrize(("kind", "given", "received"), [
    ("poolside", {"prompt": "x", "stop": "END"}, {"stop": ["END"]}),
    ("poolside", {"prompt": ["only one"]}, {"prompt": "only one"}),
    ("poolside", {"prompt": "x", "presence_penalty": 0}, {"presence_penalty": None}),
    ("poolside", {"prompt": "x", "user": "u-1"}, {"user": None}),
    ("poolside", {"prompt": "x", "max_tokens": 9, "extra_body": {"top_k": 5}}, {"max_tokens": 9, "top_k": 5}),
    ("poolside", {"prompt": "x", "seed": None, "extra_body": {"top_k": None}}, {"seed": "absent", "top_k": "absent"}),
    ("cogito", {"prompt": "x", "stop": "END", "extra_body": {"ignore_eos": True}}, {"stop": "END", "ignore_eos": True}),
    ("nebius", {"prompt": ["a", "b"], "n": 2, "user": "u-1"}, {"prompt": ["a", "b"], "n": 2, "user": "u-1"}),
    ("nebius", {"prompt": "x", "extra_body": {"service_tier": "flex"}}, {"service_tier": "flex"}),
    ("nebius", {"prompt": "x", "extra_body": {"service_tier": "no-limit"}}, {"service_tier": "no-limit"}),
    ("nebius", {"prompt": "x", "extra_body": {"service_tier": "priority"}}, {"service_tier": "absent"}),   # not a Nebius tier
    ("interactive", {"prompt": "x", "extra_body": {"models": ["via-nebius"]}, "suffix": "!"},
     {"models": None, "suffix": "!"}),
])
async def test_adapter_translates_body_for_vendor(kind, given, received, proxy, vendors):
    req = await sent(proxy, vendors, kind, **given)
    for field, value in received.items():
        assert req.body.get(field, "absent") == value if value == "absent" else req.body.get(field) == value, \
            (field, req.body)


async def test_nebius_project_option_becomes_query_parameter(proxy, vendors):
    req = await sent(proxy, vendors, "nebius", prompt="x")
    assert req.query == {"ai_project_id": "proj-42"}


@pytest.mark.parametrize(("kind", "given", "param"), [
    ("poolside", {"prompt": [1, 2, 3]}, "prompt"),              # token ids: poolside takes strings only
    ("poolside", {"prompt": [[1, 2], [3]]}, "prompt"),
    ("poolside", {"prompt": "x", "n": 2}, "n"),
    ("poolside", {"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ("cogito", {"prompt": "x", "logprobs": 2}, "logprobs"),
])
async def test_field_that_would_change_the_answer_is_refused_naming_it(kind, given, param, proxy, vendors):
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client().completions.create(model=f"via-{kind}", **given)
    assert info.value.body["param"] == param
    assert info.value.body["code"] == "unsupported_parameter"
    assert vendors[kind].control.requests == [], "a refused request is never sent"


async def test_refused_field_falls_over_to_a_target_that_takes_it(proxy, vendors):
    raw = await proxy.client().completions.with_raw_response.create(model="pool-then-nebius", prompt=[1, 2, 3])
    assert raw.headers["x-router-provider"] == "nebius"
    assert raw.headers["x-router-attempts"] == "1"
    assert vendors.poolside.control.requests == []


async def test_model_not_found_falls_over_to_next_target(proxy, vendors):
    from providers.standins import Fail
    vendors.poolside.control.push(Fail("model_not_found"))
    raw = await proxy.client().completions.with_raw_response.create(model="pool-then-nebius", prompt="x")
    assert raw.headers["x-router-provider"] == "nebius"
    assert raw.headers["x-router-attempts"] == "2"
    assert raw.parse().model == "pool-then-nebius"


async def test_fallback_list_in_body_is_tried_in_order(proxy, vendors):
    from providers.standins import Fail
    vendors.cogito.control.push(Fail("server_error"), Fail("server_error"))
    raw = await proxy.client().completions.with_raw_response.create(
        model="via-cogito", prompt="x", extra_body={"models": ["via-interactive", "via-nebius"]})
    assert raw.headers["x-router-provider"] == "interactive"
    assert raw.parse().model == "via-interactive"
    assert "models" not in vendors.interactive.control.requests[-1].body


async def test_client_error_from_vendor_is_not_fallen_over(proxy, vendors):
    from providers.standins import Fail
    vendors.poolside.control.push(Fail("bad_request", param="temperature"))
    with pytest.raises(openai.BadRequestError):
        await proxy.client().completions.create(model="pool-then-nebius", prompt="x")
    assert vendors.nebius.control.requests == []


def adapter(kind):
    return REGISTRY[kind](ProviderSettings(kind, "http://127.0.0.1:1", "k", {}))


ERROR_BODIES = [
    # (kind, vendor status, vendor body, client status, client code, action, param)
    ("poolside", 400, {"title": "Bad Request", "status": 400, "detail": "no such model", "code": "model-not-found"},
     404, "model_not_found", Action.NEXT, "model"),
    ("poolside", 400, {"title": "Bad Request", "status": 400, "detail": "too long", "code": "max-tokens-exceeded"},
     400, "context_length_exceeded", Action.RETURN, "max_tokens"),
    ("poolside", 400, {"title": "Bad Request", "status": 400, "detail": "bad",
                       "errors": [{"location": "body.top_p", "message": "must be <= 1", "value": 3}]},
     400, "invalid_request_error", Action.RETURN, "top_p"),
    ("nebius", 422, {"detail": [{"loc": ["body", "temperature"], "msg": "not a number", "type": "type_error"}]},
     400, "invalid_request_error", Action.RETURN, "temperature"),
    ("nebius", 404, {"detail": "The model `x` does not exist."}, 404, "model_not_found", Action.NEXT, "model"),
    ("nebius", 400, {"detail": "This model's maximum context length is 8192 tokens"}, 400,
     "context_length_exceeded", Action.RETURN, "max_tokens"),
    ("cogito", 404, {"error": {"message": "placeholder row", "type": "invalid_request_error",
                               "code": "model_not_found"}}, 404, "model_not_found", Action.NEXT, "model"),
    ("interactive", 400, {"error": {"code": "model_not_found", "message": "unknown", "param": "model",
                                    "type": "invalid_request_error"}}, 404, "model_not_found", Action.NEXT, "model"),
    ("interactive", 429, {"error": {"code": "rate_limited", "message": "slow down", "param": "",
                                    "type": "rate_limit"}}, 429, "rate_limit_exceeded", Action.RETRY, None),
    ("openai", 503, None, 503, "upstream_error", Action.RETRY, None),
    ("openai", 500, None, 502, "upstream_error", Action.RETRY, None),
    ("openai", 401, {"error": {"message": "bad key"}}, 502, "upstream_auth_failed", Action.NEXT, None),
    ("openai", 413, {"error": {"message": "too big"}}, 413, "invalid_request_error", Action.RETURN, None),
]


@pytest.mark.parametrize(("kind", "status", "body", "out_status", "out_code", "action", "param"), ERROR_BODIES)
def test_vendor_error_maps_to_openai_error(kind, status, body, out_status, out_code, action, param):
    raw = orjson.dumps(body) if body is not None else b"<html><body><h1>Bad Gateway</h1></body></html>"
    err = adapter(kind).map_error(status, {}, raw)
    assert (err.error.status, err.error.code, err.action, err.error.param) == (out_status, out_code, action, param)
    assert "k" not in err.error.message.split(), "never echo a key"


def test_retry_after_is_read_from_vendor_429():
    err = adapter("openai").map_error(429, {"Retry-After": "3"}, b"{}")
    assert err.retry_after == 3.0 and err.error.headers == {"Retry-After": "3"}


@pytest.mark.parametrize(("messages", "received"), [
    ([{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
     [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]),
    ([{"role": "user", "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]}],
     [{"role": "user", "content": "one two"}]),
    ([{"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                             "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "42"}],
     [{"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function",
                                                           "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "42"}]),
])
async def test_cogito_chat_gets_its_roles_and_string_content(messages, received, proxy, vendors):
    await proxy.client().chat.completions.create(model="via-cogito", messages=messages)
    assert vendors.cogito.control.requests[-1].body["messages"] == received


async def test_cogito_refuses_image_parts_naming_the_message(proxy, vendors):
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client().chat.completions.create(model="via-cogito", messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
    assert info.value.body["param"] == "messages[0].content"


@pytest.mark.parametrize(("extra", "sent"), [
    ({"logprobs": False}, False),              # off: dropped, the answer is the same
    ({"parallel_tool_calls": True}, False),
])
async def test_a_field_at_its_off_value_is_dropped_not_refused(extra, sent, proxy, vendors):
    await proxy.client().chat.completions.create(model="via-cogito", messages=[{"role": "user", "content": "x"}],
                                                 extra_body=extra)
    assert (next(iter(extra)) in vendors.cogito.control.requests[-1].body) is sent


def test_logprobs_zero_is_not_off():
    with pytest.raises(Exception) as info:
        adapter("cogito").build_body("completions", {"model": "m", "prompt": "x", "logprobs": 0}, "m", False)
    assert info.value.param == "logprobs"


def test_fractional_retry_after_is_sent_as_whole_seconds():
    err = adapter("openai").map_error(429, {"Retry-After": "0.4"}, b"{}")
    assert err.retry_after == 0.4 and err.error.headers == {"Retry-After": "1"}


def test_vendor_key_stays_out_of_reprs():
    settings = ProviderSettings("p", "http://127.0.0.1:1", "sk-very-secret", {})
    assert "sk-very-secret" not in repr(settings)


async def test_dropped_hint_field_is_counted(proxy, vendors):
    from router.edge import METRICS
    await proxy.client().completions.create(model="via-poolside", prompt="x", user="u-1")
    assert proxy.app[METRICS].registry.get_sample_value(
        "router_dropped_fields_total", {"provider": "poolside", "field": "user"}) == 1


@pytest.mark.parametrize("kind", ["cogito", "nebius", "interactive"])
async def test_max_completion_tokens_reaches_vendor_as_its_max_tokens(kind, proxy, vendors):
    """What LangChain's ChatOpenAI(max_tokens=N) sends: a Cogito-only model must answer it."""
    await proxy.client().chat.completions.create(model=f"via-{kind}", messages=[{"role": "user", "content": "x"}],
                                                 max_completion_tokens=12)
    body = vendors[kind].control.requests[-1].body
    assert body["max_tokens"] == 12 and "max_completion_tokens" not in body
