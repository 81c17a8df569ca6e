"""HTTP handlers: thin, each hands off to keys, normalize, rules, plan and the proxy."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from router import openapi
from router.bodies import arrived
from router.candidates import check_output_ceiling, plan, target_ids
from router.drain import DRAIN
from router.edge import answer
from router.errors import RouterError, model_not_found
from router.exchange import EXCHANGE
from router.keys import ClientKey
from router.limits import Admission
from router.normalize import normalize
from router.proxy import Proxy
from router.reload import Routes
from router.routes import RouteTable
from router.schema import Endpoint
from router.settings import SETTINGS
from router.state import SharedState


ROUTES = web.AppKey("routes", Routes)
PROXY = web.AppKey("proxy", Proxy)
STATE = web.AppKey("state", SharedState)
STARTED = int(time.time())


def _authenticate(request: web.Request, table: RouteTable) -> ClientKey | None:
    """The caller's key (None when the table has no `keys:`, i.e. the proxy is open); 401 otherwise."""
    if table.keys is None:
        return None
    key = table.keys.authenticate(request.headers.get("Authorization"))
    request[EXCHANGE].key = key.name
    return key


async def _generate(request: web.Request, endpoint: str) -> web.StreamResponse:
    ex = request[EXCHANGE]
    ex.endpoint = endpoint
    app = request.app
    table = app[ROUTES].table
    key = _authenticate(request, table)
    raw = await _read_body(request, table.settings.max_body_bytes)
    norm = normalize(endpoint, raw, table.settings.default_max_tokens)
    ex.stream = norm.stream
    if app[SETTINGS].log_prompts:
        ex.prompt = norm.body.get("messages", norm.body.get("prompt"))
    if key is not None:
        key.check_models(norm.names)
    decision = table.rules.decide(norm, key.name if key is not None else None, request.headers)
    names = decision.names
    if names[0] in table.groups:
        ex.model = names[0]
    ids = target_ids(table, names)
    check_output_ceiling(table, names, norm)
    group = table.groups[names[0]]
    tokens = norm.reserve_tokens
    admission = Admission(key.name if key else None, key.limits if key else None, key.budget if key else None,
                          group.name, group.limits, tokens)
    proxy = app[PROXY]
    grant, health = await app[STATE].admit(admission, ids)
    ex.headers = grant.headers
    ex.grant = grant
    try:
        candidates = plan(table, names, norm, health, decision.strategy)
        response = await proxy.serve(request, ex, norm, candidates, health, tokens)
        await answer(request, ex, response)
        return response
    finally:
        proxy.settle(ex, grant)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (a chunked body has no length)."""
    if (request.content_length or 0) > limit:
        raise _too_large(limit)
    content = request.content
    whole = arrived(content, limit)
    if whole is not None:
        return whole
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> RouterError:
    return RouterError(413, f"The request body is larger than this proxy accepts ({limit} bytes).",
                       code="request_too_large")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, Endpoint.COMPLETIONS)


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, Endpoint.CHAT)


def _model(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": STARTED, "owned_by": "router"}


async def models(request: web.Request) -> web.Response:
    """The public models; with keys on, only those the caller's key may use."""
    table = request.app[ROUTES].table
    key = _authenticate(request, table)
    data = [_model(name) for name in table.groups if key is None or key.allows(name)]
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")


async def model(request: web.Request) -> web.Response:
    """One public model (the SDKs' `models.retrieve`); a model the caller's key may not use
    is as unknown to it as one that does not exist."""
    table = request.app[ROUTES].table
    key = _authenticate(request, table)
    name = request.match_info["id"]
    if name not in table.groups or (key is not None and not key.allows(name)):
        raise model_not_found(name)
    return web.Response(body=orjson.dumps(_model(name)), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready while a routes table is loaded and shared state can admit requests; a Redis
    outage with limits failing open is reported but still ready (the proxy serves)."""
    routes = request.app[ROUTES]
    if request.app[DRAIN].draining:
        return web.json_response({"status": "not ready", "checks": {"process": "shutting down"}}, status=503)
    ok, state = await request.app[STATE].ready()
    checks = {"config": f"generation {routes.table.generation} loaded", "state": state}
    if routes.last_error:
        checks["config_reload"] = "last reload refused: " + routes.last_error.splitlines()[0]
    return web.json_response({"status": "ready" if ok else "not ready", "checks": checks},
                             status=200 if ok else 503)


def add_routes(app: web.Application) -> None:
    spec = openapi.encoded()   # once: it depends on the wire models, not on a request or the table

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=spec, content_type="application/json")

    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/", models)
    app.router.add_get("/v1/models/{id:.+}", model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
