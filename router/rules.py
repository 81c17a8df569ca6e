"""The `rules:` of routes.yaml, compiled once per load into plain predicates.

Rules are tried in file order and the first whose `match` fits decides: it may `route`
the request to other model groups, `rewrite` the requested model name, set the
`strategy`, or `deny` it. Globs are turned into one regex (or a set, when a pattern has
no wildcard) at load, so a request only runs precompiled checks.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from router.errors import INVALID_REQUEST, PERMISSION, RouterError
from router.normalize import Normalized
from router.strategies import STRATEGIES, strategy_problems

if TYPE_CHECKING:
    from router.config import Bounds, Deny, HeaderMatch, Match, RoutesConfig, RuleConfig

_WILD = re.compile(r"[*?\[]")


class Glob:
    """A set of shell-style patterns (`*`, `?`, `[abc]`), case-sensitive; exact names are a set lookup."""

    __slots__ = ("patterns", "_exact", "_regex")

    def __init__(self, patterns: str | Sequence[str]) -> None:
        self.patterns: tuple[str, ...] = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        self._exact = frozenset(p for p in self.patterns if not _WILD.search(p))
        wild = [fnmatch.translate(p) for p in self.patterns if _WILD.search(p)]
        self._regex = re.compile("|".join(f"(?:{w})" for w in wild)) if wild else None

    def __call__(self, value: str | None) -> bool:
        if value is None:
            return False
        if value in self._exact:
            return True
        return self._regex is not None and self._regex.match(value) is not None

    def __str__(self) -> str:
        return ", ".join(self.patterns)


Headers = Mapping[str, str]          # case-insensitive in the server (aiohttp's CIMultiDict)
Predicate = Callable[[Normalized, "str | None", Headers], bool]


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule; `checks` all hold when it matches, `describe` says what it tests."""

    index: int
    name: str
    checks: tuple[Predicate, ...]
    describe: tuple[str, ...]
    route: tuple[str, ...] | None
    rewrite: str | None
    strategy: str | None
    deny: Deny | None

    @property
    def label(self) -> str:
        return f"rules[{self.index}] '{self.name}'"


class Decision(NamedTuple):
    """What the rules made of a request: the model names to plan, in order, and a strategy
    override (a tuple: one per request)."""

    rule: Rule | None
    names: list[str]
    strategy: str | None


class RuleSet:
    """The ordered rules of one routes table."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = tuple(rules)

    def first(self, norm: Normalized, key: str | None, headers: Headers) -> Rule | None:
        for rule in self.rules:
            if all(check(norm, key, headers) for check in rule.checks):
                return rule
        return None

    def decide(self, norm: Normalized, key: str | None, headers: Headers) -> Decision:
        """The decision of the first matching rule; a `deny` rule raises its error."""
        rule = self.first(norm, key, headers) if self.rules else None
        if rule is None:
            return Decision(None, norm.names, None)
        if rule.deny is not None:
            raise deny_error(rule.deny)   # a fresh error per request: see keys._missing
        names = norm.names
        if rule.route is not None:
            names = list(rule.route)
        elif rule.rewrite is not None:
            names = [rule.rewrite] + [n for n in norm.names[1:] if n != rule.rewrite]
        return Decision(rule, names, rule.strategy)


# --- compiling ---------------------------------------------------------------------------------


def _bounds(what: str, b: Bounds, value: Callable[[Normalized], int]) -> tuple[Predicate, str]:
    lo, hi = b.min, b.max
    if lo is not None and hi is not None:
        return (lambda n, k, h: lo <= value(n) <= hi), f"{lo} <= {what} <= {hi}"
    if lo is not None:
        return (lambda n, k, h: value(n) >= lo), f"{what} >= {lo}"
    return (lambda n, k, h: value(n) <= hi), f"{what} <= {hi}"  # type: ignore[operator]


def _header(name: str, spec: HeaderMatch) -> tuple[Predicate, str]:
    if spec.present is not None:
        want = spec.present
        return (lambda n, k, h: (name in h) is want), f"header {name} {'present' if want else 'absent'}"
    if spec.equals is not None:
        exact = spec.equals
        return (lambda n, k, h: h.get(name) == exact), f"header {name} == {exact!r}"
    glob = Glob(spec.glob or "")
    return (lambda n, k, h: glob(h.get(name))), f"header {name} ~ {spec.glob!r}"


def compile_match(m: Match, default_max_tokens: int) -> tuple[tuple[Predicate, ...], tuple[str, ...]]:
    """One predicate per condition of a `match`; an empty match fits every request."""
    out: list[tuple[Predicate, str]] = []
    if m.model is not None:
        model = Glob(m.model)
        out.append(((lambda n, k, h: model(n.names[0])), f"model in [{model}]"))
    if m.key is not None:
        key = Glob(m.key)
        out.append(((lambda n, k, h: key(k)), f"key in [{key}]"))
    if m.endpoint is not None:
        endpoint = m.endpoint
        out.append(((lambda n, k, h: n.endpoint == endpoint), f"endpoint == {endpoint}"))
    if m.stream is not None:
        stream = m.stream
        out.append(((lambda n, k, h: n.stream is stream), f"stream == {str(stream).lower()}"))
    for name, spec in (m.headers or {}).items():
        out.append(_header(name.lower(), spec))
    if m.prompt_tokens is not None:
        out.append(_bounds("prompt_tokens", m.prompt_tokens, lambda n: n.prompt_tokens))
    if m.max_tokens is not None:
        out.append(_bounds("max_tokens", m.max_tokens, lambda n: n.max_tokens or default_max_tokens))
    return tuple(p for p, _ in out), tuple(d for _, d in out)


def deny_error(d: Deny) -> RouterError:
    kind = PERMISSION if d.status == 403 else INVALID_REQUEST
    return RouterError(d.status, d.message, type=kind, code="denied_by_rule")


def compile_rules(rules: Sequence[RuleConfig], default_max_tokens: int) -> RuleSet:
    """Build the RuleSet of a validated `rules:` list (names were cross-checked by routes.parse)."""
    out = []
    for i, r in enumerate(rules):
        checks, describe = compile_match(r.match, default_max_tokens)
        route = None if r.route is None else tuple(r.route)
        out.append(Rule(i, r.name or f"#{i}", checks, describe, route, r.rewrite, r.strategy,
                        r.deny))
    return RuleSet(out)


def check_rules(cfg: RoutesConfig, warnings: list[str]) -> list[str]:
    """Cross-checks of `rules:` against the rest of the file: names exist, strategies fit."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    defined = ", ".join(cfg.models)
    for i, r in enumerate(cfg.rules):
        at = f"rules[{i}]"
        if r.name is not None:
            if r.name in seen:
                problems.append(f"{at}.name: '{r.name}' is already the name of rules[{seen[r.name]}]")
            seen.setdefault(r.name, i)
        targets = (r.route or []) + ([r.rewrite] if r.rewrite else [])
        field_name = "route" if r.route is not None else "rewrite"
        for name in targets:
            if name not in cfg.models:
                problems.append(f"{at}.{field_name}: unknown model group '{name}' (defined: {defined})")
        if r.strategy is not None:
            # The groups the rule sends to: named outright, or the requested ones its match allows.
            pick = (lambda n: n in targets) if targets else Glob(r.match.model) if r.match.model else None
            if pick is not None:
                problems += strategy_problems(f"{at}.strategy", r.strategy,
                                              [m for n, m in cfg.models.items() if pick(n)])
            elif r.strategy not in STRATEGIES:
                problems += strategy_problems(f"{at}.strategy", r.strategy, [])
            elif r.strategy == "cost":
                unpriced = [n for n, m in cfg.models.items() if any(t.price is None for t in m.targets)]
                if unpriced:
                    warnings.append(f"{at}.strategy: 'cost' puts targets without a price last, in: "
                                    + ", ".join(unpriced))
        if r.match.key is not None:
            if cfg.keys is None:
                warnings.append(f"{at}.match.key: there is no 'keys:' section, so this rule never matches")
            elif not any(Glob(r.match.key)(k) for k in cfg.keys):
                warnings.append(f"{at}.match.key: no key in 'keys:' matches {', '.join(r.match.key)}")
    return problems
