"""Any OpenAI-compatible upstream: base_url as OpenAI's SDK takes it (ending in /v1)."""

from providers.base import Adapter


class OpenAIAdapter(Adapter):
    kind = "openai"
