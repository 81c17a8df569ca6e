"""The official OpenAI Node SDK (`openai` on npm, installed into tests/node by .ci/run) against
the proxy: each test runs one scenario of tests/node/clients.mjs and reads what the SDK made
of the answer. Without node or the SDK a local run skips these; under CI=true they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fixtures_proxy import RunningProxy

NODE_DIR = Path(__file__).resolve().parent / "node"


def node_or_skip() -> str:
    """The node binary; a clear skip locally when it or the SDK is missing, a failure in CI."""
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not installed (.ci/run installs it: apt-get install nodejs npm)"
    elif not (NODE_DIR / "node_modules" / "openai" / "package.json").is_file():
        missing = "the openai npm package is not installed (cd tests/node && npm ci)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Node SDK tests: {missing}")
        pytest.skip(missing)
    assert node is not None
    return node


async def run_node(script: Path, proxy: RunningProxy, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        node_or_skip(), str(script), *args, cwd=NODE_DIR, env={**os.environ, "ROUTER_URL": proxy.url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"node {script.name} {' '.join(args)} did not finish in 60 s")
    return proc.returncode or 0, out.decode(), err.decode()


async def scenario(proxy: RunningProxy, name: str) -> Any:
    code, out, err = await run_node(NODE_DIR / "clients.mjs", proxy, name)
    assert code == 0, f"node scenario {name} failed:\n{err}"
    return orjson.loads(out.strip().splitlines()[-1])


async def test_node_sdk_chat(vendors, demo_proxy) -> None:
    got = await scenario(demo_proxy, "chat")
    assert got["content"] == "Hello from the stand-in." and got["model"] == "kimi"
    assert got["id"] and got["usage"]["total_tokens"] == 12


async def test_node_sdk_chat_stream(vendors, demo_proxy) -> None:
    got = await scenario(demo_proxy, "chat_stream")
    assert got == {"pieces": 3, "content": "Hello from the stand-in."}


async def test_node_sdk_completion(vendors, demo_proxy) -> None:
    got = await scenario(demo_proxy, "completion")
    assert got["text"] == "Hello from the stand-in." and got["id"]


async def test_node_sdk_completion_stream_with_usage(vendors, demo_proxy) -> None:
    got = await scenario(demo_proxy, "completion_stream")
    assert got["text"] == "Hello from the stand-in."
    assert got["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12,
                            "prompt_tokens_details": {"cached_tokens": 2}}


async def test_node_sdk_completion_on_a_poolside_model(vendors, demo_proxy) -> None:
    assert (await scenario(demo_proxy, "poolside_completion"))["text"] == "Hello from the stand-in."


async def test_node_sdk_poolside_answer_has_an_id(vendors, demo_proxy) -> None:
    got = await scenario(demo_proxy, "poolside_completion")
    assert isinstance(got["id"], str) and got["id"]


@pytest.mark.parametrize("name", ["tool_call", "tool_call_stream"])
async def test_node_sdk_tool_call(vendors, demo_proxy, name: str) -> None:
    got = await scenario(demo_proxy, name)
    assert got["finish_reason"] == "tool_calls"
    (call,) = got["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Hello"}'}


async def test_node_sdk_json_schema_answer(vendors, demo_proxy) -> None:
    assert (await scenario(demo_proxy, "json_schema"))["parsed"] == {"name": "Hello", "age": 1}


async def test_node_sdk_n_choices(vendors, demo_proxy) -> None:
    assert (await scenario(demo_proxy, "n_choices"))["indexes"] == [0, 1]


async def test_node_sdk_lists_models(vendors, demo_proxy) -> None:
    assert (await scenario(demo_proxy, "models"))["ids"] == ["fallback-demo", "kimi", "llama", "malibu"]


async def test_node_sdk_error_is_its_typed_exception(vendors, demo_proxy) -> None:
    got = await scenario(demo_proxy, "error")
    assert got == {"thrown": True, "cls": "NotFoundError", "status": 404, "code": "model_not_found",
                   "type": "invalid_request_error"}
