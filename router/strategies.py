"""Strategies: how one model group orders its targets for one request.

A strategy is a plain function `(targets, health, norm) -> ordered targets`, registered
by name in STRATEGIES; routes.yaml names it per model group (or a rule overrides it).
`health` maps a target id to anything shaped like health.TargetHealth; a target with no
entry is unknown, which counts as healthy. Putting unusable targets last is the
planner's job (candidates.plan), across groups, so strategies only rank.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from router.health import latency_for
from router.normalize import Normalized

if TYPE_CHECKING:
    from router.table import Target

# Without a request to reckon by (planning offline), the cost strategy assumes this many
# output tokens; a request's own Normalized.max_tokens already carries the routes default.
ASSUMED_OUTPUT_TOKENS = 1024


class Health(Protocol):
    """What a strategy may read about a target (router.health.TargetHealth has it all)."""

    @property
    def state(self) -> str: ...            # "closed" | "open" | "half_open"
    @property
    def latency_ewma(self) -> float | None: ...   # seconds to a whole non-stream answer
    @property
    def ttft_ewma(self) -> float | None: ...      # seconds to a stream's first token
    @property
    def error_rate(self) -> float: ...
    @property
    def consecutive_failures(self) -> int: ...
    @property
    def usable(self) -> bool: ...


HealthMap = Mapping[str, Health]
Strategy = Callable[["Sequence[Target]", HealthMap, "Normalized | None"], "list[Target]"]


def usable(target_id: str, health: HealthMap) -> bool:
    h = health.get(target_id)
    return h is None or h.usable


def fallback(targets: Sequence[Target], health: HealthMap, norm: Normalized | None) -> list[Target]:
    """Config order."""
    return list(targets)


def weighted(targets: Sequence[Target], health: HealthMap, norm: Normalized | None) -> list[Target]:
    """A random order where each target comes first with probability weight / total weight
    (Efraimidis-Spirakis: sort by u ** (1/w)); weight 0 targets only ever come last."""
    def draw(t: Target) -> float:
        return random.random() ** (1.0 / t.weight) if t.weight > 0 else -1.0
    return sorted(targets, key=draw, reverse=True)


def latency(targets: Sequence[Target], health: HealthMap, norm: Normalized | None) -> list[Target]:
    """Lowest recent latency first, stretched by the error rate: latency / (1 - error_rate).
    A stream is judged by time to first token, anything else by the whole answer (see
    health.latency_for). A target not yet measured goes first, so it gets measured."""
    stream = norm is not None and norm.stream

    def score(t: Target) -> float:
        h = health.get(t.id)
        if h is None or (measured := latency_for(h, stream)) is None:
            return -1.0
        return measured / max(0.05, 1.0 - h.error_rate)
    return sorted(targets, key=score)


def estimated_cost(t: Target, norm: Normalized | None) -> float:
    """USD for this request at `t`'s prices, or inf when it has none."""
    if t.price is None:
        return float("inf")
    prompt = norm.prompt_tokens if norm is not None else 0
    output = (norm.max_tokens if norm is not None else None) or ASSUMED_OUTPUT_TOKENS
    output *= norm.choices if norm is not None else 1
    return (prompt * t.price.input + output * t.price.output) / 1e6


def cost(targets: Sequence[Target], health: HealthMap, norm: Normalized | None) -> list[Target]:
    """Cheapest first for this request's estimated prompt and output tokens; ties keep config order."""
    return sorted(targets, key=lambda t: estimated_cost(t, norm))


STRATEGIES: dict[str, Strategy] = {
    "fallback": fallback,
    "weighted": weighted,
    "latency": latency,
    "cost": cost,
}


def strategy_problems(path: str, strategy: str, models: Sequence[Any]) -> list[str]:
    """Load-time check of a strategy name for the model groups (configs) it will order."""
    if strategy not in STRATEGIES:
        return [f"{path}: unknown strategy '{strategy}' (one of: {', '.join(STRATEGIES)})"]
    if strategy == "cost" and any(t.price is None for m in models for t in m.targets):
        return [f"{path}: 'cost' needs a price on every target it orders"]
    return []
