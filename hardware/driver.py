"""PLC driver interface and the protocol-independent part of every driver.

`BaseDriver` holds what must be the same for Modbus, OPC UA and Sparkplug: the write check (through
`TagMap.plan_write`, never per driver), read-back of every write, scaling to engineering units, and the
connection state machine with reconnect-with-backoff. Protocol drivers only move raw values.

While the link is down the state is RECONNECTING (or UNKNOWN before the first connect) and every read or
write fails fast with `PlcUnavailable`: a caller never gets a stale value that looks good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable
from enum import StrEnum
from typing import Protocol, runtime_checkable

from hardware.tags import Tag, TagMap, WritePlan

log = logging.getLogger(__name__)

Value = bool | int | float


class LinkState(StrEnum):
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    UNKNOWN = "unknown"


class PlcUnavailable(ConnectionError):
    """The PLC cannot be reached right now; the driver is reconnecting in the background."""


class WriteNotConfirmed(Exception):
    """The PLC answered, but reading the value back did not give what was written (or the PLC refused it)."""

    def __init__(self, reason: str, *, tag: str, raw: object, readback: object = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tag = tag
        self.raw = raw
        self.readback = readback


@runtime_checkable
class PlcDriver(Protocol):
    """What the line runtime needs from any PLC link."""

    tags: TagMap

    @property
    def state(self) -> LinkState: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self, tag: str) -> Value: ...

    async def read_many(self, tags: Iterable[str]) -> dict[str, Value]: ...

    async def write(self, tag: str, value: Value) -> Value: ...


class BaseDriver:
    """Shared driver logic; subclasses implement the `_`-prefixed raw I/O methods."""

    protocol = "base"

    def __init__(
        self,
        tags: TagMap,
        *,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        io_timeout_s: float = 1.0,
    ) -> None:
        self.tags = tags
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.io_timeout_s = io_timeout_s
        self._state = LinkState.UNKNOWN
        self._closed = False
        self._reconnect_task: asyncio.Task[None] | None = None
        self._connected_event = asyncio.Event()
        self.reconnects = 0  # successful reconnects after a loss, for monitoring

    # ----- subclass hooks
    async def _open(self) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError

    async def _read_raw(self, tag: Tag) -> Value:
        raise NotImplementedError

    async def _write_raw(self, tag: Tag, raw: Value) -> Value | None:
        """Write and return the read-back raw value (or None to let BaseDriver read it back)."""
        raise NotImplementedError

    def _is_link_error(self, exc: BaseException) -> bool:
        """True when `exc` means the link is gone (as opposed to a refused request)."""
        return isinstance(exc, ConnectionError | OSError | asyncio.TimeoutError)

    # ----- state
    @property
    def state(self) -> LinkState:
        return self._state

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ----- lifecycle
    async def connect(self) -> None:
        """Connect once; on failure keep reconnecting in the background and raise PlcUnavailable."""
        self._closed = False
        try:
            await asyncio.wait_for(self._open(), self.io_timeout_s * 5)
        except Exception as exc:
            self._mark_lost(exc)
            raise PlcUnavailable(f"{self.protocol}: cannot connect: {exc}") from exc
        self._set_connected()

    async def close(self) -> None:
        self._closed = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reconnect_task
            self._reconnect_task = None
        with contextlib.suppress(Exception):
            await self._shutdown()
        self._state = LinkState.UNKNOWN
        self._connected_event.clear()

    async def __aenter__(self) -> BaseDriver:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _set_connected(self) -> None:
        self._state = LinkState.CONNECTED
        self._connected_event.set()

    def _mark_lost(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        if self._state == LinkState.CONNECTED:
            log.warning("%s link lost: %s", self.protocol, exc)
        self._state = LinkState.RECONNECTING
        self._connected_event.clear()
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = self.backoff_initial_s
        while not self._closed:
            # Jitter so that many drivers do not hammer a rebooting PLC in lock-step.
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            with contextlib.suppress(Exception):
                await self._shutdown()
            try:
                await asyncio.wait_for(self._open(), self.io_timeout_s * 5)
            except Exception as exc:
                log.debug("%s reconnect failed: %s", self.protocol, exc)
                delay = min(self.backoff_max_s, delay * 2)
                continue
            self.reconnects += 1
            log.info("%s link restored", self.protocol)
            self._set_connected()
            return

    # ----- I/O
    def _require_connected(self) -> None:
        if self._state != LinkState.CONNECTED:
            raise PlcUnavailable(f"{self.protocol}: link {self._state.value}")

    async def read_raw(self, name: str) -> Value:
        tag = self.tags.get(name)
        self._require_connected()
        try:
            return await asyncio.wait_for(self._read_raw(tag), self.io_timeout_s)
        except Exception as exc:
            if self._is_link_error(exc):
                self._mark_lost(exc)
                raise PlcUnavailable(f"{self.protocol}: read {name}: {exc}") from exc
            raise

    async def read(self, tag: str) -> Value:
        """Read one tag in engineering units."""
        return self.tags.get(tag).to_engineering(await self.read_raw(tag))

    async def read_many(self, tags: Iterable[str]) -> dict[str, Value]:
        return {name: await self.read(name) for name in tags}

    async def write(self, tag: str, value: Value) -> Value:
        """Checked write: allow-list, direction and range (WriteRefused), then write and read back.

        Returns the raw value read back from the PLC; raises WriteNotConfirmed when it differs.
        """
        plan = self.tags.plan_write(tag, value)
        return await self.write_plan(plan)

    async def write_plan(self, plan: WritePlan) -> Value:
        self._require_connected()
        tag = plan.tag
        try:
            readback = await asyncio.wait_for(self._write_raw(tag, plan.raw), self.io_timeout_s)
            if readback is None:
                readback = await asyncio.wait_for(self._read_raw(tag), self.io_timeout_s)
        except WriteNotConfirmed:
            raise
        except Exception as exc:
            if self._is_link_error(exc):
                self._mark_lost(exc)
                raise PlcUnavailable(f"{self.protocol}: write {tag.name}: {exc}") from exc
            raise WriteNotConfirmed(
                f"{self.protocol}: PLC refused write {tag.name}={plan.raw!r}: {exc}",
                tag=tag.name,
                raw=plan.raw,
            ) from exc
        if not _same_raw(tag, plan.raw, readback):
            raise WriteNotConfirmed(
                f"{self.protocol}: wrote {tag.name}={plan.raw!r} but read back {readback!r}",
                tag=tag.name,
                raw=plan.raw,
                readback=readback,
            )
        return readback


def _same_raw(tag: Tag, a: Value, b: object) -> bool:
    if not isinstance(b, bool | int | float):
        return False  # e.g. no reply at all
    if tag.type == "float32":
        # float32 on the wire: compare at single precision.
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)))
    if tag.type == "bool":
        return bool(a) == bool(b)
    return int(a) == int(b)
