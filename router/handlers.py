"""HTTP handlers: thin, each hands off to normalize, plan and the proxy."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from router.errors import RouterError
from router.exchange import EXCHANGE
from router.metrics import UNKNOWN
from router.normalize import normalize
from router.candidates import plan
from router.proxy import Proxy
from router.reload import Routes
from router.schema import Endpoint

ROUTES = web.AppKey("routes", Routes)
PROXY = web.AppKey("proxy", Proxy)
STARTED = int(time.time())


async def _generate(request: web.Request, endpoint: str) -> web.StreamResponse:
    ex = request[EXCHANGE]
    ex.endpoint = endpoint
    table = request.app[ROUTES].table
    limit = table.settings.max_body_bytes
    if (request.content_length or 0) > limit:
        raise _too_large(limit)
    raw = await request.read()
    if len(raw) > limit:
        raise _too_large(limit)
    norm = normalize(endpoint, raw)
    ex.stream = norm.stream
    if norm.names[0] in table.groups:
        ex.model = norm.names[0]
    candidates = plan(table, norm.names)
    return await request.app[PROXY].serve(request, ex, norm, candidates)


def _too_large(limit: int) -> RouterError:
    return RouterError(413, f"The request body is larger than this proxy accepts ({limit} bytes).",
                       code="request_too_large")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, Endpoint.COMPLETIONS)


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, Endpoint.CHAT)


async def models(request: web.Request) -> web.Response:
    table = request.app[ROUTES].table
    data = [{"id": name, "object": "model", "created": STARTED, "owned_by": "router"} for name in table.groups]
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    routes = request.app[ROUTES]
    checks = {"config": f"generation {routes.table.generation} loaded"}
    if routes.last_error:
        checks["config_reload"] = "last reload refused: " + routes.last_error.splitlines()[0]
    return web.json_response({"status": "ready", "checks": checks})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
