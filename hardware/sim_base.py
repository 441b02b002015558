"""Run an async simulator in its own thread and event loop, so sync tests and demos can start/stop it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Self

from hardware.plc_logic import PlcLogic, RawValue
from hardware.tags import TagMap

SCAN_PERIOD_S = 0.005  # PLC scan cycle of the simulators


class ThreadedSim:
    """Base for simulators: subclasses implement `serve()`, which must call `self._ready.set()` once bound."""

    name = "sim"

    def __init__(self, *, watchdog_s: float = 1.0, gate_pulse_s: float = 0.05) -> None:
        self.logic = PlcLogic(watchdog_s=watchdog_s, gate_pulse_s=gate_pulse_s)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ----- simulator API (the "field": buttons and sensors)
    def set_estop(self, active: bool) -> None:
        self.logic.set_estop(active)

    def set_guard_door(self, open_: bool) -> None:
        self.logic.set_guard_door(open_)

    def snapshot(self) -> dict[str, RawValue]:
        return self.logic.snapshot()

    # ----- lifecycle
    async def serve(self, ready: asyncio.Event | None = None) -> None:
        raise NotImplementedError

    async def _scan_until_stopped(self) -> None:
        self._stop = asyncio.Event()
        while not self._stop.is_set():
            self.logic.scan()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SCAN_PERIOD_S)

    def stop_async(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def start(self, timeout: float = 20.0) -> Self:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.serve())
            except BaseException as exc:  # surfaced to start() instead of dying silently in a thread
                self._error = exc
                self._ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self.name} did not start")
        if self._error is not None:
            raise RuntimeError(f"{self.name} failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.stop_async)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ListeningSim(ThreadedSim):
    """A simulator serving a protocol on ``host:port`` (port 0: a free one, in ``.port`` once started)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        watchdog_s: float = 1.0,
        gate_pulse_s: float = 0.05,
        tags: TagMap | None = None,
    ) -> None:
        super().__init__(watchdog_s=watchdog_s, gate_pulse_s=gate_pulse_s)
        self.host = host
        self.requested_port = port
        self.port = port
        self.tags = tags or TagMap.load()
