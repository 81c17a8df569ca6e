"""Which targets a request may go to, in which order."""

from __future__ import annotations

from typing import NamedTuple

from router.errors import bad_request, model_not_found
from router.normalize import Normalized
from router.routes import RouteTable
from router.strategies import STRATEGIES, HealthMap, usable
from router.table import ModelGroup, Target


class Candidate(NamedTuple):
    """A target to try for a public model name (a tuple: one per target per request)."""

    public: str
    group: ModelGroup
    target: Target


def groups(table: RouteTable, names: list[str]) -> list[ModelGroup]:
    """The model group of each name, in order; 404 naming the first the table does not have."""
    out = []
    for i, name in enumerate(names):
        group = table.groups.get(name)
        if group is None:
            raise model_not_found(name, "model" if i == 0 else "models")
        out.append(group)
    return out


def target_ids(table: RouteTable, names: list[str]) -> list[str]:
    """Every target id the request might use: what to fetch health (and limits) for."""
    return list(dict.fromkeys(t.id for g in groups(table, names) for t in g.targets))


def check_output_ceiling(table: RouteTable, names: list[str], norm: Normalized) -> None:
    """400 naming the field when the client asks any of its model groups for a longer answer
    than routes.yaml allows: checked before anything is reserved or sent."""
    for field, value in norm.asked:
        for group in groups(table, names):
            if value > group.max_output_tokens:
                raise bad_request(f"Invalid '{field}': {value} is above the {group.max_output_tokens} tokens the "
                                  f"model '{group.name}' may answer with; lower '{field}'.",
                                  param=field, code="integer_above_max_value")


def plan(table: RouteTable, names: list[str], norm: Normalized | None = None,
         health: HealthMap | None = None, strategy: str | None = None) -> list[Candidate]:
    """Targets of `model`, then of each name in `models`, without repeats; each group in its
    strategy's order (or `strategy`'s, a rule's override). Unusable targets go last of all,
    so a request leaves a group whose targets are all down for the next group before retrying them."""
    health = health or {}
    ok: list[Candidate] = []
    down: list[Candidate] = []
    seen: set[str] = set()
    for name, group in zip(names, groups(table, names)):
        for target in STRATEGIES[strategy or group.strategy](group.targets, health, norm):
            if target.id not in seen:
                seen.add(target.id)
                (ok if usable(target.id, health) else down).append(Candidate(name, group, target))
    return ok + down
