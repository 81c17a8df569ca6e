"""Cogito (Decart): OpenAI-like, with `ignore_eos`, catalog-suffixed model ids and
`cached_input_tokens` in chat usage."""

from __future__ import annotations

from typing import Any

from providers.base import COMMON_FIELDS, Adapter
from router.schema import Endpoint


class CogitoAdapter(Adapter):
    kind = "cogito"
    paths = {Endpoint.COMPLETIONS: "/v1/completions", Endpoint.CHAT: "/v1/chat/completions"}
    takes = {
        Endpoint.COMPLETIONS: COMMON_FIELDS | {"prompt", "ignore_eos"},
        Endpoint.CHAT: COMMON_FIELDS | {"messages", "tools", "tool_choice", "response_format"},
    }

    def fix_response(self, endpoint: str, data: dict[str, Any]) -> None:
        _cached_tokens(data.get("usage"))

    def fix_chunk(self, endpoint: str, data: dict[str, Any]) -> None:
        usage = data.get("usage")
        if usage:
            _cached_tokens(usage)


def _cached_tokens(usage: Any) -> None:
    """Cogito reports `cached_input_tokens`; OpenAI's name is prompt_tokens_details.cached_tokens."""
    if isinstance(usage, dict) and "cached_input_tokens" in usage:
        usage.setdefault("prompt_tokens_details", {"cached_tokens": usage["cached_input_tokens"]})
