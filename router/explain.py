"""`router explain`: what the proxy would do with one request body, sending nothing.

It runs the same code as the request path (normalize, the key's allow-list, the rules,
the planner) on the given table, so an operator can check an edit to routes.yaml before
saving it. Health is unknown offline; limits and prices are shown as configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from multidict import CIMultiDict

from router.candidates import Candidate, check_output_ceiling, plan
from router.config import Retry
from router.errors import RouterError
from router.keys import ClientKey
from router.limits import BudgetSpec, LimitSpec
from router.normalize import Normalized, normalize
from router.routes import RouteTable
from router.schema import Endpoint
from router.strategies import estimated_cost
from router.table import ModelGroup


def guess_endpoint(body: Mapping[str, Any]) -> str:
    return Endpoint.CHAT if "messages" in body else Endpoint.COMPLETIONS


def explain(table: RouteTable, body: Any, key_name: str | None = None, endpoint: str | None = None,
            headers: Mapping[str, str] | None = None) -> str:
    """A human-readable account of how `body` would be routed (or why it would be refused)."""
    if not isinstance(body, dict):
        return "refused: 400 invalid_request_error: The request body must be a JSON object."
    endpoint = endpoint or guess_endpoint(body)
    lines: list[str] = []
    try:
        _explain(table, body, key_name, endpoint, CIMultiDict(headers or {}), lines)
    except RouterError as err:
        lines.append(f"refused:  {err.status} {err.type}: {err.message}")
    return "\n".join(lines)


def _explain(table: RouteTable, body: dict[str, Any], key_name: str | None, endpoint: str,
             headers: CIMultiDict[str], lines: list[str]) -> None:
    norm = normalize(endpoint, orjson.dumps(body), table.settings.default_max_tokens)
    lines.append("request:  " + _request(table, norm))
    key = _key(table, key_name, lines)
    if key is not None:
        key.check_models(norm.names)
    if headers:
        lines.append("headers:  " + ", ".join(f"{k}: {v}" for k, v in headers.items()))
    decision = table.rules.decide(norm, key_name, headers)
    check_output_ceiling(table, decision.names, norm)
    rule = decision.rule
    if rule is None:
        how = "no rules" if not table.rules.rules else f"none of {len(table.rules.rules)} rules matched"
        lines.append(f"rule:     {how}; the request's own model names are used")
    else:
        actions = []
        if rule.route is not None:
            actions.append("route -> " + ", ".join(rule.route))
        if rule.rewrite is not None:
            actions.append(f"rewrite model -> {rule.rewrite}")
        if rule.strategy is not None:
            actions.append(f"strategy {rule.strategy}")
        lines.append(f"rule:     {rule.label} matched ({'; '.join(rule.describe) or 'matches everything'})"
                     f": {', '.join(actions)}")
    candidates = plan(table, decision.names, norm, {}, decision.strategy)
    first = candidates[0].group
    lines.append(f"attempts: one deadline of {first.deadline_s:g}s across all attempts, "
                 f"at most {first.max_attempts} attempts; per target: {_retry(first.retry)}")
    lines.append("candidates (health unknown offline; a live proxy puts unusable targets last):")
    group_names = list(dict.fromkeys(decision.names))
    for name in group_names:
        group = table.groups[name]
        strategy = decision.strategy or group.strategy
        own = [c for c in candidates if c.public == name]
        lines.append(f"  {name}: strategy {strategy}{_order_note(strategy, group, own)}"
                     f"{'; limits ' + _limits(group.limits) if group.limits else ''}")
        places = sorted(candidates.index(c) + 1 for c in own)
        if strategy == "weighted":   # drawn per request: show the group's places in config order
            own.sort(key=lambda c: group.targets.index(c.target))
        for place, c in zip(places, own):
            lines.append(f"    {place}. {_target(c, norm)}")


def _request(table: RouteTable, norm: Normalized) -> str:
    names = f"model '{norm.names[0]}'"
    if len(norm.names) > 1:
        names += " then models " + ", ".join(repr(n) for n in norm.names[1:])
    mt = (f"max_tokens {norm.max_tokens}" if norm.max_tokens is not None
          else f"max_tokens not given (rules count {table.settings.default_max_tokens})")
    return (f"{norm.endpoint}, {names}, stream {'on' if norm.stream else 'off'}, "
            f"~{norm.prompt_tokens} prompt tokens, {mt}")


def _key(table: RouteTable, key_name: str | None, lines: list[str]) -> ClientKey | None:
    ring = table.keys
    if ring is None:
        note = f" (--key {key_name} only feeds rules that match on key)" if key_name else ""
        lines.append(f"key:      none needed: no 'keys:' section, the proxy is open{note}")
        return None
    if key_name is None:
        raise RouterError(401, f"no key given (pass --key NAME; defined: {', '.join(ring.by_name)})",
                          type="authentication_error", code="missing_api_key")
    key = ring.by_name.get(key_name)
    if key is None:
        raise RouterError(401, f"no key named '{key_name}' in keys: (defined: {', '.join(ring.by_name)})",
                          type="authentication_error", code="invalid_api_key")
    parts = [f"models {key.models}" if key.models is not None else "every model"]
    if key.limits:
        parts.append("limits " + _limits(key.limits))
    if key.budget:
        parts.append("budget " + _budget(key.budget))
    unset = "" if key_name in ring.live else " [its secret is not set here: it could not authenticate]"
    lines.append(f"key:      {key_name}: {'; '.join(parts)}{unset}")
    return key


def _order_note(strategy: str, group: ModelGroup, own: list[Candidate]) -> str:
    if strategy == "weighted":
        total = sum(t.weight for t in group.targets) or 1.0
        odds = ", ".join(f"{t.id} {t.weight / total:.0%}" for t in group.targets)
        return f" (order drawn per request; chance to go first: {odds})"
    if strategy == "latency":
        return " (ordered by measured latency live; unknown offline, so config order)"
    if strategy == "cost":
        return " (cheapest first for this request's estimated tokens)"
    return " (config order)"


def _target(c: Candidate, norm: Normalized) -> str:
    t = c.target
    out = f"{t.id}  [health unknown]"
    if t.price is not None:
        out += (f"  price ${t.price.input:g} in / ${t.price.output:g} out per M"
                f" (this request ~${estimated_cost(t, norm):.6f})")
    if t.limits is not None:
        out += "  limits " + _limits(t.limits)
    if not t.adapter.has_key:
        out += "  [no API key set for this provider here]"
    return out


def _limits(limits: LimitSpec) -> str:
    parts = [f"{k}={v}" for k, v in (("rpm", limits.rpm), ("tpm", limits.tpm),
                                      ("concurrent", limits.concurrent)) if v is not None]
    return " ".join(parts) or "none"


def _budget(budget: BudgetSpec) -> str:
    parts = [f"{k} ${v:g}" for k, v in (("daily", budget.daily_usd), ("monthly", budget.monthly_usd))
             if v is not None]
    return " ".join(parts) or "none"


def _retry(r: Retry) -> str:
    return (f"{r.attempts} tries, backoff {r.backoff_initial_s:g}s..{r.backoff_max_s:g}s with full jitter, "
            f"Retry-After honoured up to {r.retry_after_cap_s:g}s")
