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
            "reload_interval_s": float(env.get("ROUTER_RELOAD_INTERVAL", cls.reload_interval_s)),
            "log_prompts": env.get("ROUTER_LOG_PROMPTS", "") in ("1", "true", "yes"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


SETTINGS = web.AppKey("settings", ServeSettings)
