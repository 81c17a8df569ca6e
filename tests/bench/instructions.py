"""Instructions per request, counted by callgrind: a cost that does not move with the machine.

Wall-clock rates on a shared virtual machine move by a quarter from minute to minute; the
instructions a process runs for a request move by a tenth of a percent between runs. So a
change too small to see in requests/s (a few percent) still shows here, side by side with
the relay. What it leaves out: time in the kernel (system calls, a write to a socket),
cache misses and how well instructions overlap, so it complements the timed cases and does
not replace them.

Each contender runs under `valgrind --tool=callgrind` (about 50 times slower); after a
warm-up its counters are zeroed, a fixed number of requests go through at a fixed
concurrency (an aiohttp client, every answer read to its end), and its counters are dumped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp

WARM = 50


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def wrap(argv: list[str], out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no", *argv]


async def _requests(url: str, body: bytes, headers: dict[str, str], n: int, conns: int) -> None:
    sem = asyncio.Semaphore(conns)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        async def one() -> None:
            async with sem, s.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"got {r.status} under callgrind")
        await asyncio.gather(*(one() for _ in range(n)))


def per_request(pid: int, out: Path, url: str, body: bytes, headers: dict[str, str], n: int, conns: int) -> float:
    """Instructions the process `pid` (started with `wrap`) ran per request, over n requests."""
    asyncio.run(_requests(url, body, headers, WARM, conns))
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    asyncio.run(_requests(url, body, headers, n, conns))
    before = set(out.parent.glob(out.name + "*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        dumps = set(out.parent.glob(out.name + "*")) - before
        total = next((_total(d) for d in sorted(dumps, key=os.path.getmtime)), None) if dumps else None
        if total is not None:
            return total / n
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def _total(dump: Path) -> int | None:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return None
