"""Poolside: completions under /openai/v1, Completion objects (no `id`) in JSON and SSE alike,
and RFC 9457 problem details for every error.

Its published schema is strict where OpenAI's is loose: `prompt` is a string only and `stop`
a list only, so the stand-in refuses anything else with a 400, as the real schema would.
The chat path is not in the vendor's pages; it is assumed OpenAI-shaped.
"""

from __future__ import annotations

from typing import Any, ClassVar

from providers.standins.answers import Answer
from providers.standins.base import Fail
from providers.standins.dialect import Call, Dialect

SCHEMAS = "https://api.poolsi.de/openai/schemas/"
TITLES = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
          500: "Internal Server Error"}
# Where each error kind points in the request, for the problem's `errors` list.
LOCATIONS = {"model_not_found": "model", "context_length": "max_tokens"}


class PoolsideDialect(Dialect):
    kind: ClassVar[str] = "poolside"
    prefix: ClassVar[str] = "/openai/v1"
    # CreateCompletionBody has no n, tools or response_format (its chat is assumed alike).
    features: ClassVar[dict[str, frozenset[str]]] = {"completions": frozenset(), "chat": frozenset()}
    statuses: ClassVar[dict[str, int]] = {**Dialect.statuses, "model_not_found": 400}
    codes: ClassVar[dict[str, str | None]] = {
        "model_not_found": "model-not-found",
        "context_length": "max-tokens-exceeded",
    }

    def check(self, call: Call) -> Fail | None:
        body = call.body
        if call.op == "completions" and "prompt" in body and not isinstance(body["prompt"], str):
            return Fail("bad_request", param="prompt")
        stop = body.get("stop", [])
        if not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            return Fail("bad_request", param="stop")
        temperature = body.get("temperature", 1)
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            return Fail("bad_request", param="temperature")
        top_p = body.get("top_p", 1)
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            return Fail("bad_request", param="top_p")
        return super().check(call)

    def error(self, call: Call, kind: str, param: str | None) -> tuple[int, dict[str, Any]]:
        status = self.statuses[kind]
        problem: dict[str, Any] = {
            "$schema": SCHEMAS + "V1PromptModelError.json",
            "title": TITLES.get(status, "Error"),
            "status": status,
            "detail": self._detail(call, kind, param),
        }
        if kind in self.codes:
            problem["code"] = self.codes[kind]
        where = param or LOCATIONS.get(kind)
        if kind in ("bad_request", *LOCATIONS):
            problem["errors"] = [{
                "location": f"body.{where}" if where else "body",
                "message": problem["detail"],
                "value": call.body.get(where) if where else None,
            }]
        problem["type"] = "about:blank"
        problem["instance"] = f"urn:poolside:request:{call.request_id}"
        return status, problem

    def _detail(self, call: Call, kind: str, param: str | None) -> str:
        if kind == "model_not_found":
            return f"model '{call.model}' not found"
        if kind == "context_length":
            return "the prompt plus max_tokens exceeds the model's maximum context length"
        if kind == "bad_request":
            expected = {"prompt": "expected string", "stop": "expected array of strings"}
            return f"validation failed: {expected.get(param or '', 'invalid value')}"
        return call.message(kind, param)

    def error_content_type(self, status: int) -> str:
        # 400 is documented as application/json; the rest use the problem-details type.
        return "application/json" if status == 400 else "application/problem+json"

    def envelope(self, call: Call, chunk: bool) -> dict[str, Any]:
        body = super().envelope(call, chunk)
        if call.op == "completions":
            del body["id"]  # Completion has no `id` in the vendor's schema
        return body

    def unfinished(self, call: Call) -> str | None:
        # Completion chunks are Completion objects, whose finish_reason is a (non-null) string.
        return "" if call.op == "completions" else None

    def success(self, call: Call, reply: Any, answers: list[Answer]) -> dict[str, Any]:
        body = super().success(call, reply, answers)
        if call.op == "completions":
            body = {"$schema": SCHEMAS + "Completion.json", **body}
        return body
