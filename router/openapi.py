"""The proxy's own API as an OpenAPI 3.1 document, served at GET /openapi.json.

The request bodies are the pydantic wire models of router.schema, so the document cannot
drift from what the proxy validates; the rest (the error shape, the model list) is small and
written here. It is built once, when the routes are added: nothing in it depends on a request.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic.json_schema import models_json_schema

from router.schema import ChatRequest, CompletionRequest

_REF = "#/components/schemas/{model}"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {
            "message": {"type": "string", "description": "What went wrong and what to change."},
            "type": {"type": "string"},
            "param": {"type": ["string", "null"], "description": "The request field at fault, if one is."},
            "code": {"type": ["string", "null"]},
        },
    }},
}

_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                   "owned_by": {"type": "string"}},
}

_MODEL_LIST = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {"$ref": _REF.format(model="Model")}}},
}

# A generation's success is the vendor's answer translated to OpenAI's shape: only its frame
# is promised here (OpenAI's own schemas hold the rest), so any conforming answer fits.
_GENERATION = {
    "type": "object",
    "required": ["id", "object", "choices"],
    "properties": {"id": {"type": "string"}, "object": {"type": "string"}, "model": {"type": "string"},
                   "choices": {"type": "array", "items": {"type": "object"}}, "usage": {"type": "object"}},
}

# One server-sent event (OpenAPI 3.1 describes an event stream by its events): `data` is a
# chunk in OpenAI's shape, an error object once the stream has begun, or `[DONE]` at the end.
_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}

_ERROR_STATUSES = {
    "400": "The body is not valid JSON, misses a field, or a field has a wrong type or value (`param` names it).",
    "401": "No client key, or an unknown one (when routes.yaml has `keys:`).",
    "403": "The key may not use the model, or a rule denies the request.",
    "404": "An unknown model name (in `model` or `models`).",
    "413": "The body is larger than `settings.max_body_bytes`.",
    "429": "A rate limit or budget: `Retry-After` says when to try again.",
    "502": "Every upstream attempt failed.",
    "503": "Shared state is down and limits fail closed, or no upstream could take the request.",
    "504": "The request's deadline passed before an upstream answered.",
}


def _errors(*statuses: str) -> dict[str, Any]:
    return {s: {"description": _ERROR_STATUSES[s], "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}}
            for s in statuses}


def _generation(summary: str, body: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": _REF.format(model=body)}}}},
        "responses": {
            "200": {"description": "The answer; a server-sent event stream when `stream` is true.",
                    "content": {"application/json": {"schema": {"$ref": _REF.format(model="Generation")}},
                                "text/event-stream": {"schema": _EVENT}}},
            **_errors(*_ERROR_STATUSES),
        },
    }}


def document() -> dict[str, Any]:
    """The OpenAPI document, as a dict."""
    _, defs = models_json_schema([(CompletionRequest, "validation"), (ChatRequest, "validation")], ref_template=_REF)
    schemas = {**defs["$defs"], "Error": _ERROR, "Model": _MODEL, "ModelList": _MODEL_LIST, "Generation": _GENERATION}
    return {
        "openapi": "3.1.0",
        "info": {"title": "router", "version": "1",
                 "description": "An OpenAI-compatible routing proxy. Every error is OpenAI's `{\"error\": {...}}`. "
                                "`max_tokens` and `max_completion_tokens` are also bounded by routes.yaml "
                                "(`max_output_tokens`); fields not listed are passed to vendors that take them."},
        "paths": {
            "/v1/completions": _generation("A text completion", "CompletionRequest"),
            "/v1/chat/completions": _generation("A chat completion", "ChatRequest"),
            "/v1/models": {"get": {"summary": "The public model names this proxy serves (and this key may use)",
                                   "responses": {"200": {"description": "The models.", "content": {
                                       "application/json": {"schema": {"$ref": _REF.format(model="ModelList")}}}},
                                       **_errors("401")}}},
            "/v1/models/{id}": {"get": {
                "summary": "One public model (one the caller's key may not use is not found)",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The model.", "content": {
                    "application/json": {"schema": {"$ref": _REF.format(model="Model")}}}},
                    **_errors("401", "404")}}},
        },
        "components": {"schemas": schemas},
    }


def encoded() -> bytes:
    return orjson.dumps(document())
