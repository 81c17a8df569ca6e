"""Poolside: one string prompt per call, `stop` only as a list, problem-details errors.

A list of prompts is sent as one call per prompt and the answers stitched back into one
(router/split.py); token ids, which Poolside does not take, are refused naming `prompt`, so
the proxy falls over to a target that takes them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from providers.base import Adapter, _str
from providers.fields import CHAT, COMPLETIONS, TEXT, chat_like
from router.schema import Endpoint

# CreateCompletionBody, but for `prompt` and `stop`, which `translate` rewrites.
_COMPLETION_FIELDS = frozenset({
    "model", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "seed", "min_p", "top_k", "include_stop_str_in_output",
    "skip_special_tokens", "return_tokens_as_token_ids", "cache_control",
})
_STOP = "a string as a one-item list"


class PoolsideAdapter(Adapter):
    kind = "poolside"
    paths = {Endpoint.COMPLETIONS: "/openai/v1/completions", Endpoint.CHAT: "/openai/v1/chat/completions"}
    # The chat path is not in Poolside's pages: assumed OpenAI's, taking what its completions take.
    takes = {COMPLETIONS: _COMPLETION_FIELDS, CHAT: chat_like(_COMPLETION_FIELDS)}
    renames: ClassVar[dict[str, dict[str, str]]] = {}
    prompt_shapes = frozenset({TEXT})
    translates = {COMPLETIONS: {"prompt": "a list: one call per prompt; token ids refused", "stop": _STOP},
                  CHAT: {"stop": _STOP}}

    def translate(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        # OpenAI reads null as "not set" (LangChain's OpenAI sends `seed: null`); Poolside's
        # schema types are not nullable.
        for name in [k for k, v in body.items() if v is None]:
            del body[name]
        stop = body.get("stop")
        if isinstance(stop, str):
            body["stop"] = [stop]
        return body

    def fix_response(self, endpoint: str, data: dict[str, Any]) -> None:
        """`$schema` is Poolside's own bookkeeping (a link to its JSON Schema): nothing to an OpenAI client."""
        data.pop("$schema", None)

    def fix_chunk(self, endpoint: str, data: dict[str, Any]) -> None:
        """Poolside's stream chunks are whole Completion objects, whose `finish_reason` is a
        string: "" there means "not finished yet", which OpenAI writes as null."""
        data.pop("$schema", None)
        for choice in data.get("choices") or ():
            if choice.get("finish_reason") == "":
                choice["finish_reason"] = None

    def error_fields(self, status: int, body: Any) -> tuple[str | None, str | None, str | None]:
        if isinstance(body, dict) and ("title" in body or "detail" in body) and "error" not in body:
            param = None
            errors = body.get("errors")
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                loc = _str(errors[0].get("location")) or ""
                param = loc.removeprefix("body.") or None
            message = _str(body.get("detail")) or _str(body.get("title"))
            return message, _str(body.get("code")), param
        return super().error_fields(status, body)
