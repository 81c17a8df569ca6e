"""`router demo` prints curl commands to try; each one, sent as printed, gets what it promises:
a chat answer, a fallback, a tool call and a JSON answer."""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import sys
from typing import Any

import aiohttp
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl_commands(printed: str) -> list[tuple[str, dict[str, Any]]]:
    """(url, body) of each `curl ... -d '...'` command in the demo's banner."""
    out = []
    for command in printed.replace("\\\n", " ").splitlines():
        words = shlex.split(command)
        if words[:1] == ["curl"] and "-d" in words:
            url = next(w for w in words if w.startswith("http://"))
            out.append((url, json.loads(words[words.index("-d") + 1])))
    return out


async def read_banner(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    lines = []
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode()
        if not line:
            pytest.fail("router demo exited before printing its examples:\n" + "".join(lines))
        lines.append(line)
        if "Ctrl-C" in line:
            return "".join(lines)


async def test_demo_examples_show_a_chat_a_fallback_a_tool_call_and_a_json_answer():
    port = free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "router", "demo", "--port", str(port),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        commands = curl_commands(await read_banner(proc))
        assert len(commands) == 4
        answers = []
        async with aiohttp.ClientSession() as s:
            for url, body in commands:
                async with s.post(url, json=body) as r:
                    assert r.status == 200, await r.text()
                    answers.append(await r.text())
    finally:
        proc.terminate()
        await proc.wait()
    chat, stream, tool, structured = answers
    assert json.loads(chat)["choices"][0]["message"]["content"].startswith("[cogito:")
    assert "[interactive:" in stream and stream.rstrip().endswith("data: [DONE]")
    (call,) = json.loads(tool)["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Weather in Paris?"}
    assert json.loads(json.loads(structured)["choices"][0]["message"]["content"]) == {
        "city": "Name a city", "population": 1}
