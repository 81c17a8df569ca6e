"""A real Prometheus server for tests (pytest plugin: registered in tests/conftest.py).

Fixtures
--------
``prometheus``
    A fresh ``prometheus`` process (Debian's binary, from PATH or /usr/bin) on a free
    loopback port, with its own temporary TSDB, ``scrape_interval`` and
    ``evaluation_interval`` of 1s, and ``--web.enable-lifecycle``. It starts with no
    targets; the test names them once it knows its ports::

        await prometheus.set_targets_async([f"127.0.0.1:{port}"])   # job="router"
        await prometheus.wait_for_targets_up_async()
        ... send traffic through the proxy ...
        await prometheus.wait_for_value_async("sum(router_spend_usd_total)", expected_usd)

    Sync tests use the same names without `_async`. Prometheus' target discovery hands a
    new target list to the scrapers on a 5-second tick, so the first scrape of a new
    target comes about 5 s after ``set_targets``: wait for it, don't sleep.

``prometheus_binary`` / ``promtool_binary``
    Paths of the two programs. Missing: ``pytest.fail`` when ``CI`` is set, else a skip.

Helpers for module- or session-scoped servers: ``start_prometheus(workdir, ...)`` (a
context manager yielding a ``Prometheus``) and ``serve_app_in_thread(app)`` (an aiohttp
app served on loopback from a background thread, for synchronous tests).

Sync vs async: in an async test whose aiohttp server runs on the test's own event loop, use
the ``*_async`` methods. The sync ones block the loop, and Prometheus' scrapes of that
server would then wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"

Result = list[dict[str, Any]]
Predicate = Callable[[Result], bool]


class PrometheusError(Exception):
    """Prometheus answered a query with an error (a PromQL parse error, for one)."""

    def __init__(self, expr: str, error_type: str, error: str) -> None:
        super().__init__(f"{error_type}: {error}\n  in: {expr}")
        self.expr = expr
        self.error_type = error_type
        self.error = error


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/bin") / name
    return str(candidate) if candidate.exists() else None


def require_binary(name: str, package: str = "prometheus") -> str:
    """The program's path; without it, fail under CI (it must be installed) or skip locally."""
    path = find_binary(name)
    if path is None:
        reason = f"`{name}` not found on PATH nor in /usr/bin (Debian package: {package})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it", pytrace=False)
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A running Prometheus and a small client for its HTTP API."""

    def __init__(self, workdir: Path, binary: str, *, scrape_interval: str = "1s") -> None:
        self.workdir = workdir
        self.binary = binary
        self.scrape_interval = scrape_interval
        self.config_path = workdir / "prometheus.yml"
        self.storage = workdir / "data"
        self.log_path = workdir / "prometheus.log"
        self.port = 0
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._scrape_configs: list[dict[str, Any]] = []
        self._rule_files: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def _write_config(self) -> None:
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "rule_files": list(self._rule_files),
            "scrape_configs": list(self._scrape_configs),
        }
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.replace(self.config_path)

    def start(self, timeout: float = 30.0) -> None:
        self._write_config()
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            log = self.log_path.open("ab")
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.storage}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--storage.tsdb.retention.time=1d",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                        if r.status == 200:
                            return
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"prometheus did not become ready:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def reload(self) -> None:
        """Rewrite the config and have Prometheus load it (POST /-/reload)."""
        self._write_config()
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                r.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise RuntimeError(f"prometheus reload failed: {detail}\n{self.log()}") from e

    # ------------------------------------------------------------------ configuration

    def set_targets(
        self,
        targets: Sequence[str],
        *,
        job: str = "router",
        metrics_path: str = "/metrics",
        labels: dict[str, str] | None = None,
    ) -> None:
        """Scrape `targets` ("host:port") as `job`, replacing that job's targets; reloads."""
        static: dict[str, Any] = {"targets": list(targets)}
        if labels:
            static["labels"] = dict(labels)
        self._scrape_configs = [c for c in self._scrape_configs if c["job_name"] != job]
        if targets:
            self._scrape_configs.append(
                {"job_name": job, "metrics_path": metrics_path, "static_configs": [static]}
            )
        self.reload()

    def load_rules(self, *paths: str | Path) -> None:
        """Load rule files (default: deploy/prometheus/alerts.yml), evaluated every second."""
        self._rule_files = [str(Path(p).resolve()) for p in (paths or (ALERT_RULES,))]
        self.reload()

    # ------------------------------------------------------------------ queries (sync)

    def _get(self, path: str, params: dict[str, str] | Sequence[tuple[str, str]] | None = None) -> Any:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        return body

    @staticmethod
    def _unwrap(expr: str, body: dict[str, Any]) -> Any:
        if body.get("status") != "success":
            raise PrometheusError(expr, body.get("errorType", "?"), body.get("error", repr(body)))
        return body["data"]

    def query_raw(self, expr: str, *, time: float | None = None) -> dict[str, Any]:
        """`/api/v1/query`'s data: {"resultType": ..., "result": ...}; PrometheusError on error."""
        params = {"query": expr}
        if time is not None:
            params["time"] = repr(time)
        return self._unwrap(expr, self._get("/api/v1/query", params))

    def query(self, expr: str, *, time: float | None = None) -> Result:
        """The instant vector (a list of {"metric", "value"}); a scalar comes as one sample."""
        return _as_vector(self.query_raw(expr, time=time))

    def value(self, expr: str) -> float:
        """The single value of `expr` (raises if it has not exactly one sample)."""
        return _single_value(expr, self.query(expr))

    def wait_for(self, expr: str, predicate: Predicate | None = None, *, timeout: float = 30.0) -> Result:
        """Poll `expr` until it returns samples (and `predicate(result)` holds); its result."""
        deadline = time.monotonic() + timeout
        result: Result = []
        while True:
            result = self.query(expr)
            if result and (predicate is None or predicate(result)):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"after {timeout}s, {expr!r} gave {result!r}")
            time.sleep(0.25)

    def wait_for_value(
        self, expr: str, expected: float, *, rel: float = 1e-9, abs_tol: float = 1e-12, timeout: float = 30.0
    ) -> float:
        """Poll until `expr` has one sample equal to `expected` (within rel/abs); that value."""
        try:
            result = self.wait_for(expr, _equals(expected, rel, abs_tol), timeout=timeout)
        except TimeoutError as e:
            raise AssertionError(f"{expr!r} never equalled {expected!r}: {e}") from None
        return float(result[0]["value"][1])

    def metric_names(self) -> set[str]:
        return set(self._unwrap("__name__", self._get("/api/v1/label/__name__/values")))

    def series(self, match: str) -> list[dict[str, str]]:
        return self._unwrap(match, self._get("/api/v1/series", [("match[]", match)]))

    def targets(self) -> list[dict[str, Any]]:
        return self._unwrap("targets", self._get("/api/v1/targets"))["activeTargets"]

    def wait_for_targets_up(self, *, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until every configured target has been scraped successfully."""
        deadline = time.monotonic() + timeout
        while True:
            active = self.targets()
            if active and all(t["health"] == "up" for t in active):
                return active
            if time.monotonic() > deadline:
                raise TimeoutError(f"targets not up after {timeout}s: {active!r}")
            time.sleep(0.25)

    def rules(self) -> list[dict[str, Any]]:
        return self._unwrap("rules", self._get("/api/v1/rules"))["groups"]

    def alerts(self) -> list[dict[str, Any]]:
        return self._unwrap("alerts", self._get("/api/v1/alerts"))["alerts"]

    # ------------------------------------------------------------------ queries (async)

    async def query_raw_async(self, expr: str, *, time: float | None = None) -> dict[str, Any]:
        params = {"query": expr}
        if time is not None:
            params["time"] = repr(time)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.get(f"{self.url}/api/v1/query", params=params) as r:
                body = await r.json(content_type=None)
        return self._unwrap(expr, body)

    async def query_async(self, expr: str, *, time: float | None = None) -> Result:
        return _as_vector(await self.query_raw_async(expr, time=time))

    async def value_async(self, expr: str) -> float:
        return _single_value(expr, await self.query_async(expr))

    async def wait_for_async(
        self, expr: str, predicate: Predicate | None = None, *, timeout: float = 30.0
    ) -> Result:
        """Like `wait_for`, but yields to the event loop between polls."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        result: Result = []
        while True:
            result = await self.query_async(expr)
            if result and (predicate is None or predicate(result)):
                return result
            if loop.time() > deadline:
                raise TimeoutError(f"after {timeout}s, {expr!r} gave {result!r}")
            await asyncio.sleep(0.25)


    async def wait_for_value_async(
        self, expr: str, expected: float, *, rel: float = 1e-9, abs_tol: float = 1e-12, timeout: float = 30.0
    ) -> float:
        try:
            result = await self.wait_for_async(expr, _equals(expected, rel, abs_tol), timeout=timeout)
        except TimeoutError as e:
            raise AssertionError(f"{expr!r} never equalled {expected!r}: {e}") from None
        return float(result[0]["value"][1])

    # Configuration and target checks from a test whose server runs on the test's own loop:
    # run the blocking calls in a thread so the loop keeps answering Prometheus' scrapes.

    async def set_targets_async(self, targets: Sequence[str], **kwargs: Any) -> None:
        await asyncio.to_thread(self.set_targets, targets, **kwargs)

    async def load_rules_async(self, *paths: str | Path) -> None:
        await asyncio.to_thread(self.load_rules, *paths)

    async def wait_for_targets_up_async(self, *, timeout: float = 30.0) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.wait_for_targets_up, timeout=timeout)


def _equals(expected: float, rel: float, abs_tol: float) -> Predicate:
    def check(result: Result) -> bool:
        return len(result) == 1 and math.isclose(
            float(result[0]["value"][1]), expected, rel_tol=rel, abs_tol=abs_tol
        )

    return check


def _as_vector(data: dict[str, Any]) -> Result:
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def _single_value(expr: str, result: Result) -> float:
    if len(result) != 1:
        raise AssertionError(f"{expr!r}: expected one sample, got {result!r}")
    return float(result[0]["value"][1])


@contextlib.contextmanager
def start_prometheus(workdir: Path | None = None, *, binary: str | None = None) -> Iterator[Prometheus]:
    """A started Prometheus in `workdir` (a new temporary directory if None); stopped on exit."""
    binary = binary or require_binary("prometheus")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prometheus-")))
        workdir.mkdir(parents=True, exist_ok=True)
        prom = Prometheus(workdir, binary)
        prom.start()
        stack.callback(prom.stop)
        yield prom


@contextlib.contextmanager
def serve_app_in_thread(app: web.Application, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` on a free loopback port from a background thread; yields "host:port"."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()
    address: list[str] = []

    async def _start() -> None:
        await runner.setup()
        await web.TCPSite(runner, host, 0).start()
        address.append(f"{host}:{runner.addresses[0][1]}")

    def _run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=_run, name="aiohttp-test-app", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("test app did not start")
    try:
        yield address[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return require_binary("prometheus")


@pytest.fixture(scope="session")
def promtool_binary() -> str:
    return require_binary("promtool")


@pytest.fixture
def prometheus(prometheus_binary: str, tmp_path: Path) -> Iterator[Prometheus]:
    """A fresh Prometheus with no targets: call `set_targets([...])`, then query."""
    with start_prometheus(tmp_path / "prometheus", binary=prometheus_binary) as prom:
        yield prom
