"""Interactive AI's LLM router: OpenAI's error shape with all four fields required strings,
numbers typed `number/double` (so `created`, usage and choice `index` are JSON floats), and
router extras: `provider`, `system_fingerprint`, and per-choice `logprobs` (required, null),
`native_finish_reason` and `reasoning`.

Base URL is https://app.interactive.ai/api/v1. The chat path is not in the vendor's pages; it
is assumed OpenAI-shaped with the same extras. `model` may be omitted when `models` is given.
"""

from __future__ import annotations

from typing import Any, ClassVar

from providers.standins.base import Fail
from providers.standins.dialect import Call, Dialect

PROVIDER = "together"  # the upstream the router says it chose
FINGERPRINT = "fp_standin"


class InteractiveDialect(Dialect):
    kind: ClassVar[str] = "interactive"
    prefix: ClassVar[str] = "/api/v1"
    model_required: ClassVar[bool] = False
    # CompletionCreateParams takes `n` and `response_format` (json_object, json_schema and
    # more); its chat is assumed alike. No tools.
    features: ClassVar[dict[str, frozenset[str]]] = {
        "completions": frozenset({"n", "response_format"}), "chat": frozenset({"n", "response_format"}),
    }
    statuses: ClassVar[dict[str, int]] = {**Dialect.statuses, "model_not_found": 400}
    codes: ClassVar[dict[str, str | None]] = {
        **Dialect.codes,
        "server_error": "internal_error",
        "bad_request": "invalid_request_error",
        "not_found": "not_found",
    }

    def check(self, call: Call) -> Fail | None:
        body = call.body
        if not isinstance(body.get("model"), str) and not isinstance(body.get("models"), list):
            return Fail("bad_request", param="model")
        return super().check(call)

    def error(self, call: Call, kind: str, param: str | None) -> tuple[int, dict[str, Any]]:
        status, body = super().error(call, kind, param)
        error = body["error"]
        error["code"] = error["code"] or kind  # every field is a required string
        error["param"] = error["param"] or ""
        return status, body

    def number(self, value: int) -> int | float:
        return float(value)

    def served_model(self, call: Call) -> str:
        models = call.body.get("models")
        if not call.model and isinstance(models, list) and models:
            return str(models[0])
        return call.model

    def extras(self, call: Call) -> dict[str, Any]:
        return {"provider": PROVIDER, "system_fingerprint": FINGERPRINT}

    def choice_extras(self, call: Call, final: bool) -> dict[str, Any]:
        extras: dict[str, Any] = {"logprobs": None}
        if final:
            extras["native_finish_reason"] = "stop"
        extras["reasoning"] = None
        return extras
