"""The sandbox clock: wall time plus an offset that tests and operators can advance.

The offset drives everything that models the passing of time inside the Zustelldienst: token
lifetimes, the automatic rejection of submissions nobody collected and the deletion of incomplete
ones. Timestamps that a *peer* checks against its own wall clock (the ``iat`` of issued SETs, the
``callback-timestamp`` header) use :meth:`SandboxClock.wall` instead, so fast-forwarding the sandbox
never makes a real subscriber refuse its events as "issued in the future".
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SandboxClock:
    def __init__(self, offset: float = 0.0, *, wall: Callable[[], float] = time.time) -> None:
        self._offset = float(offset)
        self._wall = wall

    @property
    def offset(self) -> float:
        """Seconds the sandbox clock runs ahead of the wall clock."""
        return self._offset

    def now(self) -> float:
        """Sandbox time (unix seconds): wall time plus every :meth:`advance` so far."""
        return self._wall() + self._offset

    def wall(self) -> float:
        """Real wall time, for timestamps a peer compares with its own clock."""
        return self._wall()

    def advance(self, seconds: float) -> float:
        """Move sandbox time forward (never backward); returns the new sandbox time."""
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        self._offset += float(seconds)
        return self.now()
