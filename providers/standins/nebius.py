"""Nebius Token Factory: a FastAPI service, so errors are `{"detail": ...}` (a list of
validation errors with 422, a string otherwise), and every success names its `service_tier`.

`?ai_project_id=` is accepted and recorded. The chat path is not in the vendor's pages; it is
assumed OpenAI-shaped with the same extras as completions.
"""

from __future__ import annotations

from typing import Any, ClassVar

from providers.standins.base import Reply
from providers.standins.dialect import Call, Dialect

CACHED_TOKENS = 2
REQUEST_TIERS = {"default", "flex", "no-limit"}  # `auto` and `over-limit` are answered as chosen tiers
DETAILS = {
    "rate_limit": "Rate limit exceeded for this model. Please retry later or use service_tier=flex.",
    "server_error": "Internal server error",
    "auth": "Invalid API key",
    "not_found": "Not Found",
}


class NebiusDialect(Dialect):
    kind: ClassVar[str] = "nebius"
    prefix: ClassVar[str] = "/v1"
    # CompletionRequest takes `n` (its chat is assumed alike); no tools or response_format.
    features: ClassVar[dict[str, frozenset[str]]] = {"completions": frozenset({"n"}), "chat": frozenset({"n"})}
    statuses: ClassVar[dict[str, int]] = {**Dialect.statuses, "bad_request": 422}

    def error(self, call: Call, kind: str, param: str | None) -> tuple[int, dict[str, Any]]:
        status = self.statuses[kind]
        if kind == "bad_request":
            missing = param is not None and param not in call.body
            detail: Any = [{
                "loc": ["body", param] if param else ["body"],
                "msg": "Field required" if missing else "Input should be valid",
                "type": "missing" if missing else "value_error",
            }]
        elif kind == "model_not_found":
            detail = f"The model `{call.model}` does not exist."
        elif kind == "context_length":
            detail = call.message(kind)
        else:
            detail = DETAILS[kind]
        return status, {"detail": detail}

    def service_tier(self, call: Call) -> str:
        tier = call.body.get("service_tier")
        return tier if tier in REQUEST_TIERS else "default"

    def usage(self, call: Call, reply: Reply) -> dict[str, Any]:
        usage = super().usage(call, reply)
        usage["prompt_tokens_details"] = {"cached_tokens": min(CACHED_TOKENS, reply.prompt_tokens)}
        return usage

    def extras(self, call: Call) -> dict[str, Any]:
        return {"service_tier": self.service_tier(call)}
