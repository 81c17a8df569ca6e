"""One movable deadline for a block of awaits, cheap enough for the per-chunk path.

`asyncio.timeout(...).reschedule()` cancels and re-creates a timer handle on every move; a
stream moves its deadline on every read, so here moving it is one float store and the
timer catches up lazily: when it fires early it re-arms itself for the moved deadline.
One timer handle per quiet period, not per chunk. The same watchdog guards an upstream
read (how long the vendor may stay silent) and a client write (how long a client that
stopped reading may hold the stream): `phase` says which one ran out.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Watchdog:
    """`async with Watchdog(loop, loop.time() + s) as wd:` ... `wd.when = loop.time() + s` per read.

    Past `when`, the task is cancelled and the block ends with TimeoutError, as with
    `asyncio.timeout`; `expired` and `phase` stay readable afterwards.
    """

    __slots__ = ("when", "phase", "expired", "loop", "_task", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float, phase: str = "upstream") -> None:
        # The caller's loop, not asyncio.get_running_loop(): on Python 3.11 that is a getpid
        # system call, and two watchdogs are made per stream.
        self.when = when
        self.phase = phase
        self.expired = False
        self.loop = loop
        self._task: asyncio.Task | None = None
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> "Watchdog":
        self._task = asyncio.current_task(self.loop)
        self._handle = self.loop.call_at(self.when, self._fire)
        return self

    def _fire(self) -> None:
        if self.loop.time() < self.when:   # moved since armed: wait for the new deadline
            self._handle = self.loop.call_at(self.when, self._fire)
            return
        self._handle = None
        self.expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.expired and self._task is not None:
            # Our own cancellation, not the client's: undo it and say it was a timeout.
            if self._task.uncancel() == 0 and et is asyncio.CancelledError:
                raise TimeoutError(self.phase) from exc

    def rearm(self, when: float) -> None:
        """Move the deadline earlier than it is armed for (moving it later needs no call)."""
        self.when = when
        if self._handle is not None and when < self._handle.when():
            self._handle.cancel()
            self._handle = self.loop.call_at(when, self._fire)
