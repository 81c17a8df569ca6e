"""`router serve --workers N`: several processes on one port, limits exact across them.

Real `router serve` processes in front of a contract-checked stand-in; with REDIS_URL the
workers share a real redis-server, without it a table with limits is refused at start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import yaml

from providers.standins import Reply
from tests.serving import free_port, serve
from tests.test_replicas import N, routes


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(d))
    return out


async def start_workers(tmp_path: Path, doc: dict, vendor, workers: str, env: dict[str, str]):
    return await serve(tmp_path, doc, vendor, "--workers", workers, env=env)


async def test_two_workers_on_one_port_keep_an_rpm_limit_exact(tmp_path, vendors, redis_url) -> None:
    vendors.openai.control.push(*[Reply(delay=0.3)] * (3 * N))  # every request in flight at once
    proc, url = await start_workers(tmp_path, routes(vendors.openai, {"rpm": N}), vendors.openai, "2",
                                    {"REDIS_URL": redis_url})
    try:
        assert len(children(proc.pid)) == 2
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            async def one() -> int:
                async with s.post(url + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 5}) as r:
                    return r.status
            statuses = Counter(await asyncio.gather(*(one() for _ in range(3 * N))))
            async with s.get(url + "/metrics") as r:
                text = await r.text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await proc.wait()
        vendors.openai.control.clear()
    assert statuses == {200: N, 429: 2 * N}, statuses
    served = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("router_requests_total{") and 'status_class="2xx"' in line)
    assert served == N  # /metrics sums every worker, whichever one answered the scrape
    assert code == 0


async def test_workers_without_redis_refuse_a_table_with_limits_and_say_what_to_do(tmp_path, vendors) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(routes(vendors.openai, {"rpm": N})))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "serve", "--config", str(path), "--port", str(free_port()),
        "--workers", "2", env={k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "models.m.limits" in err.decode() and "REDIS_URL" in err.decode() and "--workers 1" in err.decode()


async def test_workers_without_limits_need_no_redis_and_stop_on_sigterm(tmp_path, vendors) -> None:
    proc, url = await start_workers(tmp_path, routes(vendors.openai, {}), vendors.openai, "auto",
                                    {"REDIS_URL": ""})
    try:
        assert len(children(proc.pid)) == len(os.sched_getaffinity(0))
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 5}) as r:
                assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


@pytest.mark.parametrize("raw", ["0", "-1", "many"])
async def test_a_bad_worker_count_is_refused(tmp_path, vendors, raw: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(routes(vendors.openai, {})))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "serve", "--config", str(path), "--workers", raw,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and "--workers" in err.decode()


async def test_sighup_to_the_parent_reloads_every_worker(tmp_path, vendors) -> None:
    doc = routes(vendors.openai, {})
    proc, url = await start_workers(tmp_path, doc, vendors.openai, "2",
                                    {"REDIS_URL": "", "ROUTER_RELOAD_INTERVAL": "3600"})  # only SIGHUP reloads
    try:
        doc["models"]["m2"] = doc["models"]["m"]
        (tmp_path / "routes.yaml").write_text(yaml.safe_dump(doc))
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            async def one() -> int:
                async with s.post(url + "/v1/completions", json={"model": "m2", "prompt": "hi", "max_tokens": 5}) as r:
                    return r.status
            statuses = [await one() for _ in range(30)]  # new connections land on either worker
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    assert statuses == [200] * 30
