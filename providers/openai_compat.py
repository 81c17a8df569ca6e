"""Any OpenAI-compatible upstream: base_url as OpenAI's SDK takes it (ending in /v1)."""

from providers.base import Adapter


class OpenAIAdapter(Adapter):
    """OpenAI's API has no way to continue an assistant message, but servers that speak it
    often do: `options: {chat_prefix: continue_final_message}` (vLLM, SGLang) or `prefix`
    (Mistral) says how, and lets a broken chat stream resume there."""

    kind = "openai"
    options_allowed = frozenset({"chat_prefix"})
