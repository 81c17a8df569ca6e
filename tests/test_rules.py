"""Rules: each match operator on its own, first match wins, and what each action does."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from router.errors import RouterError
from router.normalize import normalize
from router.routes import parse
from tests.fixtures_proxy import providers_for

GROUPS = ("fast", "slow", "cheap", "big")


def table(rules: list[dict[str, Any]], default_max_tokens: int = 1024):
    return parse({
        "providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:1"}},
        "models": {g: {"targets": [{"provider": "p", "model": g, "price": {"input": 1, "output": 1}}]}
                   for g in GROUPS},
        "settings": {"default_max_tokens": default_max_tokens},
        "keys": {"team-a": {"key_env": "A"}, "team-b": {"key_env": "B"}, "ci": {"key_env": "C"}},
        "rules": rules,
    }, environ={})


def request(endpoint: str = "completions", **body: Any):
    body.setdefault("model", "fast")
    if endpoint == "chat":
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
    else:
        body.setdefault("prompt", "hi")
    return normalize(endpoint, orjson.dumps(body))


def matches(match: dict[str, Any], norm, key: str | None = None, headers: dict[str, str] | None = None,
            default_max_tokens: int = 1024) -> bool:
    t = table([{"match": match, "route": "slow"}], default_max_tokens)
    return t.rules.decide(norm, key, CIMultiDict(headers or {})).rule is not None


MODEL = [
    ({"model": "fast"}, "fast", True),
    ({"model": "fast"}, "fast-2", False),
    ({"model": "fa*"}, "fast", True),
    ({"model": "fa*"}, "slow", False),
    ({"model": "f?st"}, "fast", True),
    ({"model": "[fs]*"}, "slow", True),
    ({"model": "Fast"}, "fast", False),                  # case-sensitive, as model names are
    ({"model": ["slow", "ch*"]}, "cheap", True),
    ({"model": ["slow", "ch*"]}, "fast", False),
    ({"model": "gpt-4o*"}, "gpt-4o-mini", True),
]


@pytest.mark.parametrize("match,model,hit", MODEL)
def test_match_on_requested_model(match, model, hit):
    assert matches(match, request(model=model)) is hit


def test_match_on_model_looks_at_model_not_the_fallback_list():
    assert matches({"model": "slow"}, request(model="fast", models=["slow"])) is False


KEY = [
    ({"key": "team-a"}, "team-a", True),
    ({"key": "team-a"}, "team-b", False),
    ({"key": "team-*"}, "team-b", True),
    ({"key": "team-*"}, "ci", False),
    ({"key": ["ci", "team-a"]}, "ci", True),
    ({"key": "*"}, None, False),          # the proxy is open: there is no key to match
]


@pytest.mark.parametrize("match,key,hit", KEY)
def test_match_on_client_key_name(match, key, hit):
    assert matches(match, request(), key=key) is hit


HEADERS = [
    ({"x-team": "search"}, {"X-Team": "search"}, True),           # names are case-insensitive
    ({"X-Team": "search"}, {"x-team": "search"}, True),
    ({"x-team": "search"}, {"x-team": "Search"}, False),          # values are not
    ({"x-team": "search"}, {}, False),
    ({"x-team": "sea*"}, {"x-team": "search-eu"}, True),
    ({"x-team": {"glob": "*-eu"}}, {"x-team": "search-eu"}, True),
    ({"x-team": {"glob": "*-eu"}}, {"x-team": "search-us"}, False),
    ({"x-team": {"equals": "a*"}}, {"x-team": "a*"}, True),       # equals takes wildcards literally
    ({"x-team": {"equals": "a*"}}, {"x-team": "ab"}, False),
    ({"x-debug": {"present": True}}, {"x-debug": ""}, True),
    ({"x-debug": {"present": True}}, {}, False),
    ({"x-debug": {"present": False}}, {}, True),
    ({"x-debug": {"present": False}}, {"X-Debug": "1"}, False),
    ({"x-team": "search", "x-env": "prod"}, {"x-team": "search", "x-env": "prod"}, True),
    ({"x-team": "search", "x-env": "prod"}, {"x-team": "search", "x-env": "dev"}, False),
]


@pytest.mark.parametrize("spec,headers,hit", HEADERS)
def test_match_on_request_headers(spec, headers, hit):
    assert matches({"headers": spec}, request(), headers=headers) is hit


ENDPOINT_STREAM = [
    ({"endpoint": "chat"}, request("chat"), True),
    ({"endpoint": "chat"}, request("completions"), False),
    ({"endpoint": "completions"}, request("completions"), True),
    ({"stream": True}, request(stream=True), True),
    ({"stream": True}, request(), False),
    ({"stream": False}, request(), True),
    ({"stream": False}, request(stream=True), False),
    ({"endpoint": "chat", "stream": True}, request("chat", stream=True), True),
    ({"endpoint": "chat", "stream": True}, request("chat"), False),
]


@pytest.mark.parametrize("match,norm,hit", ENDPOINT_STREAM)
def test_match_on_endpoint_and_stream(match, norm, hit):
    assert matches(match, norm) is hit


# "x" * 396 is 100 estimated prompt tokens (four characters a token, plus one).
PROMPT_TOKENS = [
    ({"min": 100}, 100, True),
    ({"min": 101}, 100, False),
    ({"max": 100}, 100, True),
    ({"max": 99}, 100, False),
    ({"min": 50, "max": 150}, 100, True),
    ({"min": 150, "max": 300}, 100, False),
]


@pytest.mark.parametrize("bounds,tokens,hit", PROMPT_TOKENS)
def test_match_on_estimated_prompt_tokens(bounds, tokens, hit):
    norm = request(prompt="x" * (4 * (tokens - 1)))
    assert norm.prompt_tokens == tokens
    assert matches({"prompt_tokens": bounds}, norm) is hit


MAX_TOKENS = [
    ({"min": 500}, 500, 1024, True),
    ({"min": 501}, 500, 1024, False),
    ({"max": 500}, 500, 1024, True),
    ({"max": 499}, 500, 1024, False),
    ({"min": 100, "max": 1000}, 500, 1024, True),
    # Not given: the request counts as settings.default_max_tokens.
    ({"min": 1000}, None, 1024, True),
    ({"min": 1000}, None, 256, False),
    ({"max": 300}, None, 256, True),
]


@pytest.mark.parametrize("bounds,max_tokens,default,hit", MAX_TOKENS)
def test_match_on_max_tokens(bounds, max_tokens, default, hit):
    norm = request(**({"max_tokens": max_tokens} if max_tokens else {}))
    assert matches({"max_tokens": bounds}, norm, default_max_tokens=default) is hit


def test_max_completion_tokens_counts_as_max_tokens_on_chat():
    assert matches({"max_tokens": {"min": 2000}}, request("chat", max_completion_tokens=2000)) is True


def test_empty_match_fits_every_request():
    assert matches({}, request("chat", stream=True), key="ci", headers={"x": "y"}) is True


def test_every_condition_of_a_match_must_hold():
    match = {"model": "fast", "key": "ci", "endpoint": "chat"}
    assert matches(match, request("chat"), key="ci") is True
    assert matches(match, request("chat"), key="team-a") is False
    assert matches(match, request("completions"), key="ci") is False


def decide(rules, norm, key=None, headers=None):
    return table(rules).rules.decide(norm, key, CIMultiDict(headers or {}))


def test_first_matching_rule_decides():
    rules = [{"name": "a", "match": {"model": "slow"}, "route": "big"},
             {"name": "b", "match": {"model": "fa*"}, "route": "cheap"},
             {"name": "c", "match": {"model": "fast"}, "route": "slow"}]
    d = decide(rules, request(model="fast"))
    assert (d.rule.name, d.names) == ("b", ["cheap"])


def test_no_matching_rule_keeps_the_requested_names():
    d = decide([{"match": {"model": "slow"}, "route": "big"}], request(model="fast", models=["cheap"]))
    assert (d.rule, d.names, d.strategy) == (None, ["fast", "cheap"], None)


ACTIONS = [
    # (rule action, body, names planned, strategy)
    ({"route": "big"}, {"model": "fast", "models": ["cheap"]}, ["big"], None),
    ({"route": ["big", "slow"]}, {"model": "fast", "models": ["cheap"]}, ["big", "slow"], None),
    ({"rewrite": "big"}, {"model": "fast", "models": ["cheap"]}, ["big", "cheap"], None),
    ({"rewrite": "big"}, {"model": "fast", "models": ["big", "cheap"]}, ["big", "cheap"], None),
    ({"strategy": "cost"}, {"model": "fast", "models": ["cheap"]}, ["fast", "cheap"], "cost"),
    ({"route": "big", "strategy": "weighted"}, {"model": "fast"}, ["big"], "weighted"),
]


@pytest.mark.parametrize("action,body,names,strategy", ACTIONS)
def test_rule_action_decides_the_names_and_strategy(action, body, names, strategy):
    d = decide([action], request(**body))
    assert (d.names, d.strategy) == (names, strategy)


DENY = [
    ("Not for you.", 403, "permission_error"),
    ({"message": "Not for you."}, 403, "permission_error"),
    ({"message": "Lower max_tokens.", "status": 400}, 400, "invalid_request_error"),
]


@pytest.mark.parametrize("deny,status,kind", DENY)
def test_deny_rule_refuses_with_the_operators_message(deny, status, kind):
    with pytest.raises(RouterError) as info:
        decide([{"match": {"model": "fast"}, "deny": deny}], request())
    err = info.value
    message = deny if isinstance(deny, str) else deny["message"]
    assert (err.status, err.type, err.code, err.message) == (status, kind, "denied_by_rule", message)


# --- over the wire ----------------------------------------------------------------------------


@pytest.fixture
async def proxy(vendors, start_proxy):
    doc = {
        "providers": providers_for([vendors.cogito, vendors.nebius, vendors.interactive]),
        "models": {
            "fast": {"targets": [{"provider": "cogito", "model": "m-1", "price": {"input": 9, "output": 9}},
                                 {"provider": "nebius", "model": "m-1", "price": {"input": 1, "output": 1}}]},
            "big": {"targets": [{"provider": "interactive", "model": "m-1", "price": {"input": 1, "output": 1}}]},
        },
        "rules": [
            {"name": "no-huge", "match": {"max_tokens": {"min": 5000}},
             "deny": {"status": 400, "message": "max_tokens above 4999 is refused here."}},
            {"name": "blocked-team", "match": {"headers": {"x-team": "blocked"}}, "deny": "Team is blocked."},
            {"name": "long", "match": {"prompt_tokens": {"min": 100}}, "route": "big"},
            {"name": "alias", "match": {"model": "gpt-4o*"}, "rewrite": "fast"},
            {"name": "batch", "match": {"headers": {"x-priority": "batch"}}, "strategy": "cost"},
        ],
    }
    return await start_proxy(doc, vendors=vendors)


async def call(proxy, body: dict, headers: dict | None = None) -> tuple[int, dict, str]:
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/completions", json=body, headers=headers or {}) as r:
            return r.status, await r.json(), r.headers.get("x-router-provider", "")


WIRE = [
    # (body, headers, status, provider that served or error code)
    ({"model": "fast", "prompt": "hi"}, {}, 200, "cogito"),
    ({"model": "fast", "prompt": "hi"}, {"X-Priority": "batch"}, 200, "nebius"),
    ({"model": "fast", "prompt": "x" * 400}, {}, 200, "interactive"),
    ({"model": "gpt-4o-mini", "prompt": "hi"}, {}, 200, "cogito"),
    ({"model": "fast", "prompt": "hi", "max_tokens": 5000}, {}, 400, "denied_by_rule"),
    ({"model": "fast", "prompt": "hi"}, {"x-team": "blocked"}, 403, "denied_by_rule"),
]


@pytest.mark.parametrize("body,headers,status,outcome", WIRE)
async def test_rules_steer_requests_through_the_proxy(proxy, body, headers, status, outcome):
    got, answer, provider = await call(proxy, body, headers)
    assert got == status, answer
    if status == 200:
        assert provider == outcome
        assert answer["model"] in ("fast", "big")
    else:
        assert answer["error"]["code"] == outcome
        assert answer["error"]["message"] in ("max_tokens above 4999 is refused here.", "Team is blocked.")


async def test_denied_request_never_reaches_a_vendor(proxy, vendors):
    await call(proxy, {"model": "fast", "prompt": "hi"}, {"x-team": "blocked"})
    assert all(not v.control.requests for v in vendors)
