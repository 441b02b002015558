"""A LineController on a thread and event loop of its own, so the PLC heartbeat never waits on anything else.

In one asyncio loop with the API and the camera loop, anything that holds that loop (a large request body
parsed, a slow client, a blocking call in a handler) delays the heartbeat; past the PLC's watchdog the PLC
drives the line to its safe state and the line stops. Here the controller, its driver and its heartbeat live
on a dedicated loop in a dedicated thread. Callers on any other loop await the same methods; each call is
handed to the controller's loop and its result handed back.

Python's GIL still switches threads every few milliseconds (``sys.getswitchinterval``), so even a CPU-bound
main thread leaves the heartbeat thread its turn: a beat is late by milliseconds, not by the stall.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from hardware.driver import PlcDriver, Value
from hardware.safety import Cause, Heartbeat, LineController, LineState, RejectResult
from hardware.tags import TagMap

T = TypeVar("T")


class IsolatedController:
    """The ``LineController`` interface, carried out on the controller's own thread and loop."""

    def __init__(self, controller: LineController, name: str = "plc") -> None:
        self._ctl = controller
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=f"{name}-controller", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the controller thread has stopped")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # ----- what readers look at (plain attributes: safe to read from any thread)
    @property
    def controller(self) -> LineController:
        return self._ctl

    @property
    def driver(self) -> PlcDriver:
        return self._ctl.driver

    @property
    def tags(self) -> TagMap:
        return self._ctl.tags

    @property
    def line(self) -> str:
        return self._ctl.line

    @property
    def heartbeat(self) -> Heartbeat:
        return self._ctl.heartbeat

    @property
    def last_command(self) -> Cause | None:
        return self._ctl.last_command

    # ----- lifecycle
    async def start_background(self) -> None:
        await self._call(self._ctl.start_background())

    async def close(self) -> None:
        try:
            await self._call(self._ctl.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10.0)
            if not self._thread.is_alive():
                self._loop.close()

    # ----- commands
    async def reject_part(self, part_id: str, *, reason: str = "") -> RejectResult:
        return await self._call(self._ctl.reject_part(part_id, reason=reason))

    async def start(self, *, actor: str | None = None, reason: str = "") -> None:
        await self._call(self._ctl.start(actor=actor, reason=reason))

    async def stop(self, *, actor: str | None = None, reason: str = "") -> None:
        await self._call(self._ctl.stop(actor=actor, reason=reason))

    async def slow(self, speed_pct: float, *, actor: str | None = None, reason: str = "") -> None:
        await self._call(self._ctl.slow(speed_pct, actor=actor, reason=reason))

    async def reset_reject_counter(self) -> None:
        await self._call(self._ctl.reset_reject_counter())

    async def write_tag(self, tag: str, value: Value) -> Value:
        return await self._call(self._ctl.write_tag(tag, value))

    async def line_state(self) -> LineState:
        return await self._call(self._ctl.line_state())


#: What the line runtime and the API command: a controller in their loop, or one on its own thread.
Controller = LineController | IsolatedController
