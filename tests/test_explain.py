"""`router explain`: which rule matched and the ordered candidates, without sending anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from router.explain import explain
from router.routes import parse
from tests.fixtures_proxy import providers_for

ROOT = Path(__file__).resolve().parent.parent
CHEAP, DEAR = {"input": 0.1, "output": 0.2}, {"input": 3, "output": 15}


def document(keys: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "providers": {"a": {"kind": "openai", "base_url": "http://127.0.0.1:1"},
                      "b": {"kind": "nebius", "base_url": "http://127.0.0.1:2"}},
        "models": {
            "fast": {"targets": [{"provider": "a", "model": "fast-1", "price": DEAR, "limits": {"rpm": 50}},
                                 {"provider": "b", "model": "fast-2", "price": CHEAP}],
                     "limits": {"tpm": 9000}},
            "cheap": {"strategy": "cost", "deadline_s": 30, "max_attempts": 2,
                      "targets": [{"provider": "a", "model": "c-1", "price": DEAR},
                                  {"provider": "b", "model": "c-2", "price": CHEAP}]},
            "split": {"strategy": "weighted", "targets": [{"provider": "a", "model": "s-1", "weight": 3},
                                                          {"provider": "b", "model": "s-2", "weight": 1}]},
        },
        "rules": [
            {"name": "no-secrets", "match": {"model": "secret*"}, "deny": "Secret models are not served."},
            {"name": "long", "match": {"prompt_tokens": {"min": 1000}}, "route": "cheap"},
            {"name": "chat-streams", "match": {"endpoint": "chat", "stream": True}, "strategy": "cost"},
        ],
    }
    if keys:
        out["keys"] = {"team": {"key_env": "EXPLAIN_TEAM_KEY", "models": ["fast", "ch*"],
                                "limits": {"rpm": 60}, "budget": {"daily_usd": 5}},
                       "admin": {"key_env": "EXPLAIN_ADMIN_KEY"}}
    return out


CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
CASES: list[tuple[str, dict[str, Any], str | None, str | None, list[str]]] = [
    ("no rule matched: config order", {"model": "fast", "prompt": "hi"}, "admin", None, [
        "request:  completions, model 'fast', stream off",
        "key:      admin: every model",
        "rule:     none of 3 rules matched",
        "fast: strategy fallback (config order); limits tpm=9000",
        "1. a/fast-1  [health unknown]  price $3 in / $15 out per M",
        "limits rpm=50",
        "2. b/fast-2  [health unknown]",
    ]),
    ("endpoint guessed from messages", CHAT, "team", None, [
        "request:  chat, model 'fast', stream off",
        "key:      team: models fast, ch*; limits rpm=60; budget daily $5",
    ]),
    ("endpoint given", {"model": "fast", "prompt": "hi"}, "admin", "chat", [
        "refused:  400 invalid_request_error: Missing required parameter: 'messages'.",
    ]),
    ("rule routes", {"model": "fast", "prompt": "x" * 4000}, "team", None, [
        "rule:     rules[1] 'long' matched (prompt_tokens >= 1000): route -> cheap",
        "attempts: one deadline of 30s across all attempts, at most 2 attempts",
        "cheap: strategy cost (cheapest first",
        "1. b/c-2", "2. a/c-1",
    ]),
    ("rule sets strategy", {**CHAT, "stream": True}, "admin", None, [
        "rule:     rules[2] 'chat-streams' matched (endpoint == chat; stream == true): strategy cost",
        "1. b/fast-2", "2. a/fast-1",
    ]),
    ("fallback list", {"model": "fast", "models": ["split"], "prompt": "hi"}, "admin", None, [
        "model 'fast' then models 'split'",
        "split: strategy weighted (order drawn per request; chance to go first: a/s-1 75%, b/s-2 25%)",
        "3. a/s-1", "4. b/s-2",
    ]),
    ("deny", {"model": "secret-1", "prompt": "hi"}, "admin", None, [
        "refused:  403 permission_error: Secret models are not served.",
    ]),
    ("no key", {"model": "fast", "prompt": "hi"}, None, None, [
        "refused:  401 authentication_error: no key given (pass --key NAME; defined: team, admin)",
    ]),
    ("unknown key", {"model": "fast", "prompt": "hi"}, "nobody", None, [
        "refused:  401 authentication_error: no key named 'nobody'",
    ]),
    ("model outside the key's list", {"model": "split", "prompt": "hi"}, "team", None, [
        "refused:  403 permission_error: The key 'team' may not use the model 'split'.",
    ]),
    ("unknown model", {"model": "nope", "prompt": "hi"}, "admin", None, [
        "refused:  404 invalid_request_error: The model 'nope' does not exist",
    ]),
    ("max_tokens above the ceiling", {"model": "fast", "prompt": "hi", "max_tokens": 10**12}, "admin", None, [
        "refused:  400 invalid_request_error: Invalid 'max_tokens': 1000000000000 is above the 131072 tokens",
    ]),
]


@pytest.mark.parametrize("body,key,endpoint,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_explain_says_what_would_happen(body, key, endpoint, expected):
    out = explain(parse(document(), environ={"EXPLAIN_TEAM_KEY": "t", "EXPLAIN_ADMIN_KEY": "a"}),
                  body, key, endpoint)
    for line in expected:
        assert line in out, f"{line!r} not in:\n{out}"


def test_explain_of_an_open_proxy_needs_no_key():
    out = explain(parse(document(keys=False), environ={}), {"model": "fast", "prompt": "hi"}, None, None)
    assert "key:      none needed: no 'keys:' section, the proxy is open" in out
    assert "1. a/fast-1" in out


def test_explain_flags_a_key_whose_secret_is_not_set():
    out = explain(parse(document(), environ={}), {"model": "fast", "prompt": "hi"}, "admin", None)
    assert "[its secret is not set here: it could not authenticate]" in out


def test_explain_matches_header_rules_on_given_headers():
    doc = document(keys=False)
    doc["rules"] = [{"name": "batch", "match": {"headers": {"x-priority": "batch"}}, "strategy": "cost"}]
    table = parse(doc, environ={})
    assert "none of 1 rules matched" in explain(table, {"model": "fast", "prompt": "hi"})
    out = explain(table, {"model": "fast", "prompt": "hi"}, headers={"X-Priority": "batch"})
    assert "rules[0] 'batch' matched (header x-priority ~ 'batch')" in out


async def test_explain_sends_nothing_upstream(vendors):
    doc = {"providers": providers_for(vendors),
           "models": {"g": {"targets": [{"provider": v.kind, "model": "m-1"} for v in vendors]}}}
    out = explain(parse(doc, environ={}), {"model": "g", "prompt": "hi"})
    assert out.count("[health unknown]") == len(vendors.kinds)
    assert all(not v.control.requests for v in vendors)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router", "explain", *args], capture_output=True, text=True,
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin"})


def test_cli_explains_with_the_shipped_routes_yaml():
    out = run_cli("--config", str(ROOT / "routes.yaml"), orjson.dumps(CHAT | {"model": "gpt-4o-mini"}).decode())
    assert out.returncode == 0, out.stderr
    assert "rule:     rules[1] 'openai-names' matched" in out.stdout
    assert "rewrite model -> gpt-oss-120b" in out.stdout
    assert "gpt-oss-120b: strategy latency" in out.stdout


def test_cli_takes_key_and_endpoint(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(document()), encoding="utf-8")
    out = run_cli("--config", str(path), "--key", "team", "--endpoint", "completions",
                  '{"model": "fast", "prompt": "hi"}')
    assert out.returncode == 0, out.stderr
    assert "request:  completions" in out.stdout and "key:      team:" in out.stdout
