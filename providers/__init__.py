"""Vendor adapters. REGISTRY is the one place vendor kinds are listed."""

from providers.base import Adapter, ProviderSettings
from providers.cogito import CogitoAdapter
from providers.interactive import InteractiveAdapter
from providers.nebius import NebiusAdapter
from providers.openai_compat import OpenAIAdapter
from providers.poolside import PoolsideAdapter

REGISTRY: dict[str, type[Adapter]] = {
    a.kind: a for a in (CogitoAdapter, PoolsideAdapter, NebiusAdapter, InteractiveAdapter, OpenAIAdapter)
}

__all__ = ["REGISTRY", "Adapter", "ProviderSettings"]
