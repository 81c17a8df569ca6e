"""`router serve` as a real process for a test: started on a free port, ready when /readyz says so."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.fixtures_proxy import key_env

# A test that counts on exact limits gives Redis time to answer on a busy machine: past the
# default 250 ms a batch fails open and the count is off. Fail-open timing has tests of its own.
PATIENT_REDIS_MS = "2000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve(tmp_path: Path, doc: dict[str, Any], vendor: Any, *args: str,
                env: dict[str, str] | None = None) -> tuple[asyncio.subprocess.Process, str]:
    """`router serve` of `doc` in front of `vendor` (its key in the environment), once ready;
    a process that never gets ready fails the test with the end of its log."""
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(doc))
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "serve", "--config", str(path), "--port", str(port), "--log-level", "WARNING",
        *args, env={**os.environ, "ROUTER_REDIS_TIMEOUT_MS": PATIENT_REDIS_MS, key_env(vendor.kind): vendor.api_key,
                    **(env or {})},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        for _ in range(150):
            try:
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        return proc, url
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    if proc.returncode is None:
        proc.kill()
    raise RuntimeError(f"router serve did not become ready: {(await proc.communicate())[1].decode()[-2000:]}")
