"""Live reload: edits to routes.yaml under a running server while requests flow; a bad edit is
refused, counted, logged with its exact error, and changes nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from router.settings import ServeSettings
from tests.fixtures_proxy import providers_for

KINDS = ["cogito", "nebius", "interactive"]


def doc(vendors, serving: str) -> dict[str, Any]:
    return {"providers": providers_for([vendors[k] for k in KINDS]),
            "models": {"g": {"targets": [{"provider": serving, "model": "m-1"}]}}}


def write(path: Path, data: dict[str, Any] | str) -> None:
    """Write in place, as an operator's editor or `cat >` would."""
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


async def metric(session: aiohttp.ClientSession, url: str, name: str, labels: str = "") -> float:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out waiting for the reload"
        await asyncio.sleep(0.02)


class Load:
    """Requests in a loop from a few concurrent clients; records status and serving provider."""

    def __init__(self, url: str, workers: int = 4) -> None:
        self.url = url
        self.results: list[tuple[int, str]] = []
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(self.worker()) for _ in range(workers)]

    async def worker(self) -> None:
        async with aiohttp.ClientSession() as s:
            while not self.stop.is_set():
                async with s.post(self.url + "/v1/completions", json={"model": "g", "prompt": "hi"}) as r:
                    await r.read()
                    self.results.append((r.status, r.headers.get("x-router-provider", "")))

    def latest(self) -> str:
        return self.results[-1][1] if self.results else ""

    async def finish(self) -> list[tuple[int, str]]:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        return self.results


async def test_edits_under_load_swap_in_valid_tables_and_refuse_an_invalid_one(
        vendors, start_proxy, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="router.reload")
    path = tmp_path / "routes.yaml"
    write(path, doc(vendors, "cogito"))
    proxy = await start_proxy(doc(vendors, "cogito"), vendors=vendors, config_path=str(path),
                              settings=ServeSettings(config_path=str(path), reload_interval_s=0.02))
    load = Load(proxy.url)
    async with aiohttp.ClientSession() as s:
        async def served_by(kind: str):
            async def check() -> bool:
                return load.latest() == kind
            return check

        await until(await served_by("cogito"))
        write(path, doc(vendors, "nebius"))
        await until(await served_by("nebius"))

        bad = doc(vendors, "nebius")
        bad["models"]["g"]["targets"][0]["provider"] = "nebuis"
        write(path, bad)

        async def refused() -> bool:
            return await metric(s, proxy.url, "router_config_reloads_total", '{result="error"}') == 1
        await until(refused)
        before = len(load.results)

        async def more_served() -> bool:
            return len(load.results) > before + 20
        await until(more_served)
        assert {p for _, p in load.results[before:]} == {"nebius"}, "the invalid edit took no effect"
        async with s.get(proxy.url + "/readyz") as r:
            assert "nebuis" in (await r.json())["checks"]["config_reload"]

        write(path, doc(vendors, "interactive"))
        await until(await served_by("interactive"))
        results = await load.finish()

        assert await metric(s, proxy.url, "router_config_reloads_total", '{result="ok"}') == 2
        assert await metric(s, proxy.url, "router_config_reloads_total", '{result="error"}') == 1
        assert await metric(s, proxy.url, "router_config_generation") == 2

    assert len(results) > 50, "requests flowed throughout"
    statuses = Counter(status for status, _ in results)
    assert set(statuses) == {200}, f"failed requests during reloads: {statuses}"
    served = [p for _, p in results]
    order = [p for i, p in enumerate(served) if i == 0 or served[i - 1] != p]
    assert order == ["cogito", "nebius", "interactive"], "one swap per valid edit, none for the invalid one"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name.startswith("router")]
    assert len(errors) == 1
    assert ("models.g.targets[0].provider: unknown provider 'nebuis' (defined: cogito, nebius, interactive)"
            in errors[0])


INVALID_EDITS = [
    ("providers: [oops", "not valid YAML"),
    ("", "(top level): must be a mapping"),
    ("providers: {}\nmodels: {}\n", "providers: dictionary should have at least 1 item"),
    (None, "cannot read the file"),          # the file was deleted
]


@pytest.mark.parametrize("text,error", INVALID_EDITS)
async def test_refused_edit_is_counted_and_logged_and_the_old_table_serves(
        vendors, start_proxy, tmp_path, caplog, text, error):
    path = tmp_path / "routes.yaml"
    write(path, doc(vendors, "cogito"))
    proxy = await start_proxy(doc(vendors, "cogito"), vendors=vendors, config_path=str(path),
                              settings=ServeSettings(config_path=str(path), reload_interval_s=0.02))
    if text is None:
        path.unlink()
    else:
        write(path, text)
    async with aiohttp.ClientSession() as s:
        async def refused() -> bool:
            return await metric(s, proxy.url, "router_config_reloads_total", '{result="error"}') >= 1
        await until(refused)
        async with s.post(proxy.url + "/v1/completions", json={"model": "g", "prompt": "hi"}) as r:
            assert (r.status, r.headers["x-router-provider"]) == (200, "cogito")
    assert any(error in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR), caplog.text


async def test_sighup_reloads_at_once(vendors, start_proxy, tmp_path):
    path = tmp_path / "routes.yaml"
    write(path, doc(vendors, "cogito"))
    proxy = await start_proxy(doc(vendors, "cogito"), vendors=vendors, config_path=str(path),
                              settings=ServeSettings(config_path=str(path), reload_interval_s=3600))
    # pytest runs the loop in the main thread, where a handler can always be installed: none
    # installed is the reload's own failure, never a reason to skip.
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None), "no SIGHUP handler"
    write(path, doc(vendors, "nebius"))
    os.kill(os.getpid(), signal.SIGHUP)
    async with aiohttp.ClientSession() as s:
        async def swapped() -> bool:
            async with s.post(proxy.url + "/v1/completions", json={"model": "g", "prompt": "hi"}) as r:
                return r.headers["x-router-provider"] == "nebius"
        await until(swapped, timeout=2)
        assert await metric(s, proxy.url, "router_config_reloads_total", '{result="ok"}') == 1


async def test_request_in_flight_across_a_reload_keeps_the_table_it_started_with(vendors, start_proxy, tmp_path):
    """Old table: cogito (times out), then nebius. New table: interactive only. A request that
    began before the swap still falls over to nebius; the next one goes to interactive."""
    from router.handlers import ROUTES
    from providers.standins import Hang

    def table(targets: list[str]) -> dict[str, Any]:
        d = doc(vendors, "cogito")
        d["providers"]["cogito"]["timeout_s"] = 2
        d["models"]["g"]["targets"] = [{"provider": p, "model": "m-1"} for p in targets]
        d["settings"] = {"retry": {"attempts": 1}}
        return d

    path = tmp_path / "routes.yaml"
    write(path, table(["cogito", "nebius"]))
    proxy = await start_proxy(table(["cogito", "nebius"]), vendors=vendors, config_path=str(path),
                              settings=ServeSettings(config_path=str(path), reload_interval_s=3600))
    vendors.cogito.control.push(Hang(30))
    async with aiohttp.ClientSession() as s:
        async def post() -> tuple[int, str]:
            async with s.post(proxy.url + "/v1/completions", json={"model": "g", "prompt": "hi"}) as r:
                await r.read()
                return r.status, r.headers["x-router-provider"]

        held = asyncio.create_task(post())
        for _ in range(200):
            if vendors.cogito.control.requests:
                break
            await asyncio.sleep(0.01)
        write(path, table(["interactive"]))
        assert proxy.app[ROUTES].reload()
        assert await held == (200, "nebius"), "the held request fell over by the table it started with"
        assert await post() == (200, "interactive")
    assert len(vendors.interactive.control.requests) == 1


async def test_undecodable_file_is_refused_and_the_watcher_keeps_going(tmp_path):
    from router.metrics import Metrics
    from router.reload import Routes
    from router.routes import load

    path = tmp_path / "routes.yaml"
    good = ("providers: {up: {kind: openai, base_url: 'http://127.0.0.1:9/v1'}}\n"
            "models: {m: {targets: [{provider: up, model: x}]}}\n")
    path.write_text(good)
    metrics = Metrics()
    routes = Routes(load(path), str(path), metrics)
    watcher = asyncio.create_task(routes.watch(0.05))
    try:
        path.write_bytes(b"providers: \xff\xfe\n")
        for _ in range(100):
            if routes.last_error:
                break
            await asyncio.sleep(0.02)
        assert "not UTF-8" in routes.last_error
        assert metrics.registry.get_sample_value("router_config_reloads_total", {"result": "error"}) == 1
        path.write_text(good.replace("model: x", "model: y"))
        for _ in range(100):
            if routes.table.generation == 1:
                break
            await asyncio.sleep(0.02)
        assert routes.table.groups["m"].targets[0].model == "y", "the watcher survived the bad file"
    finally:
        watcher.cancel()
