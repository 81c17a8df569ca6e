"""Start a stand-in on a real socket: what `router demo` and the test fixtures both need.

Handlers are cancelled when their client goes away and shutdown waits at most a second, so a
test that abandons a `Hang` does not hold up its teardown for the whole hang.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from providers.standins import StandinControl, base_path, create_standin_app


@dataclass
class RunningStandin:
    """A listening stand-in: `url` is the base_url to configure the proxy with."""

    kind: str
    root: str
    url: str
    control: StandinControl
    api_key: str | None
    runner: web.AppRunner

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_standin(
    kind: str,
    *,
    control: StandinControl | None = None,
    api_key: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    middlewares: Iterable[Middleware] = (),
) -> RunningStandin:
    """Serve stand-in `kind` on host:port (0 picks a free port) until `close()`."""
    control = control if control is not None else StandinControl(demo=True)
    app = create_standin_app(kind, control, api_key)
    app.middlewares.extend(middlewares)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    root = f"http://{host}:{bound[1]}"
    return RunningStandin(kind, root, root + base_path(kind), control, api_key, runner)
