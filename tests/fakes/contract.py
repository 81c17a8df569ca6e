"""The vendors' published contracts as JSON Schema validators.

Every body the proxy sends upstream must validate against the vendor's request schema, and
every body a stand-in answers with against the vendor's response schema; otherwise the tests
would only prove the proxy agrees with fakes we wrote ourselves.

Specs come from tests/specs (copied unchanged from the vendors' pages). Where a spec has no
schema for something the proxy uses, the closest one is derived from it, named with a leading
underscore, and the derivation is said at the function that builds it:
  * chat paths of Poolside, Nebius and Interactive (not in their pages): the vendor's
    completion request/response with `prompt`→`messages` and `text`→`message`;
  * SSE chunks where the spec does not say what they are: the response schema with
    `finish_reason` nullable and `usage` optional. Poolside's spec says its stream is of
    Completion objects, so its completion chunks are checked against Completion itself.
The generic "openai" kind has no spec here: nothing is validated for it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
SPEC_FILES = {
    "cogito": "cogito.openapi.yaml",
    "poolside": "poolside.openapi.yaml",
    "nebius": "nebius.openapi.yaml",
    "interactive": "interactive.openapi.json",
}
UNCHECKED_KINDS = frozenset({"openai"})
MAX_MESSAGE = 300


@dataclass(frozen=True)
class Operation:
    """Schema names (in the spec's components) for one path as the proxy calls it."""

    request: str
    response: str
    chunk: str
    errors: dict[int, str] = field(default_factory=dict)  # documented error bodies by status


def _poolside_errors() -> dict[int, str]:
    # Only 400 is documented, but all of Poolside's errors come from one problem-details
    # framework (the `$schema` links are Huma's), so every error status is held to it.
    return {status: "V1PromptModelError" for status in (400, 401, 404, 422, 429, 500, 503)}


_INTERACTIVE_ERRORS = {status: "ErrorResponse" for status in (400, 401, 429, 500)}

OPERATIONS: dict[str, dict[str, Operation]] = {
    "cogito": {
        "/v1/completions": Operation("CompletionRequest", "CompletionResponse", "_CompletionChunk"),
        "/v1/chat/completions": Operation("ChatCompletionRequest", "ChatCompletionResponse", "_ChatChunk"),
    },
    "poolside": {
        "/openai/v1/completions": Operation("CreateCompletionBody", "Completion", "Completion", _poolside_errors()),
        "/openai/v1/chat/completions": Operation("_ChatRequest", "_ChatResponse", "_ChatChunk", _poolside_errors()),
    },
    "nebius": {
        "/v1/completions": Operation(
            "CompletionRequest", "CompletionResponse", "_CompletionChunk", {422: "HTTPValidationError"}
        ),
        "/v1/chat/completions": Operation("_ChatRequest", "_ChatResponse", "_ChatChunk", {422: "HTTPValidationError"}),
    },
    "interactive": {
        "/api/v1/completions": Operation(
            "CompletionCreateParams", "CompletionResponse", "_CompletionChunk", _INTERACTIVE_ERRORS
        ),
        "/api/v1/chat/completions": Operation("_ChatRequest", "_ChatResponse", "_ChatChunk", _INTERACTIVE_ERRORS),
    },
}
# The completion operation each vendor's derived schemas start from.
_BASES = {
    "cogito": ("CompletionRequest", "CompletionResponse"),
    "poolside": ("CreateCompletionBody", "Completion"),
    "nebius": ("CompletionRequest", "CompletionResponse"),
    "interactive": ("CompletionCreateParams", "CompletionResponse"),
}


def load_spec(kind: str) -> dict[str, Any]:
    """The spec document as published (YAML or JSON)."""
    text = (SPECS_DIR / SPEC_FILES[kind]).read_text(encoding="utf-8")
    return json.loads(text) if SPEC_FILES[kind].endswith(".json") else yaml.safe_load(text)


def nullable_to_null(node: Any) -> Any:
    """Rewrite OpenAPI 3.0's `nullable: true` into JSON Schema's way of allowing null."""
    if isinstance(node, list):
        return [nullable_to_null(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: nullable_to_null(value) for key, value in node.items()}
    if out.pop("nullable", False) is True:
        if "type" in out and not any(k in out for k in ("$ref", "oneOf", "anyOf", "allOf")):
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*types, "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def _resolve(schemas: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `node`, following one local `$ref` if it is one."""
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        return copy.deepcopy(schemas[ref.rsplit("/", 1)[1]])
    return copy.deepcopy(node)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _chat_request(schemas: dict[str, Any], base: str) -> dict[str, Any]:
    """A chat request for a vendor that documents only completions: its completion request
    with `prompt` (and prompt-only fields) replaced by a required `messages` list."""
    schema = copy.deepcopy(schemas[base])
    props = schema.setdefault("properties", {})
    for name in ("prompt", "suffix", "echo", "best_of"):
        props.pop(name, None)
    props["messages"] = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "object", "required": ["role"], "properties": {"role": {"type": "string"}}},
    }
    schema["required"] = [r for r in schema.get("required", []) if r != "prompt"] + ["messages"]
    return schema


def _with_choice(
    schemas: dict[str, Any], base: str, content: str, content_schema: dict[str, Any], *, obj: str | None, chunk: bool
) -> dict[str, Any]:
    """The response schema `base` with its choice's text/message swapped for `content`;
    as a chunk, `finish_reason` may be null and `usage` may be absent."""
    schema = copy.deepcopy(schemas[base])
    props = schema["properties"]
    choice = _resolve(schemas, props["choices"]["items"])
    choice_props = choice.setdefault("properties", {})
    for name in ("text", "message", "delta"):
        choice_props.pop(name, None)
    choice_props[content] = content_schema
    required = [r for r in choice.get("required", []) if r not in ("text", "message", "delta")]
    choice["required"] = [*required, content]
    if chunk and "finish_reason" in choice_props:
        choice_props["finish_reason"] = _nullable(choice_props["finish_reason"])
    props["choices"] = {**props["choices"], "items": choice}
    if obj is not None:
        props["object"] = {"type": "string", "const": obj}
    if chunk:
        schema["required"] = [r for r in schema.get("required", []) if r != "usage"]
    return schema


_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {"role": {"const": "assistant"}, "content": {"type": ["string", "null"]}},
}
_DELTA = {"type": "object", "properties": {"role": {"const": "assistant"}, "content": {"type": ["string", "null"]}}}


def prepared_spec(kind: str) -> dict[str, Any]:
    """The spec with nulls made JSON Schema and the derived `_` schemas added to its components."""
    doc = load_spec(kind)
    if str(doc.get("openapi", "")).startswith("3.0"):
        doc = nullable_to_null(doc)
    schemas: dict[str, Any] = doc["components"]["schemas"]
    request, response = _BASES[kind]
    text = {"type": "string"}
    if kind == "cogito":  # Cogito documents chat; only its chunks are derived
        chat_response = "ChatCompletionResponse"
    else:
        schemas["_ChatRequest"] = _chat_request(schemas, request)
        schemas["_ChatResponse"] = _with_choice(schemas, response, "message", _MESSAGE, obj="chat.completion", chunk=False)
        chat_response = "_ChatResponse"
    schemas["_CompletionChunk"] = _with_choice(schemas, response, "text", text, obj=None, chunk=True)
    schemas["_ChatChunk"] = _with_choice(schemas, chat_response, "delta", _DELTA, obj="chat.completion.chunk", chunk=True)
    return doc


@cache
def _validator(kind: str, schema_name: str) -> Draft202012Validator:
    uri = f"urn:vendor-spec:{kind}"
    registry: Registry = Registry().with_resource(uri, Resource(contents=_prepared(kind), specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{uri}#/components/schemas/{schema_name}"}, registry=registry)


@cache
def _prepared(kind: str) -> dict[str, Any]:
    return prepared_spec(kind)


def _errors(kind: str, what: str, schema_name: str, body: Any) -> list[str]:
    out = []
    for error in sorted(_validator(kind, schema_name).iter_errors(body), key=lambda e: list(e.absolute_path)):
        message = error.message if len(error.message) <= MAX_MESSAGE else error.message[:MAX_MESSAGE] + "..."
        out.append(f"{kind} {what} ({schema_name}) at {error.json_path}: {message}")
    return out


def _operation(kind: str, path: str) -> Operation | None:
    return OPERATIONS[kind].get(path)


def validate_request(kind: str, path: str, body: Any) -> list[str]:
    """Why `body`, sent to `path` of vendor `kind`, breaks the vendor's request schema ([] if it doesn't)."""
    if kind in UNCHECKED_KINDS:
        return []
    operation = _operation(kind, path)
    if operation is None:
        return [f"{kind} has no operation at {path} (known: {sorted(OPERATIONS[kind])})"]
    return _errors(kind, f"request to {path}", operation.request, body)


def validate_response(kind: str, path: str, body: Any, *, status: int = 200, chunk: bool = False) -> list[str]:
    """Why a JSON `body` answered from `path` breaks the vendor's response schema.

    `chunk=True` checks one SSE event's JSON; error statuses are checked only where the vendor
    documents a body for that status.
    """
    if kind in UNCHECKED_KINDS:
        return []
    operation = _operation(kind, path)
    if operation is None:
        return [f"{kind} has no operation at {path}"]
    if 200 <= status < 300:
        name = operation.chunk if chunk else operation.response
    elif status in operation.errors:
        name = operation.errors[status]
    else:
        return []  # no documented body for this status
    what = f"{'SSE chunk' if chunk else f'{status} response'} from {path}"
    return _errors(kind, what, name, body)
