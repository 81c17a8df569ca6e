"""create_app(): routes, middleware and one cleanup_ctx per resource; no logic here."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from aiohttp import web

from router.background import Background
from router.access_log import ACCESS_LOG, AccessLog
from router.drain import DRAIN, Drain
from router.edge import METRICS, edge
from router.handlers import PROXY, ROUTES, STATE, add_routes
from router.leases import renew_leases
from router.metrics import Metrics
from router.proxy import Proxy
from router.reload import Routes, install_sighup
from router.routes import RouteTable, load
from router.settings import SETTINGS, ServeSettings
from router.backends import create_state
from router.upstream import Upstream
from router.state import StateSettings

# aiohttp reads the whole body before a handler runs; the routes table's own (reloadable)
# max_body_bytes is enforced in the handler, this only bounds the worst case.
HARD_BODY_CAP = 64 * 1024 * 1024


def create_app(settings: ServeSettings, table: RouteTable | None = None, *,
               watch: bool | None = None, access_log: AccessLog | None = None) -> web.Application:
    """The proxy app. Without `table`, it loads `settings.config_path`; it watches that file
    for edits unless `watch` is false (the default when a table is handed in)."""
    metrics = Metrics()
    watch = table is None if watch is None else watch
    app = web.Application(middlewares=[edge], client_max_size=HARD_BODY_CAP, handler_args={"access_log": None})
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[ACCESS_LOG] = access_log or AccessLog()
    app[ROUTES] = Routes(table or load(settings.config_path), settings.config_path if watch else None, metrics)
    add_routes(app)
    app.router.add_get("/metrics", metrics_handler)
    app[DRAIN] = drain = Drain(settings.shutdown_grace_s)
    app.on_shutdown.append(drain.begin)
    app.cleanup_ctx.append(drain.ctx)
    app.cleanup_ctx.append(_shared_state)
    app.cleanup_ctx.append(_upstream)
    app.cleanup_ctx.append(renew_leases)
    if watch:
        app.cleanup_ctx.append(_reloader)
    return app


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), content_type="text/plain", charset="utf-8")


async def _shared_state(app: web.Application) -> AsyncIterator[None]:
    """Limits and health: Redis when REDIS_URL is set, else this process alone."""
    settings = app[SETTINGS]
    state_settings = StateSettings(fail_open=settings.fail_open, redis_timeout_s=settings.redis_timeout_s,
                                   concurrency_lease_s=settings.concurrency_lease_s,
                                   admit_ahead=settings.admit_ahead, admit_ahead_s=settings.admit_ahead_s)
    state = create_state(settings.redis_url, state_settings, app[METRICS])
    app[STATE] = state
    app[DRAIN].on_idle.append(state.send_now)
    yield
    await state.close()


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    """One pool of keep-alive connections for every upstream call; per-attempt timeouts are
    set by the proxy."""
    upstream = Upstream(limit_per_host=app[SETTINGS].upstream_connections)
    app[PROXY] = Proxy(upstream, app[METRICS], app[STATE])
    yield
    await upstream.close()


async def _reloader(app: web.Application) -> AsyncIterator[None]:
    routes = app[ROUTES]
    task = asyncio.create_task(routes.watch(app[SETTINGS].reload_interval_s))
    signals = Background()
    undo = install_sighup(asyncio.get_running_loop(), routes, signals)
    yield
    undo()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await signals.drain(5.0)
