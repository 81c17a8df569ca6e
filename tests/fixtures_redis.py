"""Real redis-server processes for the shared-state tests: no mocks, no shared daemon.

`redis_url` gives each test an empty database on one session-wide server,
`redis_server_factory` starts private servers a test may stop and restart (faults), and
`redis_cluster_url` gives an empty three-node cluster, and `backend` parametrises a test over
memory / redis / cluster shared-state replicas on one fake clock. Without redis-server the tests
skip locally and fail in CI (env CI set), so a CI image missing it cannot go green.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from router.metrics import Metrics
from router.backends import create_state
from router.memory_state import MemoryState
from router.state import SharedState, StateSettings

STARTUP_TIMEOUT_S = 10.0


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        reason = f"{binary} is not installed (apt-get install redis-server); the shared-state tests need a real Redis"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server on a loopback port; `stop()`/`start()` keep the port (fault tests)."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None, cluster: bool = False) -> None:
        self.binary, self.port, self.cluster = binary, port or free_port(), cluster
        self.workdir = workdir / f"redis-{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bus_port = free_port() if cluster else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir), "--daemonize", "no", "--protected-mode", "no"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
            args += ["--cluster-port", str(self.bus_port)]
        self.proc = subprocess.Popen(args, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server on port {self.port} exited: {err}")
            try:
                with self.client() as c:
                    if c.ping():
                        return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer in {STARTUP_TIMEOUT_S}s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        with self.client() as c:
            c.flushall()


@pytest.fixture(scope="session")
def redis_binary() -> str:
    return need("redis-server")


@pytest.fixture(scope="session")
def redis_server(redis_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """An empty database on the session's server."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def redis_server_factory(redis_binary: str, tmp_path: Path) -> Iterator[type[RedisServer]]:
    """`factory()` → a started private server the test may stop/restart; all stopped after."""
    started: list[RedisServer] = []

    def factory(start: bool = True) -> RedisServer:
        server = RedisServer(redis_binary, tmp_path)
        if start:
            server.start()
        started.append(server)
        return server

    yield factory  # type: ignore[misc]
    for s in started:
        s.stop()


def start_cluster(redis_server: str, redis_cli: str, workdir: Path, nodes: int = 3) -> list[RedisServer]:
    """`nodes` primaries, no replicas, joined with `redis-cli --cluster create`; the caller stops them."""
    servers = [RedisServer(redis_server, workdir, cluster=True) for _ in range(nodes)]
    try:
        for n in servers:
            n.start()
        addrs = [f"127.0.0.1:{n.port}" for n in servers]
        subprocess.run(
            [redis_cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not all(_cluster_ok(n) for n in servers):
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)
    except BaseException:
        for n in servers:
            n.stop()
        raise
    return servers


@pytest.fixture(scope="session")
def redis_cluster(redis_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """A three-node cluster for the whole session."""
    nodes = start_cluster(redis_binary, need("redis-cli"), tmp_path_factory.mktemp("redis-cluster"))
    yield nodes
    for n in nodes:
        n.stop()


def _cluster_ok(node: RedisServer) -> bool:
    with node.client() as c:
        info = c.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


@pytest.fixture
def redis_cluster_url(redis_cluster: list[RedisServer]) -> str:
    """The cluster, every node flushed, as a `redis-cluster://` URL."""
    for n in redis_cluster:
        n.flush()
    return f"redis-cluster://127.0.0.1:{redis_cluster[0].port}"


# ---- shared-state backends on a fake clock --------------------------------------------

T0 = datetime(2025, 3, 15, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    """Wall-clock stand-in shared by every replica of a test."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


Factory = Callable[..., Awaitable[list[SharedState]]]


@dataclass
class Backend:
    name: str
    make: Factory
    clock: Clock
    metrics: Metrics


@pytest.fixture(params=["memory", "redis", "cluster", "redis-ahead", "cluster-ahead"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """`await backend.make(n)` → n replicas on the parametrised backend ("-ahead": taking
    admissions ahead, redis_ahead.py)."""
    clock, metrics, made = Clock(), Metrics(), []
    url = None
    ahead = {"admit_ahead": 8} if request.param.endswith("-ahead") else {}
    if request.param.startswith("redis"):
        url = request.getfixturevalue("redis_url")
    elif request.param.startswith("cluster"):
        url = request.getfixturevalue("redis_cluster_url")

    async def make(n: int = 1, **overrides: object) -> list[SharedState]:
        settings = StateSettings(clock=clock, redis_clock=False, redis_timeout_s=2.0, **{**ahead, **overrides})  # type: ignore[arg-type]
        if url is None:
            states: list[SharedState] = [MemoryState(settings, metrics)] * n
        else:
            states = [create_state(url, settings, metrics) for _ in range(n)]
        made.extend(states)
        return states

    yield Backend(request.param, make, clock, metrics)
    for s in {id(s): s for s in made}.values():
        await s.close()
