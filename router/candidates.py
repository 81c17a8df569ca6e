"""Which targets a request may go to, in which order."""

from __future__ import annotations

from dataclasses import dataclass

from router.errors import model_not_found
from router.routes import ModelGroup, RouteTable, Target


@dataclass(frozen=True, slots=True)
class Candidate:
    public: str
    group: ModelGroup
    target: Target


def plan(table: RouteTable, names: list[str]) -> list[Candidate]:
    """Targets of `model`, then of each name in `models`, without repeats."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        group = table.groups.get(name)
        if group is None:
            raise model_not_found(name, "model" if i == 0 else "models")
        for target in group.targets:
            if target.id not in seen:
                seen.add(target.id)
                out.append(Candidate(name, group, target))
    return out
