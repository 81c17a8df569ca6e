"""Cogito (Decart): OpenAI-like, with its own ids, a served model without the catalog suffix,
`cached_input_tokens` in chat usage, and `x-request-id` (plus `x-tokens-used` on chat) headers.

Cogito does not document its error body; the stand-in uses OpenAI's shape with Cogito's
documented `model_not_found` code, which is the most a client may rely on.
"""

from __future__ import annotations

from typing import Any, ClassVar

from providers.standins.base import Fail, Reply
from providers.standins.dialect import Call, Dialect

CACHED_INPUT_TOKENS = 2  # reported on chat usage, so adapters can be tested mapping it


class CogitoDialect(Dialect):
    kind: ClassVar[str] = "cogito"
    prefix: ClassVar[str] = "/v1"
    # Its chat page documents tools, tool_choice and response_format; neither page has `n`.
    features: ClassVar[dict[str, frozenset[str]]] = {
        "completions": frozenset(), "chat": frozenset({"tools", "response_format"}),
    }
    no_content: ClassVar[str | None] = ""  # its chat message `content` is a string
    codes: ClassVar[dict[str, str | None]] = {
        **Dialect.codes,
        "bad_request": "invalid_request_error",
        "server_error": "internal_error",
    }

    def check(self, call: Call) -> Fail | None:
        stop = call.body.get("stop")
        if isinstance(stop, list) and len(stop) > 4:  # the documented "up to 4 stop sequences"
            return Fail("bad_request", param="stop")
        return super().check(call)

    def headers(self, call: Call, reply: Reply | None) -> dict[str, str]:
        headers = {"x-request-id": call.request_id}
        if reply is not None and call.op == "chat":
            headers["x-tokens-used"] = str(reply.prompt_tokens + reply.completion_tokens)
        return headers

    def response_id(self, call: Call) -> str:
        return ("cmpl_" if call.op == "completions" else "req_") + call.request_id

    def served_model(self, call: Call) -> str:
        return call.model.split(":", 1)[0]  # moonshotai/kimi-k2.6:appliedcompute -> moonshotai/kimi-k2.6

    def usage(self, call: Call, reply: Reply) -> dict[str, Any]:
        usage = super().usage(call, reply)
        if call.op == "chat":
            usage["cached_input_tokens"] = min(CACHED_INPUT_TOKENS, reply.prompt_tokens)
        return usage
