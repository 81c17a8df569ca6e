"""Local stand-ins for each upstream vendor, speaking its API as its published spec says.

They serve `router demo` (a proxy with real vendors' dialects and no real vendors) and the
tests (scripted failures, broken streams, hangs). `create_standin_app(kind)` builds one; the
base URL the proxy should use is the server root plus `base_path(kind)`.
"""

from __future__ import annotations

from aiohttp import web

from providers.standins.base import (
    ERROR_KINDS,
    FAULT_KINDS,
    BreakStream,
    Fail,
    Fault,
    Hang,
    RecordedRequest,
    Reply,
    StandinControl,
    Step,
)
from providers.standins.cogito import CogitoDialect
from providers.standins.dialect import Dialect
from providers.standins.interactive import InteractiveDialect
from providers.standins.nebius import NebiusDialect
from providers.standins.openai import OpenAIDialect
from providers.standins.poolside import PoolsideDialect
from providers.standins.server import EVENT_TAP, StandinServer

DIALECTS: dict[str, type[Dialect]] = {
    d.kind: d for d in (CogitoDialect, PoolsideDialect, NebiusDialect, InteractiveDialect, OpenAIDialect)
}
STANDIN_KINDS: tuple[str, ...] = tuple(DIALECTS)

# What the proxy's base_url adds to the server root, per kind (where the vendor's docs put it).
BASE_PATHS: dict[str, str] = {"cogito": "", "poolside": "", "nebius": "", "interactive": "/api/v1", "openai": "/v1"}


def base_path(kind: str) -> str:
    """The path to append to a stand-in's root URL to get the base_url a proxy should use."""
    return BASE_PATHS[_known(kind)]


def create_standin_app(
    kind: str, control: StandinControl | None = None, api_key: str | None = None
) -> web.Application:
    """An aiohttp app answering as vendor `kind`.

    Without `control` the app makes its own in demo mode (replies name the vendor and model);
    with `api_key`, requests must carry `Authorization: Bearer <api_key>` or get the vendor's 401.
    """
    dialect = DIALECTS[_known(kind)]()
    return StandinServer(dialect, control if control is not None else StandinControl(demo=True), api_key).app()


def _known(kind: str) -> str:
    if kind not in DIALECTS:
        raise ValueError(f"unknown stand-in kind {kind!r}; expected one of {STANDIN_KINDS}")
    return kind


__all__ = [
    "BASE_PATHS",
    "ERROR_KINDS",
    "EVENT_TAP",
    "FAULT_KINDS",
    "STANDIN_KINDS",
    "BreakStream",
    "Fail",
    "Fault",
    "Hang",
    "RecordedRequest",
    "Reply",
    "StandinControl",
    "Step",
    "base_path",
    "create_standin_app",
]
