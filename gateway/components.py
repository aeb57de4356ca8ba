"""The runtime's parts as components: each starts and stops; they start in order and stop in reverse.

:class:`Components` is the only place that knows the order. A component that fails to start stops
the ones already started (in reverse) before the error propagates. :class:`Drain` is the one
"shutting down" state: the intake refuses new messages and HTTP answers 503 from the moment it is
set, before the first component stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

log = structlog.get_logger(__name__)


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Drain:
    """Set once when shutdown begins; read by the intake and the HTTP middleware."""

    def __init__(self) -> None:
        self._set = False

    def begin(self) -> None:
        if not self._set:
            self._set = True
            log.info("gateway_draining")

    @property
    def active(self) -> bool:
        return self._set


@dataclass
class Hooks:
    """A component from two coroutine functions (for parts without a class of their own)."""

    name: str
    on_start: Callable[[], Awaitable[None]] | None = None
    on_stop: Callable[[], Awaitable[None]] | None = None

    async def start(self) -> None:
        if self.on_start is not None:
            await self.on_start()

    async def stop(self) -> None:
        if self.on_stop is not None:
            await self.on_stop()


@dataclass
class Task:
    """A background task: started with the component, cancelled (and awaited) when it stops."""

    name: str
    run: Callable[[], Coroutine[Any, Any, Any]]
    before_cancel: Callable[[], Awaitable[None]] | None = None  # e.g. let in-flight work finish
    task: asyncio.Task[Any] | None = field(default=None, init=False)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        if self.before_cancel is not None:
            await self.before_cancel()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Components:
    def __init__(self, components: Sequence[Component] = ()) -> None:
        self.components: list[Component] = list(components)
        self.started: list[Component] = []

    def add(self, component: Component) -> None:
        self.components.append(component)

    async def start(self) -> None:
        for component in self.components:
            began = time.perf_counter()
            try:
                await component.start()
            except BaseException:
                await self.stop()
                raise
            self.started.append(component)
            log.debug("component_started", component=component.name, seconds=round(time.perf_counter() - began, 3))

    async def stop(self) -> None:
        """Reverse order; one component failing to stop does not keep the others running."""
        while self.started:
            component = self.started.pop()
            try:
                await component.stop()
            except Exception:
                log.exception("component_stop_failed", component=component.name)
            log.debug("component_stopped", component=component.name)
