"""routes.yaml validation: keys and rules are checked whole at load, every error names its path."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from router.routes import ConfigError, load, parse

ROOT = Path(__file__).resolve().parent.parent
SHA = hashlib.sha256(b"secret").hexdigest()


def base() -> dict[str, Any]:
    return {
        "providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:1"}},
        "models": {
            "fast": {"targets": [{"provider": "p", "model": "a", "price": {"input": 1, "output": 2}}]},
            "slow": {"targets": [{"provider": "p", "model": "b"}]},
        },
    }


def with_(**sections: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base())
    doc.update(sections)
    return doc


INVALID = [
    # (document, expected problem, whole line)
    (with_(keys={}), "keys: dictionary should have at least 1 item"),
    (with_(keys={"k": {}}), "keys.k: give exactly one of 'key_env' or 'key_sha256'"),
    (with_(keys={"k": {"key_env": "A", "key_sha256": SHA}}), "keys.k: give exactly one of 'key_env' or 'key_sha256'"),
    (with_(keys={"k": {"key_sha256": "abc"}}), "keys.k.key_sha256: string should match pattern"),
    (with_(keys={"k": {"key_env": "1BAD"}}), "keys.k.key_env: string should match pattern"),
    (with_(keys={"k": {"key_env": "A", "modles": ["x"]}}), "keys.k.modles: unknown key"),
    (with_(keys={"k": {"key_env": "A", "limits": {"rpm": 0}}}), "keys.k.limits.rpm: input should be greater than 0"),
    (with_(keys={"k": {"key_env": "A", "budget": {"weekly_usd": 1}}}), "keys.k.budget.weekly_usd: unknown key"),
    (with_(keys={"a": {"key_sha256": SHA}, "b": {"key_sha256": SHA.upper()}}),
     "keys.b: the same secret as keys.a; every key needs its own"),
    (with_(rules=[{"match": {"model": "x"}}]),
     "rules[0]: a rule needs an action: 'route', 'rewrite', 'strategy' or 'deny'"),
    (with_(rules=[{"route": "fast", "rewrite": "slow"}]), "rules[0]: give 'route' or 'rewrite', not both"),
    (with_(rules=[{"deny": "no", "route": "fast"}]),
     "rules[0]: 'deny' cannot be combined with 'route', 'rewrite' or 'strategy'"),
    (with_(rules=[{"route": "fsat"}]), "rules[0].route: unknown model group 'fsat' (defined: fast, slow)"),
    (with_(rules=[{"route": ["fast", "nope"]}]), "rules[0].route: unknown model group 'nope' (defined: fast, slow)"),
    (with_(rules=[{"rewrite": "nope"}]), "rules[0].rewrite: unknown model group 'nope' (defined: fast, slow)"),
    (with_(rules=[{"strategy": "fastest"}]),
     "rules[0].strategy: unknown strategy 'fastest' (one of: fallback, weighted, latency, cost)"),
    (with_(rules=[{"match": {"model": "sl*"}, "strategy": "cost"}]),
     "rules[0].strategy: 'cost' needs a price on every target it orders"),
    (with_(rules=[{"strategy": "cost", "route": "slow"}]),
     "rules[0].strategy: 'cost' needs a price on every target it orders"),
    (with_(rules=[{"name": "a", "route": "fast"}, {"name": "a", "route": "slow"}]),
     "rules[1].name: 'a' is already the name of rules[0]"),
    (with_(rules=[{"match": {"modle": "x"}, "route": "fast"}]), "rules[0].match.modle: unknown key"),
    (with_(rules=[{"match": {"endpoint": "embeddings"}, "route": "fast"}]),
     "rules[0].match.endpoint: input should be 'completions' or 'chat'"),
    (with_(rules=[{"match": {"prompt_tokens": {}}, "route": "fast"}]),
     "rules[0].match.prompt_tokens: give 'min', 'max' or both"),
    (with_(rules=[{"match": {"max_tokens": {"min": 10, "max": 5}}, "route": "fast"}]),
     "rules[0].match.max_tokens: 'min' (10) is above 'max' (5)"),
    (with_(rules=[{"match": {"prompt_tokens": {"min": -1}}, "route": "fast"}]),
     "rules[0].match.prompt_tokens.min: input should be greater than or equal to 0"),
    (with_(rules=[{"match": {"headers": {"x-team": {"equals": "a", "present": True}}}, "route": "fast"}]),
     "rules[0].match.headers.x-team: give exactly one of 'equals', 'glob' or 'present'"),
    (with_(rules=[{"match": {"headers": {"bad header": "a"}}, "route": "fast"}]),
     "rules[0].match.headers.bad header.[key]: string should match pattern"),
    (with_(rules=[{"deny": {"message": "no", "status": 500}}]), "rules[0].deny.status: input should be 400 or 403"),
    (with_(models={"m": {"strategy": "fastest", "targets": [{"provider": "p", "model": "a"}]}}),
     "models.m.strategy: unknown strategy 'fastest' (one of: fallback, weighted, latency, cost)"),
    (with_(models={"m": {"strategy": "cost", "targets": [{"provider": "p", "model": "a"}]}}),
     "models.m.strategy: 'cost' needs a price on every target it orders"),
    (with_(settings={"retry": {"attempts": 0}}), "settings.retry.attempts: input should be greater than or equal to 1"),
    (with_(settings={"retry": {"backoff_initial_s": 3}}),
     "settings.retry: 'backoff_initial_s' (3) is above 'backoff_max_s' (2)"),
    (with_(models={"m": {"retry": {"atempts": 3}, "targets": [{"provider": "p", "model": "a"}]}}),
     "models.m.retry.atempts: unknown key"),
]


@pytest.mark.parametrize("doc,problem", INVALID, ids=[p for _, p in INVALID])
def test_invalid_document_is_refused_naming_the_path(doc, problem):
    with pytest.raises(ConfigError) as info:
        parse(doc, environ={})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


VALID = [
    with_(keys={"k": {"key_env": "K", "models": ["fast", "sl*"], "limits": {"rpm": 5, "tpm": 100, "concurrent": 2},
                      "budget": {"daily_usd": 1.5, "monthly_usd": 20}}}),
    with_(keys={"k": {"key_sha256": SHA}}, rules=[{"match": {"key": "k"}, "strategy": "fallback"}]),
    with_(rules=[
        {"name": "everything", "match": {"model": ["gpt-*", "fast"], "endpoint": "chat", "stream": True,
                                         "headers": {"X-Team": "search", "x-a": {"present": False},
                                                     "x-b": {"glob": "v*"}, "x-c": {"equals": "*"}},
                                         "prompt_tokens": {"min": 1, "max": 9}, "max_tokens": {"max": 5}},
         "route": ["fast"], "strategy": "cost"},
        {"match": {"key": ["a", "b*"]}, "route": ["slow", "fast"]},
        {"rewrite": "slow"},
        {"deny": "plain message"},
        {"deny": {"message": "bad request", "status": 400}},
    ]),
]


@pytest.mark.parametrize("doc", VALID)
def test_valid_document_loads(doc):
    table = parse(doc, environ={"K": "x"})
    assert set(table.groups) == {"fast", "slow"}


WARNINGS = [
    (base(), "no 'keys:' section: the proxy is OPEN"),
    (with_(rules=[{"match": {"stream": True}, "strategy": "cost"}]),
     "rules[0].strategy: 'cost' puts targets without a price last, in: slow"),
    (with_(keys={"k": {"key_env": "UNSET_VAR"}}), "keys.k.key_env: environment variable UNSET_VAR is not set"),
    (with_(rules=[{"match": {"key": "k"}, "route": "fast"}]),
     "rules[0].match.key: there is no 'keys:' section, so this rule never matches"),
    (with_(keys={"k": {"key_sha256": SHA}}, rules=[{"match": {"key": "team-*"}, "route": "fast"}]),
     "rules[0].match.key: no key in 'keys:' matches team-*"),
]


@pytest.mark.parametrize("doc,warning", WARNINGS, ids=[w for _, w in WARNINGS])
def test_questionable_document_loads_with_a_warning(doc, warning):
    table = parse(doc, environ={})
    assert any(w.startswith(warning) for w in table.warnings), table.warnings


def test_keys_section_turns_authentication_on_even_when_no_secret_is_set():
    table = parse(with_(keys={"k": {"key_env": "UNSET_VAR"}}), environ={})
    assert table.keys is not None and table.keys.live == frozenset()


def test_rules_keep_file_order_and_names():
    table = parse(with_(rules=[{"name": "one", "route": "fast"}, {"rewrite": "slow"}]), environ={})
    assert [r.label for r in table.rules.rules] == ["rules[0] 'one'", "rules[1] '#1'"]


def test_shipped_routes_yaml_passes_router_check():
    out = subprocess.run([sys.executable, "-m", "router", "check", str(ROOT / "routes.yaml")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert ": ok (4 providers" in out.stdout


def test_shipped_routes_yaml_uses_the_four_vendors_real_endpoints():
    table = load(ROOT / "routes.yaml", environ={})
    urls = {name: p.base_url for name, p in table.config.providers.items()}
    assert sorted(urls.values()) == sorted([
        "https://api.cogito.decart.ai", "https://api.poolsi.de", "https://api.tokenfactory.nebius.com",
        "https://app.interactive.ai/api/v1"])
    envs = {p.api_key_env for p in table.config.providers.values()}
    assert envs == {"COGITO_API_KEY", "POOLSIDE_API_KEY", "NEBIUS_API_KEY", "INTERACTIVE_API_KEY"}
    assert {g.strategy for g in table.groups.values()} == {"fallback", "weighted", "latency", "cost"}
    assert table.rules.rules, "the example shows rules"
