"""The `router` command: check says exactly what is wrong and where; demo serves out of the box."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import orjson
import pytest

GOOD = """
providers:
  nebius: {kind: nebius, base_url: "https://api.tokenfactory.nebius.com", api_key_env: NEBIUS_API_KEY}
models:
  fast:
    targets:
      - {provider: nebius, model: meta-llama/Llama-3.3-70B-Instruct}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD.replace("      - {provider: nebius, model: meta-llama/Llama-3.3-70B-Instruct}",
                  "      - {provider: nebius, model: a}\n      - {provider: nebuis, model: b}"),
     "models.fast.targets[1].provider: unknown provider 'nebuis'"),
    (GOOD.replace("kind: nebius", "kind: nebulous"), "providers.nebius.kind: unknown kind 'nebulous'"),
    (GOOD.replace("api_key_env", "apikey_env"), "providers.nebius.apikey_env: unknown key"),
    (GOOD.replace("    targets:\n", "    targetz:\n"), "models.fast.targetz: unknown key"),
    (GOOD.replace('"https://api.tokenfactory.nebius.com"', "ftp://x"), "providers.nebius.base_url:"),
    (GOOD + "  broken: [", "not valid YAML"),
    ("just a string", "(top level): must be a mapping"),
])
def test_check_names_the_path_of_each_problem(tmp_path, text, expected):
    path = tmp_path / "routes.yaml"
    path.write_text(textwrap.dedent(text))
    out = run("check", str(path))
    assert out.returncode == 1
    assert expected in out.stderr, out.stderr


def test_check_accepts_a_good_file_and_warns_of_unset_key(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(GOOD)
    out = run("check", str(path))
    assert out.returncode == 0, out.stderr
    assert "ok (1 providers, 1 models)" in out.stdout
    assert "NEBIUS_API_KEY is not set" in out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve(path: Path, port: int, *args: str, stdout: int = asyncio.subprocess.DEVNULL,
                stderr: int = asyncio.subprocess.PIPE) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "router", "serve", "--config", str(path),
                                                "--port", str(port), *args, stdout=stdout, stderr=stderr)


async def test_serve_answers_with_the_given_config(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(GOOD)
    port = free_port()
    proc = await serve(path, port)
    try:
        body = await get_when_up(f"http://127.0.0.1:{port}/v1/models")
        assert [m["id"] for m in body["data"]] == ["fast"]
    finally:
        proc.terminate()
        _, err = await proc.communicate()
    assert b"OPEN" in err or b"open" in err, "an open proxy must say so at start"


async def get_when_up(url: str):
    async with aiohttp.ClientSession() as s:
        for _ in range(100):
            try:
                async with s.get(url) as r:
                    return await r.json()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    pytest.fail(f"nothing answered at {url}")


async def test_demo_serves_a_chat_completion_with_nothing_configured():
    port = free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "router", "demo", "--port", str(port),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                      json={"model": "fallback-demo",
                                            "messages": [{"role": "user", "content": "hi"}]}) as r:
                        body = await r.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("demo did not start listening")
        assert r.status == 200, body
        assert body["model"] == "fallback-demo"
        assert r.headers["x-router-attempts"] == "2"  # its first target is missing at the vendor
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.parametrize(("raw", "timeout_s"), [(None, 0.25), ("40", 0.04), ("1500", 1.5)])
def test_the_redis_call_timeout_is_a_setting(monkeypatch: pytest.MonkeyPatch, raw: str | None, timeout_s: float) -> None:
    from router.settings import ServeSettings

    if raw is None:
        monkeypatch.delenv("ROUTER_REDIS_TIMEOUT_MS", raising=False)
    else:
        monkeypatch.setenv("ROUTER_REDIS_TIMEOUT_MS", raw)
    assert ServeSettings.from_env().redis_timeout_s == pytest.approx(timeout_s)


@pytest.mark.parametrize("raw", ["0", "-5", "soon", "100000"])
def test_a_redis_timeout_out_of_range_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    from router.settings import ServeSettings

    monkeypatch.setenv("ROUTER_REDIS_TIMEOUT_MS", raw)
    with pytest.raises(ValueError, match="ROUTER_REDIS_TIMEOUT_MS"):
        ServeSettings.from_env()


@pytest.mark.parametrize(("raw", "limit"), [(None, 2048), ("64", 64), ("100000", 100000)])
def test_upstream_connections_per_vendor_are_a_setting(monkeypatch: pytest.MonkeyPatch, raw: str | None,
                                                       limit: int) -> None:
    from router.settings import ServeSettings

    if raw is None:
        monkeypatch.delenv("ROUTER_UPSTREAM_CONNECTIONS", raising=False)
    else:
        monkeypatch.setenv("ROUTER_UPSTREAM_CONNECTIONS", raw)
    assert ServeSettings.from_env().upstream_connections == limit


@pytest.mark.parametrize("raw", ["0", "1.5", "many", "-3"])
def test_upstream_connections_that_are_no_count_are_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                                              raw: str) -> None:
    from router.settings import ServeSettings

    monkeypatch.setenv("ROUTER_UPSTREAM_CONNECTIONS", raw)
    with pytest.raises(ValueError, match="ROUTER_UPSTREAM_CONNECTIONS"):
        ServeSettings.from_env()


@pytest.mark.parametrize(("level", "lines"), [("INFO", 3), ("WARNING", 0)])
async def test_serve_writes_one_access_line_per_request_to_stdout(tmp_path, level: str, lines: int):
    path = tmp_path / "routes.yaml"
    path.write_text(GOOD)
    port = free_port()
    proc = await serve(path, port, "--log-level", level, stdout=asyncio.subprocess.PIPE,
                       stderr=asyncio.subprocess.DEVNULL)
    try:
        await get_when_up(f"http://127.0.0.1:{port}/v1/models")
        async with aiohttp.ClientSession() as s:
            for _ in range(3):  # no such model: answered by the proxy alone, still a logged request
                async with s.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": "nope", "prompt": "x"}) as r:
                    assert r.status == 404
    finally:
        proc.terminate()
        out, _ = await proc.communicate()
    logged = [orjson.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    assert len(logged) == lines
    assert all(entry["status"] == 404 and entry["error"] == "model_not_found" for entry in logged)


@pytest.mark.parametrize("raw", [
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Bad: \x00\x01\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n",
], ids=["control-bytes-in-a-header", "bad-chunk-size", "over-long-header"])
async def test_a_malformed_http_request_is_refused_with_one_log_line_and_no_traceback(tmp_path, raw: bytes):
    path = tmp_path / "routes.yaml"
    path.write_text(GOOD)
    port = free_port()
    proc = await serve(path, port)
    try:
        await get_when_up(f"http://127.0.0.1:{port}/v1/models")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        await get_when_up(f"http://127.0.0.1:{port}/v1/models")  # still serving
    finally:
        proc.terminate()
        _, err = await proc.communicate()
    assert status_line.split()[1].startswith(b"4")
    text = err.decode()
    assert "Traceback" not in text
    assert text.count("malformed HTTP request") == 1
