"""Client keys: 401 without a known key, 403 for a model outside its allow-list, known by name only."""

from __future__ import annotations

import hashlib
import logging

import aiohttp
import pytest

from router.errors import RouterError
from router.keys import bearer
from router.routes import parse
from tests.fixtures_proxy import providers_for

TEAM_SECRET = "sk-team-0123456789abcdef"
CI_SECRET = "sk-ci-fedcba9876543210"


def doc(vendors, keys: dict | None) -> dict:
    out = {
        "providers": providers_for([vendors.openai]),
        "models": {name: {"targets": [{"provider": "openai", "model": "m-1"}]}
                   for name in ("fast", "llama-8b", "llama-70b", "secret-model")},
    }
    if keys is not None:
        out["keys"] = keys
    return out


KEYS = {
    "team": {"key_env": "ROUTER_TEST_TEAM_KEY", "models": ["fast", "llama-*"]},
    "ci": {"key_sha256": hashlib.sha256(CI_SECRET.encode()).hexdigest()},
}


@pytest.fixture
async def proxy(vendors, start_proxy, monkeypatch):
    monkeypatch.setenv("ROUTER_TEST_TEAM_KEY", TEAM_SECRET)
    return await start_proxy(doc(vendors, KEYS), vendors=vendors)


async def post(url: str, body: dict, authorization: str | None) -> tuple[int, dict]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/completions", json=body, headers=headers) as r:
            return r.status, await r.json()


CASES = [
    # (authorization, body, status, error type, error code, param)
    (None, {"model": "fast", "prompt": "hi"}, 401, "authentication_error", "missing_api_key", None),
    ("", {"model": "fast", "prompt": "hi"}, 401, "authentication_error", "missing_api_key", None),
    (f"Basic {TEAM_SECRET}", {"model": "fast", "prompt": "hi"}, 401, "authentication_error", "missing_api_key", None),
    ("Bearer ", {"model": "fast", "prompt": "hi"}, 401, "authentication_error", "missing_api_key", None),
    ("Bearer sk-wrong", {"model": "fast", "prompt": "hi"}, 401, "authentication_error", "invalid_api_key", None),
    (f"Bearer {TEAM_SECRET}x", {"model": "fast", "prompt": "hi"}, 401, "authentication_error", "invalid_api_key", None),
    (f"Bearer {TEAM_SECRET}", {"model": "fast", "prompt": "hi"}, 200, None, None, None),
    (f"bearer  {TEAM_SECRET} ", {"model": "fast", "prompt": "hi"}, 200, None, None, None),
    (f"Bearer {TEAM_SECRET}", {"model": "llama-70b", "prompt": "hi"}, 200, None, None, None),
    (f"Bearer {TEAM_SECRET}", {"model": "secret-model", "prompt": "hi"}, 403, "permission_error",
     "model_not_allowed", "model"),
    (f"Bearer {TEAM_SECRET}", {"model": "fast", "models": ["secret-model"], "prompt": "hi"}, 403,
     "permission_error", "model_not_allowed", "models"),
    # The allow-list is checked before the model's existence: no probing of names.
    (f"Bearer {TEAM_SECRET}", {"model": "gpt-4", "prompt": "hi"}, 403, "permission_error", "model_not_allowed",
     "model"),
    (f"Bearer {CI_SECRET}", {"model": "secret-model", "prompt": "hi"}, 200, None, None, None),
    (f"Bearer {CI_SECRET}", {"model": "gpt-4", "prompt": "hi"}, 404, "invalid_request_error", "model_not_found",
     "model"),
    # A key is checked before the body is even read.
    (None, {"prompt": "no model"}, 401, "authentication_error", "missing_api_key", None),
]


@pytest.mark.parametrize("authorization,body,status,kind,code,param", CASES)
async def test_request_is_answered_by_its_key(proxy, authorization, body, status, kind, code, param):
    got, answer = await post(proxy.url, body, authorization)
    assert got == status, answer
    if status != 200:
        assert answer["error"]["type"] == kind
        assert answer["error"]["code"] == code
        assert answer["error"]["param"] == param
        assert TEAM_SECRET not in str(answer) and CI_SECRET not in str(answer)


async def test_key_is_known_by_its_name_in_metrics_and_logs_never_by_its_secret(proxy, caplog):
    caplog.set_level(logging.INFO)
    for authorization in (f"Bearer {TEAM_SECRET}", f"Bearer {CI_SECRET}", "Bearer sk-wrong-one", None):
        await post(proxy.url, {"model": "fast", "prompt": "hi"}, authorization)
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/metrics") as r:
            metrics = await r.text()
    assert 'key="team"' in metrics and 'key="ci"' in metrics
    assert 'key="anonymous"' in metrics   # the refused ones: no name to give them
    for secret in (TEAM_SECRET, CI_SECRET, "sk-wrong-one"):
        assert secret not in metrics
        assert secret not in caplog.text
    assert '"key":"team"' in caplog.text


async def test_models_list_shows_only_what_the_key_may_use(proxy):
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/v1/models", headers={"Authorization": f"Bearer {TEAM_SECRET}"}) as r:
            team = sorted(m["id"] for m in (await r.json())["data"])
        async with s.get(proxy.url + "/v1/models") as r:
            anonymous = r.status, (await r.json())["error"]["type"]
    assert team == ["fast", "llama-70b", "llama-8b"]
    assert anonymous == (401, "authentication_error")


async def test_model_by_id_is_found_only_when_the_key_may_use_it(proxy):
    team = {"Authorization": f"Bearer {TEAM_SECRET}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/v1/models/llama-8b", headers=team) as r:
            assert (r.status, (await r.json())["id"]) == (200, "llama-8b")
        async with s.get(proxy.url + "/v1/models/secret-model", headers=team) as r:
            assert (r.status, (await r.json())["error"]["code"]) == (404, "model_not_found")
        async with s.get(proxy.url + "/v1/models/llama-8b") as r:
            assert r.status == 401


async def test_without_a_keys_section_the_proxy_is_open_and_says_so(vendors, start_proxy, caplog):
    caplog.set_level(logging.WARNING)
    proxy = await start_proxy(doc(vendors, None), vendors=vendors)
    status, _ = await post(proxy.url, {"model": "secret-model", "prompt": "hi"}, None)
    assert status == 200
    loud = [r for r in caplog.records if r.levelno == logging.WARNING and "proxy is OPEN" in r.getMessage()]
    assert loud, caplog.text


async def test_key_whose_env_var_is_unset_cannot_authenticate(vendors, start_proxy, monkeypatch):
    monkeypatch.delenv("ROUTER_TEST_TEAM_KEY", raising=False)
    proxy = await start_proxy(doc(vendors, {"team": {"key_env": "ROUTER_TEST_TEAM_KEY"}}), vendors=vendors)
    status, answer = await post(proxy.url, {"model": "fast", "prompt": "hi"}, "Bearer ")
    assert (status, answer["error"]["code"]) == (401, "missing_api_key")
    status, answer = await post(proxy.url, {"model": "fast", "prompt": "hi"}, "Bearer anything")
    assert (status, answer["error"]["code"]) == (401, "invalid_api_key")


BEARER = [
    (None, None), ("", None), ("Bearer", None), ("Bearer ", None), ("Token abc", None),
    ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER  abc ", "abc"),
]


@pytest.mark.parametrize("header,token", BEARER)
def test_bearer_token_is_read_from_the_authorization_header(header, token):
    assert bearer(header) == token


def test_ring_keeps_digests_only_and_looks_keys_up_by_them():
    table = parse({"providers": {"p": {"kind": "openai", "base_url": "http://x"}},
                   "models": {"m": {"targets": [{"provider": "p", "model": "a"}]}},
                   "keys": {"k": {"key_env": "K"}}}, environ={"K": TEAM_SECRET})
    ring = table.keys
    assert ring is not None
    assert TEAM_SECRET not in repr(vars(ring))
    assert ring.authenticate(f"Bearer {TEAM_SECRET}").name == "k"
    with pytest.raises(RouterError) as info:
        ring.authenticate(f"Bearer {TEAM_SECRET[:-1]}")
    assert info.value.status == 401
