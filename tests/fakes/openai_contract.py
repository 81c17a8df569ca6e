"""OpenAI's own response schemas as validators: what the proxy promises its clients.

`tests/specs/openai.schemas.json` is copied unchanged from the shared vendor specs (the closure
of OpenAI's completion, chat, stream, error and model-list schemas, cut from OpenAI's published
OpenAPI document). Its few OpenAPI 3.0 `nullable: true` are read as "or null". One schema is
derived, as the spec's README says: OpenAI's own text-completion streams send
`finish_reason: null` and `usage: null`, which `CreateCompletionResponse` (shared by whole
answers and chunks) does not allow, so `_CompletionChunk` allows those two.

`CheckedTransport` is an httpx transport for the official SDK: it reads every answer the proxy
gives the client (JSON bodies, each SSE event, error bodies and in-band error events) and
records each way one breaks the schema for its path.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from functools import cache
from typing import Any

import httpx2 as httpx
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.fakes.contract import MAX_MESSAGE, SPECS_DIR, nullable_to_null

URI = "urn:openai-schemas"
# Path -> (schema of a whole answer, schema of one stream chunk).
ANSWERS: dict[str, tuple[str, str | None]] = {
    "/v1/completions": ("CreateCompletionResponse", "_CompletionChunk"),
    "/v1/chat/completions": ("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse"),
    "/v1/models": ("ListModelsResponse", None),
    "/v1/models/": ("ListModelsResponse", None),
}


@cache
def _doc() -> dict[str, Any]:
    doc = nullable_to_null(json.loads((SPECS_DIR / "openai.schemas.json").read_text(encoding="utf-8")))
    schemas = doc["components"]["schemas"]
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    choice = chunk["properties"]["choices"]["items"]
    choice["properties"]["finish_reason"] = {"anyOf": [choice["properties"]["finish_reason"], {"type": "null"}]}
    chunk["properties"]["usage"] = {"anyOf": [chunk["properties"]["usage"], {"type": "null"}]}
    schemas["_CompletionChunk"] = chunk
    return doc


@cache
def validator(name: str) -> Draft202012Validator:
    registry: Registry = Registry().with_resource(URI, Resource(contents=_doc(), specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{URI}#/components/schemas/{name}"}, registry=registry)


def errors(name: str, body: Any, what: str) -> list[str]:
    """Why `body` breaks OpenAI's schema `name` ([] if it does not)."""
    out = []
    for error in sorted(validator(name).iter_errors(body), key=lambda e: list(e.absolute_path)):
        message = error.message if len(error.message) <= MAX_MESSAGE else error.message[:MAX_MESSAGE] + "..."
        out.append(f"{what} ({name}) at {error.json_path}: {message}")
    return out


def schema_for(path: str, status: int, chunk: bool) -> str | None:
    """The schema an answer from `path` must meet; None where OpenAI defines none (/healthz)."""
    if status >= 400:
        return "ErrorResponse"
    if path.startswith("/v1/models/") and path != "/v1/models/":
        return "Model"
    names = ANSWERS.get(path)
    if names is None:
        return None
    return names[1] if chunk else names[0]


def check_answer(path: str, status: int, content_type: str, raw: bytes, complete: bool) -> list[str]:
    """Every way one HTTP answer breaks OpenAI's schemas: a JSON body, or each SSE event."""
    if content_type.startswith("text/event-stream"):
        out: list[str] = []
        events = raw.replace(b"\r\n", b"\n").split(b"\n\n")
        if not complete:
            events = events[:-1]   # the client stopped reading: the last event may be cut
        for i, event in enumerate(events):
            data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
            if not data or data == b"[DONE]":
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                out.append(f"SSE event {i} from {path} is not JSON: {data[:100]!r}")
                continue
            name = "ErrorResponse" if isinstance(obj, dict) and "error" in obj else schema_for(path, status, True)
            if name:
                out.extend(errors(name, obj, f"SSE event {i} from {path}"))
        return out
    name = schema_for(path, status, False)
    if name is None or not complete:
        return []
    try:
        body = json.loads(raw)
    except ValueError:
        return [f"{status} answer from {path} is not JSON: {raw[:100]!r}"]
    return errors(name, body, f"{status} answer from {path}")


class _Tee(httpx.AsyncByteStream):
    """The response body as the client reads it, checked once the client is done with it."""

    def __init__(self, inner: httpx.AsyncByteStream, path: str, status: int, content_type: str,
                 violations: list[str]) -> None:
        self.inner, self.path, self.status, self.content_type = inner, path, status, content_type
        self.violations = violations
        self.buf = bytearray()
        self.complete = False
        self.checked = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self.inner:
            self.buf += part
            yield part
        self.complete = True

    async def aclose(self) -> None:
        await self.inner.aclose()
        if not self.checked:
            self.checked = True
            self.violations.extend(check_answer(self.path, self.status, self.content_type, bytes(self.buf),
                                                self.complete))


class CheckedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that holds every answer it carries to OpenAI's schemas."""

    def __init__(self, violations: list[str]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.violations = violations

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        stream = resp.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        tee = _Tee(stream, request.url.path, resp.status_code, resp.headers.get("content-type", ""), self.violations)
        return httpx.Response(resp.status_code, headers=resp.headers, stream=tee, extensions=resp.extensions)

    async def aclose(self) -> None:
        await self.inner.aclose()
