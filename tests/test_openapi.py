"""GET /openapi.json describes the proxy's own API, and schemathesis holds the proxy to it.

The fuzzing run is bounded (ROUTER_FUZZ_EXAMPLES per operation, a fixed seed unless
ROUTER_FUZZ_SEED is set) and goes through the real proxy to a contract-checked stand-in:
a rule routes every request to one model, so schema-valid bodies are served, not 404'd.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import jsonschema
import pytest

from tests.fixtures_proxy import providers_for

EXAMPLES = int(os.environ.get("ROUTER_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("ROUTER_FUZZ_SEED", "20261129")


@pytest.fixture
async def proxy(vendors, start_proxy):
    doc = {"providers": providers_for([vendors.openai]),
           "models": {"m": {"targets": [{"provider": "openai", "model": "m-1"}]}},
           "rules": [{"name": "everything-to-m", "route": "m"}],
           # the ceiling is routes.yaml's to set; here it is as high as the document allows
           "settings": {"max_output_tokens": 2**63 - 1}}
    return await start_proxy(doc, vendors=[vendors.openai])


async def get_document(url: str) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/openapi.json") as r:
            assert r.status == 200 and r.content_type == "application/json"
            return await r.json()


async def test_openapi_document_describes_both_generation_endpoints_models_and_the_error_shape(proxy):
    doc = await get_document(proxy.url)
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    assert set(paths) >= {"/v1/completions", "/v1/chat/completions", "/v1/models"}
    schemas = doc["components"]["schemas"]
    for path, body in [("/v1/completions", "CompletionRequest"), ("/v1/chat/completions", "ChatRequest")]:
        op = paths[path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + body)
        assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    assert set(schemas["Error"]["properties"]["error"]["required"]) == {"message", "type", "param", "code"}
    assert "messages" in schemas["ChatRequest"]["required"] and "prompt" in schemas["CompletionRequest"]["required"]
    # every schema in it is itself valid JSON Schema (2020-12, what OpenAPI 3.1 uses)
    for name, schema in schemas.items():
        jsonschema.Draft202012Validator.check_schema(schema)


async def test_schemathesis_finds_no_5xx_and_no_response_outside_the_document(proxy, vendors, tmp_path):
    st = Path(sys.executable).parent / "st"
    proc = await asyncio.create_subprocess_exec(
        str(st), "run", proxy.url + "/openapi.json", "--max-examples", str(EXAMPLES), "--seed", SEED,
        "--checks", "all", "--request-timeout", "20", "--workers", "1", "--no-color",
        "--suppress-health-check", "too_slow",   # a loaded CI machine is slow, not wrong
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert " passed" in text and "generated" in text, text[-2000:]
    assert vendors.openai.control.requests, "schema-valid requests were served, not all refused"
