"""Every error a client can see, and its one OpenAI-shaped encoding.

Anything raised on the request path is a `RouterError`; the error middleware turns it
into `{"error": {"message", "type", "param", "code"}}` with the right status. Nothing
else reaches a client, so an unexpected bug is still a JSON 500, never an HTML page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
PERMISSION = "permission_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_error"
UPSTREAM = "upstream_error"
SERVER = "server_error"


class RouterError(Exception):
    """An error with everything needed to answer the client in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def encode(self) -> bytes:
        return orjson.dumps(self.body())

    def __repr__(self) -> str:
        return f"RouterError({self.status}, {self.code!r}, {self.message!r})"


def dotted(parts: Sequence[object]) -> str:
    """A location as a person writes it: ("models", "fast", "targets", 1) -> models.fast.targets[1]."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def bad_request(message: str, param: str | None = None, code: str | None = None) -> RouterError:
    return RouterError(400, message, param=param, code=code)


def model_not_found(name: str, param: str = "model") -> RouterError:
    return RouterError(
        404,
        f"The model '{name}' does not exist; GET /v1/models lists the models this proxy serves.",
        type=INVALID_REQUEST,
        param=param,
        code="model_not_found",
    )


def status_error(status: int, message: str) -> RouterError:
    """Errors aiohttp itself raises (unknown path, wrong method, body too large)."""
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    kind = NOT_FOUND if status == 404 else INVALID_REQUEST
    return RouterError(status, message, type=kind, code=codes.get(status))
