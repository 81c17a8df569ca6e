"""Nebius Token Factory: FastAPI-style `{detail: ...}` errors (422 `detail[]` for bad
fields), `service_tier`, an optional `ai_project_id` query parameter (provider option), and
one list of token ids per call (a batch of them is split, one call per list)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from providers.base import Adapter, _str, log
from providers.fields import CHAT, COMPLETIONS, TEXT, TEXTS, TOKENS, chat_like
from router.schema import Endpoint

OPENAI_TIERS = frozenset({"auto", "default", "flex", "scale", "priority", "fast"})
NEBIUS_TIERS = frozenset({"auto", "default", "flex", "over-limit", "no-limit"})   # ServiceTier in its spec
_COMPLETION_FIELDS = frozenset({
    "model", "prompt", "stream", "stream_options", "max_tokens", "temperature", "top_p", "n", "logprobs", "echo",
    "stop", "presence_penalty", "frequency_penalty", "logit_bias", "user", "extra_body", "service_tier",
})


class NebiusAdapter(Adapter):
    kind = "nebius"
    paths = {Endpoint.COMPLETIONS: "/v1/completions", Endpoint.CHAT: "/v1/chat/completions"}
    # The chat path is not in Nebius's pages: assumed OpenAI's, taking what its completions
    # take, `max_tokens` its only token limit.
    takes = {COMPLETIONS: _COMPLETION_FIELDS, CHAT: chat_like(_COMPLETION_FIELDS)}
    renames = {COMPLETIONS: {"max_completion_tokens": "max_tokens"}, CHAT: {"max_completion_tokens": "max_tokens"}}
    translates = {COMPLETIONS: {"prompt": "a list of token-id lists: one call per list"}}
    prompt_shapes = frozenset({TEXT, TEXTS, TOKENS})   # one list of token ids, not a batch of them
    options_allowed = frozenset({"ai_project_id"})

    def build_body(self, endpoint: str, body: dict[str, Any], vendor_model: str,
                   want_usage: bool, dropped: list[str] | None = None) -> dict[str, Any]:
        """A tier Nebius does not have (OpenAI's `priority`, `scale`) is a hint it cannot take:
        dropped and counted, as other hints are, rather than sent for a 422."""
        out = super().build_body(endpoint, body, vendor_model, want_usage, dropped)
        tier = out.get("service_tier")
        if tier is not None and tier not in NEBIUS_TIERS:
            del out["service_tier"]
            log.info("dropped service_tier %r for provider %s: not one of its tiers", tier, self.name)
            if dropped is not None:
                dropped.append("service_tier")
        return out

    def query_string(self) -> str:
        project = self.options.get("ai_project_id")
        return "?" + urlencode({"ai_project_id": project}) if project else ""

    def fix_response(self, endpoint: str, data: dict[str, Any]) -> None:
        """Nebius's `service_tier` stays where OpenAI has the same value; its own tiers
        (`over-limit`, `no-limit`) are not OpenAI's and move to `nebius_service_tier`."""
        tier = data.get("service_tier")
        if tier is not None and tier not in OPENAI_TIERS:
            data["nebius_service_tier"] = data.pop("service_tier")

    fix_chunk = fix_response

    def error_fields(self, status: int, body: Any) -> tuple[str | None, str | None, str | None]:
        if isinstance(body, dict) and "detail" in body:
            detail = body["detail"]
            if isinstance(detail, list) and detail and isinstance(detail[0], dict):
                loc = [str(p) for p in detail[0].get("loc") or [] if p != "body"]
                param = ".".join(loc) or None
                return _str(detail[0].get("msg")), None, param
            message = _str(detail)
            code = "context_length_exceeded" if message and "context length" in message else None
            return message, code, None
        return super().error_fields(status, body)
