"""Where the access log lines go.

Embedded (tests, another program's loop), through the `router.access` logger, so the host
decides. Under `router serve`, straight to stdout: every line of one loop iteration in one
buffered write, without the logging machinery's record, caller lookup and flush per line.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, BinaryIO

import orjson
from aiohttp import web

access = logging.getLogger("router.access")


class AccessLog:
    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream
        self._lines: list[bytes] = []

    @property
    def enabled(self) -> bool:
        return self._stream is not None or access.isEnabledFor(logging.INFO)

    def write(self, line: dict[str, Any]) -> None:
        if self._stream is None:
            access.info(orjson.dumps(line).decode())
            return
        if not self._lines:
            asyncio.get_running_loop().call_soon(self.flush)
        self._lines.append(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        if self._stream is not None and self._lines:
            data = b"".join(self._lines)
            self._lines.clear()
            try:
                self._stream.write(data)
                self._stream.flush()
            except (OSError, ValueError):  # stdout closed or full: never fail a request for its log line
                pass


ACCESS_LOG = web.AppKey("access_log", AccessLog)
