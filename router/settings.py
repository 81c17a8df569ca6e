"""Process settings: where to listen, which routes file, where shared state lives."""

from __future__ import annotations

import os
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class ServeSettings:
    config_path: str = "routes.yaml"
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    fail_open: bool = True          # Redis unreachable: admit without limits (False: answer 503)
    reload_interval_s: float = 2.0
    log_prompts: bool = False       # debug only: put prompt text in the access log

    @classmethod
    def from_env(cls, **overrides: object) -> "ServeSettings":
        env = os.environ
        values: dict[str, object] = {
            "config_path": env.get("ROUTER_CONFIG", cls.config_path),
            "redis_url": env.get("REDIS_URL") or None,
            "fail_open": env.get("ROUTER_LIMITS_FAIL_CLOSED", "") not in ("1", "true", "yes"),
            "reload_interval_s": _interval(env.get("ROUTER_RELOAD_INTERVAL")),
            "log_prompts": env.get("ROUTER_LOG_PROMPTS", "") in ("1", "true", "yes"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _interval(raw: str | None) -> float:
    if raw is None:
        return ServeSettings.reload_interval_s
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 3600:
        raise ValueError(f"ROUTER_RELOAD_INTERVAL={raw!r}: give seconds between 0.1 and 3600")
    return value


SETTINGS = web.AppKey("settings", ServeSettings)
