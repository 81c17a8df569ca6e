"""Benchmark: what shared state costs per request, memory vs Redis vs Redis Cluster.

Not a test (pytest does not collect it): run by hand, it prints a table.

    python tests/bench/bench_state.py [--requests 5000] [--concurrency 1,32]

One request is what the proxy does for every call: admit (key rpm+tpm+concurrent+budget,
model rpm+tpm, health of two candidates), reserve_target, settle, record. Limits are set
high enough that nothing is refused. Redis runs locally on loopback (its own processes,
started here), so the numbers are the floor of a real deployment's network cost.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.limits import Admission, BudgetSpec, LimitSpec  # noqa: E402
from router.backends import create_state  # noqa: E402
from router.state import SharedState, StateSettings  # noqa: E402
from tests.fixtures_redis import RedisServer, start_cluster  # noqa: E402

BIG = 10**12
ADMISSION = Admission(
    "team-a", LimitSpec(rpm=BIG, tpm=BIG, concurrent=BIG), BudgetSpec(daily_usd=1e9, monthly_usd=1e9),
    "gpt-x", LimitSpec(rpm=BIG, tpm=BIG), 500,
)
TARGETS = ["openai:gpt-x", "azure:gpt-x"]
TARGET_QUOTA = LimitSpec(rpm=BIG, tpm=BIG)


async def one(state: SharedState) -> float:
    started = time.perf_counter()
    grant, health = await state.admit(ADMISSION, TARGETS)
    target = await state.reserve_target(TARGETS[0], TARGET_QUOTA, 500)
    await state.settle(grant, target, 321, 0.0012)
    await state.record(TARGETS[0], True, 0.4)
    return time.perf_counter() - started


async def run(url: str | None, requests: int, concurrency: int) -> tuple[float, list[float]]:
    state = create_state(url, StateSettings(redis_timeout_s=5.0))
    try:
        for _ in range(50):  # warm up: connections, scripts cached on every node
            await one(state)
        latencies: list[float] = []
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                latencies.append(await one(state))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies
    finally:
        await state.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", default="1,32", help="comma-separated worker counts")
    ap.add_argument("--no-cluster", action="store_true")
    args = ap.parse_args()
    server_bin, cli_bin = shutil.which("redis-server"), shutil.which("redis-cli")
    backends: list[tuple[str, str | None]] = [("memory", None)]
    started: list[RedisServer] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if server_bin:
                single = RedisServer(server_bin, Path(tmp))
                single.start()
                started.append(single)
                backends.append(("redis", single.url))
                if cli_bin and not args.no_cluster:
                    nodes = start_cluster(server_bin, cli_bin, Path(tmp) / "cluster")
                    started += nodes
                    backends.append(("redis cluster (3)", f"redis-cluster://127.0.0.1:{nodes[0].port}"))
            else:
                print("redis-server not found: memory only", file=sys.stderr)
            runner: Any = asyncio.run
            try:
                import uvloop

                runner = uvloop.run
            except ImportError:
                pass
            print(f"{args.requests} requests each = admit + reserve_target + settle + record\n")
            print(f"{'backend':<18} {'workers':>7} {'req/s':>9} {'µs/req':>8} {'p50 µs':>8} {'p99 µs':>8}")
            for name, url in backends:
                for c in (int(x) for x in args.concurrency.split(",")):
                    took, lat = runner(run(url, args.requests, c))
                    lat.sort()
                    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                    print(
                        f"{name:<18} {c:>7} {args.requests / took:>9,.0f} {took / args.requests * 1e6:>8,.0f}"
                        f" {statistics.median(lat) * 1e6:>8,.0f} {p99 * 1e6:>8,.0f}"
                    )
        finally:
            for s in started:
                s.stop()


if __name__ == "__main__":
    main()
