"""Bad input gets a clear 4xx in OpenAI's error shape, naming the parameter; never a 500."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson
import pytest

from tests.fixtures_proxy import providers_for, single_target_models


@pytest.fixture
async def proxy(vendors, start_proxy):
    doc = {"providers": providers_for(vendors), "models": single_target_models(vendors),
           "settings": {"max_body_bytes": 2048}}
    return await start_proxy(doc, vendors=vendors)


CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
CASES = [
    # (path, raw body, status, param, message fragment)
    (COMP, b"{not json", 400, None, "not valid JSON"),
    (COMP, b"", 400, None, "empty"),
    (COMP, b"[1, 2]", 400, None, "JSON object"),
    (COMP, b'{"prompt": "x"}', 400, "model", "Missing required parameter: 'model'"),
    (COMP, b'{"model": "via-openai"}', 400, "prompt", "Missing required parameter: 'prompt'"),
    (CHAT, b'{"model": "via-openai"}', 400, "messages", "Missing required parameter: 'messages'"),
    (CHAT, b'{"model": "via-openai", "messages": []}', 400, "messages", "non-empty list"),
    (CHAT, b'{"model": "via-openai", "messages": [{"role": "robot", "content": "x"}]}', 400,
     "messages[0].role", "robot"),
    (COMP, b'{"model": 7, "prompt": "x"}', 400, "model", "valid string"),
    (COMP, b'{"model": "via-openai", "prompt": {"a": 1}}', 400, "prompt", "Invalid type for 'prompt'"),
    (COMP, b'{"model": "via-openai", "prompt": "x", "temperature": 3}', 400, "temperature", "less than or equal to 2"),
    (COMP, b'{"model": "via-openai", "prompt": "x", "temperature": "hot"}', 400, "temperature", "valid number"),
    (COMP, b'{"model": "via-openai", "prompt": "x", "top_p": 1.5}', 400, "top_p", "less than or equal to 1"),
    (COMP, b'{"model": "via-openai", "prompt": "x", "max_tokens": 0}', 400, "max_tokens", "greater than or equal to 1"),
    (COMP, b'{"model": "via-openai", "prompt": "x", "max_tokens": "10"}', 400, "max_tokens", "valid integer"),
    (COMP, b'{"model": "via-openai", "prompt": "x", "stream": "yes"}', 400, "stream", "valid boolean"),
    (COMP, b'{"model": "via-openai", "prompt": "x", "n": 0}', 400, "n", "greater than or equal to 1"),
    (COMP, b'{"model": "via-openai", "prompt": "x", "presence_penalty": -3}', 400, "presence_penalty", "-2"),
    (COMP, b'{"model": "via-openai", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}', 400, "stop", None),
    (COMP, b'{"model": "via-openai", "prompt": "x", "stream_options": {"include_usage": true}}', 400,
     "stream_options", "only allowed when 'stream' is true"),
    (COMP, b'{"model": "no-such-model", "prompt": "x"}', 404, "model", "does not exist"),
    (COMP, b'{"model": "via-openai", "models": ["nope"], "prompt": "x"}', 404, "models", "'nope' does not exist"),
    (COMP, orjson.dumps({"model": "via-openai", "prompt": "x" * 4096}), 413, None, "larger than"),
]


@pytest.mark.parametrize(("path", "raw", "status", "param", "fragment"), CASES)
async def test_bad_request_gets_openai_error_with_param(path, raw, status, param, fragment, proxy, vendors):
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + path, data=raw, headers={"Content-Type": "application/json"}) as r:
            body = await r.json()
            assert r.status == status, body
            assert r.headers["x-request-id"]
            assert r.headers["x-router-attempts"] == "0"
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    if fragment:
        assert fragment in err["message"]
    assert all(not v.control.requests for v in vendors), "a bad request must not reach a vendor"


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v1/nothing", 404, "not_found"),
    ("POST", "/v2/completions", 404, "not_found"),
    ("GET", COMP, 405, "method_not_allowed"),
    ("PUT", CHAT, 405, "method_not_allowed"),
])
async def test_unknown_path_and_wrong_method_are_openai_errors(method, path, status, code, proxy):
    async with aiohttp.ClientSession() as s:
        async with s.request(method, proxy.url + path) as r:
            assert r.status == status
            body = await r.json()
            assert body["error"]["code"] == code and body["error"]["message"]
            assert r.headers["x-request-id"]


async def test_models_lists_public_names_in_openai_list_shape(proxy, vendors):
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/v1/models") as r:
            body = await r.json()
    assert body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == sorted(f"via-{v.kind}" for v in vendors)
    assert all(m["object"] == "model" for m in body["data"])


async def test_health_and_readiness(proxy):
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/healthz") as r:
            assert r.status == 200
        async with s.get(proxy.url + "/readyz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ready"


async def test_chunked_body_over_the_limit_is_refused_without_reading_it_all(proxy):
    async def body():
        for _ in range(1000):
            yield b"x" * 1024   # 1 MB in chunks, no Content-Length; the limit is 2048 bytes
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + COMP, data=body(), headers={"Content-Type": "application/json"}) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"


async def test_wrong_method_names_the_allowed_one(proxy):
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + COMP) as r:
            assert r.status == 405 and r.headers["Allow"] == "POST"


async def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """One HTTP/1.1 request written byte for byte (clients refuse to send non-UTF-8 headers)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    raw = await reader.read()
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), orjson.loads(rest.partition(b"\r\n\r\n")[2])


async def test_non_utf8_authorization_is_a_401_without_a_traceback(vendors, start_proxy, monkeypatch, caplog):
    monkeypatch.setenv("ROUTER_TEST_TEAM_KEY", "sk-team-secret")
    doc = {"providers": providers_for([vendors.openai]), "models": single_target_models([vendors.openai]),
           "keys": {"team": {"key_env": "ROUTER_TEST_TEAM_KEY"}}}
    proxy = await start_proxy(doc, vendors=[vendors.openai])
    caplog.set_level(logging.INFO)
    body = b'{"model": "via-openai", "prompt": "x"}'
    for _ in range(3):
        status, answer = await raw_request(
            proxy.url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Authorization: Bearer sk-\xff\xfe\xc3(\r\n", body)
        assert (status, answer["error"]["type"], answer["error"]["code"]) == (
            401, "authentication_error", "invalid_api_key"), answer
    status, _ = await raw_request(proxy.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: \xc0\xaf\r\n")
    assert status == 401
    records = [r for r in caplog.records if r.name.startswith("router")]
    assert not [r for r in records if r.levelno >= logging.WARNING or r.exc_info], caplog.text
    assert len(records) <= 3, "at most the access log line per request"
    assert not vendors.openai.control.requests
