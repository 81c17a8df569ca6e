"""`router serve --workers N`: N processes on one port, each with its own event loop.

The parent binds the port once and forks the workers, which all accept on that socket;
it does no request work itself. It forwards SIGTERM, SIGINT and SIGHUP to every worker
(each reloads routes.yaml itself, atomically), starts a worker again if one dies while
serving, and exits once every worker has stopped. Limits and budgets stay exact across
workers only through Redis, so without REDIS_URL a table that has any is refused.
Metrics are kept in shared files (prometheus_client's multiprocess mode), so /metrics
answers the same sums whichever worker takes the scrape.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import astuple

from router.routes import RouteTable

log = logging.getLogger("router")
RESTART_HOLD_S = 1.0  # a worker that dies at once is not restarted in a tight loop


def worker_count(raw: str) -> int:
    """`auto` (one per core) or a positive number."""
    if raw == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--workers {raw!r}: give a number of processes (1 or more) or 'auto'")
    return n


def _counts(spec: object) -> bool:
    """A limits or budget section that sets at least one number."""
    return spec is not None and any(v is not None for v in astuple(spec))  # type: ignore[call-overload]


def unshared_limits(table: RouteTable) -> list[str]:
    """Where the table counts something per process that must be counted once for all."""
    out = []
    for name, key in (table.keys.by_name.items() if table.keys is not None else []):
        if _counts(key.limits) or _counts(key.budget):
            out.append(f"keys.{name}")
    for name, group in table.groups.items():
        if _counts(group.limits):
            out.append(f"models.{name}.limits")
        out += [f"models.{name}: target {t.id}" for t in group.targets if _counts(t.limits)]
    return out


def refusal(table: RouteTable, workers: int, redis_url: str | None) -> str | None:
    """Why these workers cannot serve this table, or None."""
    if workers <= 1 or redis_url:
        return None
    places = unshared_limits(table)
    if not places:
        return None
    more = f" and {len(places) - 5} more" if len(places) > 5 else ""
    return (f"--workers {workers} without REDIS_URL: the limits or budgets of {', '.join(places[:5])}{more} "
            f"would be counted by each worker on its own, letting {workers}x through. Set REDIS_URL so the "
            "workers share them, or run --workers 1.")


BACKLOG = 2048  # connections waiting to be accepted, per listening socket


def listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def serve_workers(n: int, sock: socket.socket, run_worker: Callable[[socket.socket], None]) -> int:
    """Fork n workers on `sock` and look after them until they have all stopped."""
    metrics_dir = tempfile.mkdtemp(prefix="router-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    workers: dict[int, int] = {}  # pid -> slot
    stopping = False
    forwarded: list[int] = []

    def start(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            code = 0
            try:
                run_worker(sock)
            except BaseException:  # noqa: BLE001 - a worker reports and exits; the parent decides
                log.exception("worker %d failed", slot)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        workers[pid] = slot

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        forwarded.append(sig)
        for pid in list(workers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for slot in range(n):
        start(slot)
    log.info("serving with %d workers on one port (pids %s)", n, ", ".join(map(str, workers)))
    last_restart = 0.0
    status = 0
    while workers:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in workers:
            continue
        slot = workers.pop(pid)
        _mark_dead(pid)
        exit_code = os.waitstatus_to_exitcode(code)
        if stopping:
            status = status or (exit_code if exit_code > 0 else 0)
            continue
        log.warning("worker %d (pid %d) exited with %d; starting it again", slot, pid, exit_code)
        time.sleep(max(0.0, RESTART_HOLD_S - (time.monotonic() - last_restart)))
        last_restart = time.monotonic()
        start(slot)
    sock.close()
    return status


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
