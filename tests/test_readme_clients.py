"""The README's "Using it from LangChain / LiteLLM / the OpenAI SDKs" code, run as written against
the proxy (the demo's routes, in front of the contract-checked stand-ins), so the docs cannot
drift from what works. Only the address changes: localhost:8080 becomes the test proxy's.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_proxy import RunningProxy
from tests.test_clients_node import NODE_DIR, run_node

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Using it from LangChain / LiteLLM / the OpenAI SDKs"
README_URL = "http://localhost:8080"

pytestmark = pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")


def snippet(language: str) -> str:
    """The one `language` code block of the README's clients section."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    blocks = re.findall(rf"```{language}\n(.*?)```", text[start:end if end > 0 else None], re.S)
    assert len(blocks) == 1, f"expected one ```{language} block under {SECTION!r}, found {len(blocks)}"
    return blocks[0]


def test_readme_has_the_clients_snippets() -> None:
    python, js = snippet("python"), snippet("js")
    for client in ("OpenAI(", "ChatOpenAI(", ".bind_tools(", ".with_structured_output(", "litellm.completion(",
                   "litellm.text_completion("):
        assert client in python
    assert 'from "openai"' in js and README_URL in python and README_URL in js


async def test_readme_python_snippet_runs_against_the_proxy(vendors, demo_proxy: RunningProxy) -> None:
    code = snippet("python").replace(README_URL, demo_proxy.url)
    printed: list[str] = []
    namespace: dict[str, Any] = {"__name__": "readme_snippet",
                                 "print": lambda *a: printed.append(" ".join(map(str, a)))}
    await asyncio.to_thread(exec, compile(code, f"{README.name}:{SECTION}", "exec"), namespace)
    assert printed[:2] == ["Hello from the stand-in."] * 2
    assert printed[2] == "get_weather {'city': 'Weather in Paris?'}"
    assert printed[3] == "city='Name a city' population=1"
    assert printed[4:] == ["Hello from the stand-in."] * 2
    assert vendors.poolside.control.requests[-1].body["prompt"] == "def fib(n):"


async def test_readme_node_snippet_runs_against_the_proxy(vendors, demo_proxy: RunningProxy) -> None:
    script = NODE_DIR / f".readme-{os.getpid()}.mjs"  # under tests/node, so `openai` resolves
    script.write_text(snippet("js").replace(README_URL, demo_proxy.url), encoding="utf-8")
    try:
        code, out, err = await run_node(script, demo_proxy)
    finally:
        script.unlink(missing_ok=True)
    assert code == 0, err
    assert out == "Hello from the stand-in.\nHello from the stand-in."
