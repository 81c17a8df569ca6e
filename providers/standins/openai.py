"""A generic OpenAI-compatible upstream: OpenAI's paths under /v1, OpenAI's bodies and errors.

It needs nothing beyond the defaults in `Dialect`, which are OpenAI's; it exists as its own
kind so the proxy's catch-all "any OpenAI-compatible upstream" adapter has something to talk to.
"""

from __future__ import annotations

from typing import ClassVar

from providers.standins.dialect import Dialect


class OpenAIDialect(Dialect):
    """OpenAI's API as documented: base URL ends in /v1."""

    kind: ClassVar[str] = "openai"
    prefix: ClassVar[str] = "/v1"
