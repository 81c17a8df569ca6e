"""`router` and `python -m router`: serve, check, explain, demo."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import socket
import sys
from typing import Sequence

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from router.access_log import AccessLog
from router.app import create_app
from router.routes import ConfigError, RouteTable, load
from router.settings import ServeSettings
from router.workers import BACKLOG, listen, refusal, serve_workers, worker_count

log = logging.getLogger("router")
GC_THRESHOLD = 10_000  # allocations between young-generation collections (CPython's default is 700)


class _MalformedHttpInOneLine(logging.Filter):
    """aiohttp refuses a malformed HTTP request (bad header bytes, an over-long line, a bad
    chunk size) with a 400 before any handler runs, and logs a traceback at ERROR each time:
    anyone could flood the log. One WARNING line without the traceback says enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "refused a malformed HTTP request from %s: %s", (
                record.args[0] if isinstance(record.args, tuple) and record.args else "?", exc.message)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def _setup_logging(level: str = "INFO") -> None:
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [errors]
    root.setLevel(level)
    access = logging.getLogger("router.access")
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [out]
    access.propagate = False
    server = logging.getLogger("aiohttp.server")
    server.filters[:] = [_MalformedHttpInOneLine()]


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _load(path: str) -> RouteTable | None:
    """The routes table, or None after printing every problem with its path."""
    try:
        return load(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = ServeSettings.from_env(config_path=args.config, host=args.host, port=args.port)
    except ValueError as exc:
        print(f"router serve: {exc}", file=sys.stderr)
        return 2
    table = _load(settings.config_path)
    if table is None:
        return 2
    try:
        workers = worker_count(args.workers)
    except ValueError as exc:
        print(f"router serve: {exc}", file=sys.stderr)
        return 2
    refused = refusal(table, workers, settings.redis_url)
    if refused is not None:
        print(f"router serve: {refused}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level)
    log.info("serving %d model(s) from %s on http://%s:%d", len(table.groups), settings.config_path,
             settings.host, settings.port)
    if workers == 1:
        _run(settings, table, None)
        return 0
    try:
        sock = listen(settings.host, settings.port)
    except OSError as exc:
        print(f"router serve: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 2
    return serve_workers(workers, sock, lambda s: _run(settings, None, s))


def _run(settings: ServeSettings, table: RouteTable | None, sock: socket.socket | None) -> None:
    """One serving process: its own event loop, app, sessions and Redis connections."""
    # the access log straight to stdout, batched per loop iteration (see access_log.py)
    to_stdout = logging.getLogger("router.access").isEnabledFor(logging.INFO)
    app = create_app(settings, table, watch=True, access_log=AccessLog(sys.stdout.buffer if to_stdout else None))
    # aiohttp's default accept queue (128) drops the SYNs of a burst of new clients, who then
    # wait 1 s or more for TCP to retry: the same queue as the workers' shared socket
    where = {"sock": sock} if sock is not None else {"host": settings.host, "port": settings.port,
                                                      "backlog": BACKLOG}
    # Everything built so far (modules, the routes table, the app) lives as long as the
    # process: keep it out of the collector's scans, and collect the young generation less
    # often (each request allocates a few hundred short-lived objects).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    web.run_app(app, access_log=None, handler_cancellation=True, print=None, loop=_new_loop(),
                shutdown_timeout=settings.shutdown_grace_s, **where)


def cmd_check(args: argparse.Namespace) -> int:
    table = _load(args.path)
    if table is None:
        return 1
    for w in table.warnings:
        print(f"{args.path}: warning: {w}", file=sys.stderr)
    print(f"{args.path}: ok ({len(table.adapters)} providers, {len(table.groups)} models)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from router.demo import run_demo

    _setup_logging(args.log_level)
    asyncio.set_event_loop(_new_loop())
    try:
        asyncio.get_event_loop().run_until_complete(run_demo(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from router.explain import explain

    table = _load(args.config)
    if table is None:
        return 1
    try:
        body = orjson.loads(args.body)
    except orjson.JSONDecodeError as exc:
        print(f"BODY_JSON is not valid JSON: {exc}", file=sys.stderr)
        return 2
    headers = {k.strip(): v.strip() for k, _, v in (h.partition(":") for h in args.header)}
    print(explain(table, body, args.key, args.endpoint, headers))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router", description="OpenAI-compatible routing proxy for LLM vendors.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the proxy")
    s.add_argument("--config", default=None, help="routes file (default: $ROUTER_CONFIG or ./routes.yaml)")
    s.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="listen port (default 8080)")
    s.add_argument("--log-level", default="INFO")
    s.add_argument("--workers", default=os.environ.get("ROUTER_WORKERS", "1"), metavar="N",
                   help="serving processes on the one port: a number, or 'auto' for one per core (default 1)")
    s.set_defaults(func=cmd_serve)
    c = sub.add_parser("check", help="validate a routes file and say exactly what is wrong")
    c.add_argument("path", nargs="?", default="routes.yaml")
    c.set_defaults(func=cmd_check)
    e = sub.add_parser("explain", help="show which targets a request would go to, sending nothing")
    e.add_argument("--config", default="routes.yaml")
    e.add_argument("--key", default=None, help="client key name the request would come with")
    e.add_argument("--endpoint", choices=["completions", "chat"], default=None)
    e.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                   help="a request header, for rules that match on headers (repeatable)")
    e.add_argument("body", metavar="BODY_JSON")
    e.set_defaults(func=cmd_explain)
    d = sub.add_parser("demo", help="start local stand-ins of the four vendors and the proxy in front of them")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--log-level", default="INFO")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
