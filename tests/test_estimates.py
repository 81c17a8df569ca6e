"""What a request reserves against tpm limits before it is sent: its prompt estimate (text,
images, tool definitions) plus its full output, once per choice (`n`, `best_of`)."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from router.normalize import IMAGE_TOKENS, IMAGE_TOKENS_LOW
from tests.fixtures_proxy import providers_for

TPM = 1_000_000
TEXT = "x" * 40                      # 10 tokens at four characters a token
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Today's weather in a city.",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


def image(detail: str | None = None) -> dict:
    url = {"url": "https://example.com/cat.png"}
    if detail:
        url["detail"] = detail
    return {"type": "image_url", "image_url": url}


def chat(*parts: dict, **extra) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": TEXT}, *parts]}],
            "max_tokens": 10, **extra}


CASES = [
    # (name, endpoint, body without model, tokens reserved)
    ("prompt_and_output", "completions", {"prompt": TEXT, "max_tokens": 10}, 11 + 10),
    ("n_multiplies_output", "completions", {"prompt": TEXT, "max_tokens": 10, "n": 3}, 11 + 30),
    ("best_of_multiplies_output", "completions", {"prompt": TEXT, "max_tokens": 10, "n": 2, "best_of": 4}, 11 + 40),
    ("chat_n_multiplies_output", "chat", chat(n=2), 14 + 20),
    ("image_part_adds_prompt_tokens", "chat", chat(image()), 14 + IMAGE_TOKENS + 10),
    ("low_detail_image_adds_fewer", "chat", chat(image("low")), 14 + IMAGE_TOKENS_LOW + 10),
    ("tool_definitions_add_prompt_tokens", "chat", chat(tools=TOOLS), 14 + len(orjson.dumps(TOOLS)) // 4 + 10),
]


@pytest.mark.parametrize(("name", "endpoint", "body", "reserved"), CASES, ids=[c[0] for c in CASES])
async def test_tpm_reservation_counts_choices_images_and_tools(name, endpoint, body, reserved, vendors,
                                                                start_proxy):
    doc = {"providers": providers_for([vendors.openai]),
           "models": {"m": {"limits": {"tpm": TPM}, "targets": [{"provider": "openai", "model": "m-1"}]}}}
    proxy = await start_proxy(doc, vendors=[vendors.openai])
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + path, json={"model": "m", **body}) as r:
            assert r.status == 200, await r.text()
            assert int(r.headers["x-ratelimit-remaining-tokens"]) == TPM - reserved
