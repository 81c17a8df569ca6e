"""Process settings: where to listen, which routes file, where shared state lives."""

from __future__ import annotations

import os
from dataclasses import dataclass

from aiohttp import web

from router.redis_scripts import AHEAD_MAX_MS


@dataclass(frozen=True)
class ServeSettings:
    config_path: str = "routes.yaml"
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    fail_open: bool = True          # Redis unreachable: admit without limits (False: answer 503)
    reload_interval_s: float = 2.0
    log_prompts: bool = False       # debug only: put prompt text in the access log
    redis_timeout_s: float = 0.25   # one pipelined batch of Redis calls; past it, fail open (or closed)
    shutdown_grace_s: float = 60.0  # SIGTERM: how long requests in flight get to finish
    concurrency_lease_s: float = 600.0  # a concurrency slot's lease; running requests renew theirs
    upstream_connections: int = 2048    # per vendor origin in use at once; a call past it waits for one
    admit_ahead: int = 0                # Redis: admissions taken ahead per busy combination (0: off)
    admit_ahead_s: float = 1.0          # the life of one taken ahead

    @classmethod
    def from_env(cls, **overrides: object) -> "ServeSettings":
        env = os.environ
        values: dict[str, object] = {
            "config_path": env.get("ROUTER_CONFIG", cls.config_path),
            "redis_url": env.get("REDIS_URL") or None,
            "fail_open": env.get("ROUTER_LIMITS_FAIL_CLOSED", "") not in ("1", "true", "yes"),
            "reload_interval_s": _interval(env.get("ROUTER_RELOAD_INTERVAL")),
            "log_prompts": env.get("ROUTER_LOG_PROMPTS", "") in ("1", "true", "yes"),
            "shutdown_grace_s": _bounded("ROUTER_SHUTDOWN_GRACE_S", env.get("ROUTER_SHUTDOWN_GRACE_S"),
                                         cls.shutdown_grace_s, 1, 3600, "seconds"),
            "concurrency_lease_s": _bounded("ROUTER_CONCURRENCY_LEASE_S", env.get("ROUTER_CONCURRENCY_LEASE_S"),
                                            cls.concurrency_lease_s, 1, 86400, "seconds"),
            "upstream_connections": _whole("ROUTER_UPSTREAM_CONNECTIONS", env.get("ROUTER_UPSTREAM_CONNECTIONS"),
                                           cls.upstream_connections, 1, 1_000_000, "connections"),
            "admit_ahead": _whole("ROUTER_ADMIT_AHEAD", env.get("ROUTER_ADMIT_AHEAD"), cls.admit_ahead, 0, 256,
                                  "admissions"),
            "admit_ahead_s": _bounded("ROUTER_ADMIT_AHEAD_MS", env.get("ROUTER_ADMIT_AHEAD_MS"), 1000, 10,
                                      AHEAD_MAX_MS, "milliseconds") / 1000,
            "redis_timeout_s": _bounded("ROUTER_REDIS_TIMEOUT_MS", env.get("ROUTER_REDIS_TIMEOUT_MS"), 250, 1, 60_000,
                                        "milliseconds") / 1000,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _interval(raw: str | None) -> float:
    return _bounded("ROUTER_RELOAD_INTERVAL", raw, ServeSettings.reload_interval_s, 0.1, 3600, "seconds")


def _whole(name: str, raw: str | None, default: int, low: int, high: int, unit: str) -> int:
    value = _bounded(name, raw, default, low, high, f"a whole number of {unit}")
    if value != int(value):
        raise ValueError(f"{name}={raw!r}: give a whole number of {unit} between {low} and {high}")
    return int(value)


def _bounded(name: str, raw: str | None, default: float, low: float, high: float, unit: str) -> float:
    """A number from the environment, refused with a message that says what to give."""
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ValueError(f"{name}={raw!r}: give {unit} between {low:g} and {high:g}")
    return value


SETTINGS = web.AppKey("settings", ServeSettings)
