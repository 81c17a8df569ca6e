"""The compiled parts of a routes table that strategies and the planner work on.

Kept apart from router.routes (which builds them) so that modules the build imports, such
as router.strategies, can name a Target without importing the builder back.
"""

from __future__ import annotations

from dataclasses import dataclass

from providers import Adapter
from router.config import Hedge, Price, Resume, Retry
from router.limits import LimitSpec


@dataclass(frozen=True, slots=True)
class Target:
    """One place a public model can be served; `id` is a bounded metric label."""

    id: str
    provider: str
    model: str
    adapter: Adapter
    weight: float
    price: Price | None
    limits: LimitSpec | None
    timeout_s: float
    connect_timeout_s: float
    idle_timeout_s: float = 60.0      # longest upstream silence between events, or in a body


@dataclass(frozen=True, slots=True)
class ModelGroup:
    name: str
    targets: tuple[Target, ...]
    strategy: str
    limits: LimitSpec | None
    deadline_s: float
    max_attempts: int
    retry: Retry
    max_output_tokens: int
    resume: Resume | None = None
    hedge: Hedge | None = None
