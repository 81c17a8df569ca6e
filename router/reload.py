"""Live reload of routes.yaml: poll its mtime (and reload on SIGHUP), validate the whole
file, swap the table in with one assignment. Requests in flight keep the table they
started with; a file that fails validation is refused and the old table stays in force.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Callable

from router.background import Background
from router.metrics import Metrics
from router.routes import ConfigError, RouteTable, load

log = logging.getLogger("router.reload")


class Routes:
    """Holds the table in force. Readers take `routes.table` once per request."""

    def __init__(self, table: RouteTable, path: str | None, metrics: Metrics) -> None:
        self.table = table
        self.path = path
        self.metrics = metrics
        self.last_error: str | None = None
        self._stamp = self._mtime()
        metrics.config_info.set(table.generation)
        for w in table.warnings:
            log.warning("%s", w)

    def _mtime(self) -> tuple[int, int] | None:
        if not self.path:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Load the file now; True when a new table went into force."""
        if not self.path:
            return False
        self._stamp = self._mtime()
        return self._apply(self._load(self.path))

    async def reload_async(self) -> bool:
        """As `reload`, with the reading and validating off the event loop."""
        if not self.path:
            return False
        self._stamp = self._mtime()
        return self._apply(await asyncio.to_thread(self._load, self.path))

    @staticmethod
    def _load(path: str) -> RouteTable | ConfigError:
        try:
            return load(path)
        except ConfigError as exc:
            return exc
        except Exception as exc:  # a bug must not kill the watcher: refuse the file and say why
            log.exception("routes reload failed unexpectedly")
            return ConfigError([f"unexpected error: {exc!r}"], path)

    def _apply(self, table: RouteTable | ConfigError) -> bool:
        """Swap the new table in with one assignment, or count and log the refusal."""
        if isinstance(table, ConfigError):
            exc = table
            self.last_error = str(exc)
            self.metrics.config_reloads.labels("error").inc()
            log.error("routes reload refused, the previous table stays in force:\n%s", exc)
            return False
        table.generation = self.table.generation + 1
        self.table = table
        self.last_error = None
        self.metrics.config_reloads.labels("ok").inc()
        self.metrics.config_info.set(table.generation)
        for w in table.warnings:
            log.warning("%s", w)
        log.info("routes reloaded from %s (generation %d)", self.path, table.generation)
        return True

    async def watch(self, interval: float) -> None:
        """Poll every `interval`; reload once a change has held still for one more poll, so a
        file caught half-written by an editor is not refused (and counted) for nothing."""
        seen: tuple[int, int] | None = None
        while True:
            await asyncio.sleep(interval)
            stamp = self._mtime()
            if stamp == self._stamp:
                seen = None
            elif stamp != seen:
                seen = stamp
            else:
                seen = None
                await self.reload_async()


def install_sighup(loop: asyncio.AbstractEventLoop, routes: Routes, background: Background) -> Callable[[], None]:
    """Reload on SIGHUP; returns the undo. A no-op where signals cannot be installed."""
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: background.spawn(routes.reload_async()))
    except (NotImplementedError, RuntimeError, ValueError):
        return lambda: None

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return undo
