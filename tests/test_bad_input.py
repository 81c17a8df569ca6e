"""Bad input gets a clear 4xx in OpenAI's error shape, naming the parameter; never a 500."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.fixtures_proxy import providers_for, single_target_models


CEILING = 4096          # settings.max_output_tokens of the proxy below
SMALL_CEILING = 100     # models.small.max_output_tokens


@pytest.fixture
async def proxy(vendors, start_proxy):
    models = single_target_models(vendors)
    models["small"] = {"max_output_tokens": SMALL_CEILING, "limits": {"tpm": 1000},
                       "targets": [{"provider": "openai", "model": "m-1"}]}
    doc = {"providers": providers_for(vendors), "models": models,
           "settings": {"max_body_bytes": 2048, "max_output_tokens": CEILING}}
    return await start_proxy(doc, vendors=vendors)


CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
P = b'"model": "via-openai", "prompt": "x"'
M = b'"model": "via-openai", "messages": [{"role": "user", "content": "x"}]'
# The README's "Bad input" table is this table: test_readme_bad_input_table_matches_the_tests
# checks each row there against a case here (its first column), and the other way round.
CASES = [
    # (what, path, raw body, status, code, param, message fragment)
    ("body not JSON", COMP, b"{not json", 400, None, None, "not valid JSON"),
    ("empty body", COMP, b"", 400, None, None, "empty"),
    ("body not a JSON object", COMP, b"[1, 2]", 400, None, None, "JSON object"),
    ("invalid UTF-8 in the body", COMP, b'{' + P + b', "user": "\xff"}', 400, None, None, "not valid JSON"),
    ("a number too large for a double", COMP, b'{' + P + b', "seed": 1e400}', 400, None, None, "not valid JSON"),
    ("no `model`", COMP, b'{"prompt": "x"}', 400, None, "model", "Missing required parameter: 'model'"),
    ("no `prompt`", COMP, b'{"model": "via-openai"}', 400, None, "prompt", "Missing required parameter: 'prompt'"),
    ("no `messages`", CHAT, b'{"model": "via-openai"}', 400, None, "messages",
     "Missing required parameter: 'messages'"),
    ("empty `messages`", CHAT, b'{"model": "via-openai", "messages": []}', 400, None, "messages", "non-empty list"),
    ("unknown message role", CHAT, b'{"model": "via-openai", "messages": [{"role": "robot", "content": "x"}]}',
     400, None, "messages[0].role", "robot"),
    ("`model` not a string", COMP, b'{"model": 7, "prompt": "x"}', 400, None, "model", "valid string"),
    ("`prompt` of the wrong type", COMP, b'{"model": "via-openai", "prompt": {"a": 1}}', 400, None, "prompt",
     "Invalid type for 'prompt'"),
    ("`temperature` out of range", COMP, b'{' + P + b', "temperature": 3}', 400, None, "temperature",
     "less than or equal to 2"),
    ("`temperature` a string", COMP, b'{' + P + b', "temperature": "hot"}', 400, None, "temperature", "valid number"),
    ("`top_p` out of range", COMP, b'{' + P + b', "top_p": 1.5}', 400, None, "top_p", "less than or equal to 1"),
    ("`max_tokens` below 1", COMP, b'{' + P + b', "max_tokens": 0}', 400, None, "max_tokens",
     "greater than or equal to 1"),
    ("`max_tokens` a string", COMP, b'{' + P + b', "max_tokens": "10"}', 400, None, "max_tokens", "valid integer"),
    ("`max_tokens` not a 64-bit integer", COMP, b'{' + P + b', "max_tokens": 100000000000000000000000}', 400, None,
     "max_tokens", "valid integer"),
    ("`max_tokens` above settings.max_output_tokens", COMP, b'{' + P + b', "max_tokens": 1000000000000}', 400,
     "integer_above_max_value", "max_tokens", f"above the {CEILING} tokens"),
    ("`max_completion_tokens` above settings.max_output_tokens", CHAT, b'{' + M + b', "max_completion_tokens": 4097}',
     400, "integer_above_max_value", "max_completion_tokens", "lower 'max_completion_tokens'"),
    ("`max_tokens` above the model's max_output_tokens", COMP, b'{"model": "small", "prompt": "x", "max_tokens": 101}',
     400, "integer_above_max_value", "max_tokens", f"{SMALL_CEILING} tokens the model 'small'"),
    ("`stream` not a boolean", COMP, b'{' + P + b', "stream": "yes"}', 400, None, "stream", "valid boolean"),
    ("`n` below 1", COMP, b'{' + P + b', "n": 0}', 400, None, "n", "greater than or equal to 1"),
    ("`presence_penalty` out of range", COMP, b'{' + P + b', "presence_penalty": -3}', 400, None, "presence_penalty",
     "-2"),
    ("more than 4 `stop` sequences", COMP, b'{' + P + b', "stop": ["a", "b", "c", "d", "e"]}', 400, None, "stop",
     None),
    ("`stream_options` without `stream`", COMP, b'{' + P + b', "stream_options": {"include_usage": true}}', 400,
     None, "stream_options", "only allowed when 'stream' is true"),
    ("unknown `model`", COMP, b'{"model": "no-such-model", "prompt": "x"}', 404, "model_not_found", "model",
     "does not exist"),
    ("unknown name in `models`", COMP, b'{' + P + b', "models": ["nope"]}', 404, "model_not_found", "models",
     "'nope' does not exist"),
    ("body over settings.max_body_bytes", COMP, orjson.dumps({"model": "via-openai", "prompt": "x" * 4096}), 413,
     "request_too_large", None, "larger than"),
]


@pytest.mark.parametrize(("what", "path", "raw", "status", "code", "param", "fragment"), CASES,
                         ids=[c[0] for c in CASES])
async def test_bad_request_gets_openai_error_with_param(what, path, raw, status, code, param, fragment, proxy,
                                                        vendors):
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + path, data=raw, headers={"Content-Type": "application/json"}) as r:
            body = await r.json()
            assert r.status == status, body
            assert r.headers["x-request-id"]
            assert r.headers["x-router-attempts"] == "0"
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["param"], err["code"]) == (param, code)
    if fragment:
        assert fragment in err["message"]
    assert all(not v.control.requests for v in vendors), "a bad request must not reach a vendor"


async def test_server_stays_healthy_through_a_burst_of_bad_input(proxy, vendors, caplog):
    caplog.set_level(logging.WARNING, logger="router")
    async with aiohttp.ClientSession() as s:
        async def send(path: str, raw: bytes) -> int:
            async with s.post(proxy.url + path, data=raw, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(send(path, raw) for _ in range(10) for _, path, raw, *_ in CASES))
        assert all(400 <= st < 500 for st in statuses)
        async with s.get(proxy.url + "/healthz") as r:
            assert r.status == 200
        async with s.post(proxy.url + COMP, json={"model": "via-openai", "prompt": "x"}) as r:
            assert r.status == 200
    assert not [r for r in caplog.records if r.name.startswith("router") and r.levelno >= logging.ERROR], caplog.text


async def test_output_ceiling_is_checked_before_anything_is_reserved(proxy, vendors):
    """`small` has tpm 1000: were 10**12 tokens reserved first, the answer would be a 429."""
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.post(proxy.url + COMP, json={"model": "small", "prompt": "x", "max_tokens": 10**12}) as r:
                assert r.status == 400 and (await r.json())["error"]["param"] == "max_tokens"
        async with s.post(proxy.url + COMP, json={"model": "small", "prompt": "x", "max_tokens": SMALL_CEILING}) as r:
            assert r.status == 200, await r.text()
            # only this request's estimate (1 prompt token + 100) was taken from the window
            assert r.headers["x-ratelimit-remaining-tokens"] == str(1000 - 1 - SMALL_CEILING)


HTTP_CASES = [
    # (what, method, path, status, code)
    ("unknown path", "GET", "/v1/nothing", 404, "not_found"),
    ("unknown API version", "POST", "/v2/completions", 404, "not_found"),
    ("GET on a POST endpoint", "GET", COMP, 405, "method_not_allowed"),
    ("PUT on a POST endpoint", "PUT", CHAT, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("what", "method", "path", "status", "code"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
async def test_unknown_path_and_wrong_method_are_openai_errors(what, method, path, status, code, proxy):
    async with aiohttp.ClientSession() as s:
        async with s.request(method, proxy.url + path) as r:
            assert r.status == status
            body = await r.json()
            assert body["error"]["code"] == code and body["error"]["message"] and body["error"]["param"] is None
            assert r.headers["x-request-id"]


async def test_models_lists_public_names_in_openai_list_shape(proxy, vendors):
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/v1/models") as r:
            body = await r.json()
    assert body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == sorted([f"via-{v.kind}" for v in vendors] + ["small"])
    assert all(m["object"] == "model" for m in body["data"])


async def test_integral_float_is_taken_as_its_integer_and_sent_on_as_one(proxy, vendors):
    raw = b'{"model": "via-openai", "prompt": [[1.0, 2]], "max_tokens": 5.0, "n": 2.0, "seed": -3.0}'
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + COMP, data=raw, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200, await r.text()
    sent = vendors.openai.control.requests[0].body
    assert (sent["max_tokens"], sent["n"], sent["seed"], sent["prompt"]) == (5, 2, -3, [[1, 2]])
    assert all(type(v) is int for v in (sent["max_tokens"], sent["n"], sent["seed"], *sent["prompt"][0]))


async def test_model_by_id_is_its_list_entry_or_an_openai_404(proxy):
    async with proxy.client() as client:
        listed = {m.id: m for m in (await client.models.list()).data}
        one = await client.models.retrieve("via-openai")
    assert one == listed["via-openai"]
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/v1/models/no/such-model") as r:
            err = (await r.json())["error"]
            assert (r.status, err["code"], err["param"]) == (404, "model_not_found", "model")
            assert "no/such-model" in err["message"]


async def test_health_and_readiness(proxy):
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/healthz") as r:
            assert r.status == 200
        async with s.get(proxy.url + "/readyz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ready"


CHUNKED_ROW = ("chunked body over settings.max_body_bytes", 413, "request_too_large", None)


async def test_chunked_body_over_the_limit_is_refused_without_reading_it_all(proxy):
    async def body():
        for _ in range(1000):
            yield b"x" * 1024   # 1 MB in chunks, no Content-Length; the limit is 2048 bytes
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + COMP, data=body(), headers={"Content-Type": "application/json"}) as r:
            err = (await r.json())["error"]
            assert (r.status, err["code"], err["param"]) == CHUNKED_ROW[1:]


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


AUTH_ROW = ("non-UTF-8 bytes in `Authorization` (keys on)", 401, "invalid_api_key", None)


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
        err = answer["error"]
        assert err["type"] == "authentication_error" and (status, err["code"], err["param"]) == AUTH_ROW[1:], answer
    status, _ = await raw_request(proxy.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: \xc0\xaf\r\n")
    assert status == 401
    records = [r for r in caplog.records if r.name.startswith("router")]
    assert not [r for r in records if r.levelno >= logging.WARNING or r.exc_info], caplog.text
    assert len(records) <= 3, "at most the access log line per request"
    assert not vendors.openai.control.requests


def readme_rows() -> list[tuple[str, int, str | None, str | None]]:
    """The rows of the README's "Bad input" table: (what, status, code, param)."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("\n## Bad input\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[1].isdigit():
            continue
        none = lambda c: None if c == "—" else c.strip("`")  # noqa: E731
        rows.append((cells[0], int(cells[1]), none(cells[2]), none(cells[3])))
    return rows


def rows_under_test() -> list[tuple[str, int, str | None, str | None]]:
    return ([(what, status, code, param) for what, _, _, status, code, param, _ in CASES]
            + [(what, status, code, None) for what, _, _, status, code in HTTP_CASES] + [CHUNKED_ROW, AUTH_ROW])


def test_readme_bad_input_table_matches_the_tests():
    readme, tested = readme_rows(), rows_under_test()
    assert len(readme) == len(set(readme)), "a row twice in the README"
    assert sorted(set(tested) - set(readme)) == [], "tested here but missing from the README's Bad input table"
    assert sorted(set(readme) - set(tested)) == [], "in the README's Bad input table but tested nowhere here"
