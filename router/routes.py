"""routes.yaml compiled: its cross-checks, and the RouteTable built from it once per load.

The schema itself is router.config. Every error names its path
(`models.fast.targets[1].provider: unknown provider 'nebuis'`), so an operator editing the
file on a live system learns exactly what to fix before anything is swapped in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from providers import REGISTRY, Adapter, ProviderSettings
from router.config import RoutesConfig, Settings
from router.errors import dotted
from router.keys import KeyRing, build_keyring
from router.limits import limit_spec
from router.rules import RuleSet, check_rules, compile_rules
from router.strategies import strategy_problems
from router.table import ModelGroup, Target


class ConfigError(Exception):
    """One message per problem, each starting with its path in the file."""

    def __init__(self, problems: list[str], source: str = "routes.yaml") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass(slots=True)
class RouteTable:
    """Everything per-config, computed once at load; requests only read it."""

    config: RoutesConfig
    groups: dict[str, ModelGroup]
    adapters: dict[str, Adapter]
    warnings: list[str] = field(default_factory=list)
    generation: int = 0
    keys: KeyRing | None = None          # None: no `keys:` section, the proxy is open
    rules: RuleSet = field(default_factory=RuleSet)

    @property
    def settings(self) -> Settings:
        return self.config.settings


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (check its spelling and indentation)"
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"])
    return err["msg"][0].lower() + err["msg"][1:]


def parse(data: Any, source: str = "routes.yaml", environ: dict[str, str] | None = None) -> RouteTable:
    """Validate a parsed routes document whole and build its table, or raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping with 'providers' and 'models'"], source)
    try:
        cfg = RoutesConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{dotted(e['loc']) or '(top level)'}: {_message(e)}" for e in exc.errors()], source) from None
    env = os.environ if environ is None else environ
    problems: list[str] = []
    warnings: list[str] = []
    adapters: dict[str, Adapter] = {}
    for name, p in cfg.providers.items():
        cls = REGISTRY.get(p.kind)
        if cls is None:
            problems.append(f"providers.{name}.kind: unknown kind '{p.kind}' (one of: {', '.join(REGISTRY)})")
            continue
        key = env.get(p.api_key_env) if p.api_key_env else None
        if p.api_key_env and not key:
            warnings.append(f"providers.{name}.api_key_env: environment variable {p.api_key_env} is not set")
        try:
            adapters[name] = cls(ProviderSettings(name, p.base_url, key, p.options))
        except ValueError as exc:
            problems.append(f"providers.{name}.options: {exc}")
    secrets = tuple(secret for a in adapters.values() for secret in a.secrets)
    for adapter in adapters.values():
        adapter.secrets = secrets
    groups: dict[str, ModelGroup] = {}
    s = cfg.settings
    for mname, m in cfg.models.items():
        targets = []
        for i, t in enumerate(m.targets):
            if t.provider not in cfg.providers:
                problems.append(f"models.{mname}.targets[{i}].provider: unknown provider '{t.provider}'"
                                f" (defined: {', '.join(cfg.providers)})")
                continue
            if t.provider not in adapters:
                continue
            p = cfg.providers[t.provider]
            targets.append(Target(f"{t.provider}/{t.model}", t.provider, t.model, adapters[t.provider],
                                  t.weight, t.price, limit_spec(t.limits), p.timeout_s, p.connect_timeout_s,
                                  p.stream_idle_timeout_s or s.stream_idle_timeout_s))
        problems += strategy_problems(f"models.{mname}.strategy", m.strategy, [m])
        groups[mname] = ModelGroup(mname, tuple(targets), m.strategy, limit_spec(m.limits), m.deadline_s or s.deadline_s,
                                   m.max_attempts or s.max_attempts, m.retry or s.retry,
                                   m.max_output_tokens or s.max_output_tokens, m.resume, m.hedge)
    keys = None
    if cfg.keys is None:
        warnings.append("no 'keys:' section: the proxy is OPEN, anyone who can reach it may use every model")
    else:
        keys, key_problems, key_warnings = build_keyring(cfg.keys, env)
        problems += key_problems
        warnings += key_warnings
    problems += check_rules(cfg, warnings)
    if problems:
        raise ConfigError(problems, source)
    return RouteTable(cfg, groups, adapters, warnings, keys=keys,
                      rules=compile_rules(cfg.rules, s.default_max_tokens))


def load(path: str | Path, environ: dict[str, str] | None = None) -> RouteTable:
    """Read, parse and validate a routes file; every failure is a ConfigError naming the file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror}"], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"byte {exc.start}: not UTF-8 text"], source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f"line {where.line + 1}, column {where.column + 1}: " if where else ""
        raise ConfigError([f"{at}not valid YAML: {getattr(exc, 'problem', exc)}"], source) from None
    return parse(data, source, environ)
