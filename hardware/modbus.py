"""Modbus TCP driver (pymodbus AsyncModbusTcpClient)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from hardware.driver import BaseDriver, PlcUnavailable, Value
from hardware.modbus_codec import decode_raw, encode_raw
from hardware.tags import REGISTER_COUNT, RegisterKind, Tag, TagMap


class ModbusRequestError(Exception):
    """The PLC answered with a Modbus exception (illegal address/value...): the link itself is fine."""


class ModbusDriver(BaseDriver):
    protocol = "modbus"

    def __init__(
        self,
        tags: TagMap,
        host: str = "127.0.0.1",
        port: int = 502,
        *,
        device_id: int = 1,
        io_timeout_s: float = 0.5,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        super().__init__(
            tags, io_timeout_s=io_timeout_s, backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s
        )
        self.host = host
        self.port = port
        self.device_id = device_id
        self._client: AsyncModbusTcpClient | None = None
        # pymodbus logs every refused connect at ERROR; our own state machine reports those.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    async def _open(self) -> None:
        # reconnect_delay=0: pymodbus must not reconnect behind our back; BaseDriver owns the state.
        client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.io_timeout_s, retries=0, reconnect_delay=0
        )
        if not await client.connect():
            client.close()
            raise ConnectionError(f"cannot connect to {self.host}:{self.port}")
        self._client = client

    async def _shutdown(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _live_client(self) -> AsyncModbusTcpClient:
        client = self._client
        if client is None or not client.connected:
            raise ConnectionError("modbus connection closed")
        return client

    def _is_link_error(self, exc: BaseException) -> bool:
        if isinstance(exc, ModbusRequestError):
            return False
        return isinstance(exc, ConnectionException | ModbusIOException | ConnectionError | OSError | TimeoutError)

    @staticmethod
    def _check(resp: object, what: str) -> None:
        if getattr(resp, "isError", lambda: False)():
            raise ModbusRequestError(f"{what}: {resp}")

    async def _read_raw(self, tag: Tag) -> Value:
        if tag.modbus is None:
            raise KeyError(f"tag {tag.name!r} has no modbus address")
        client = self._live_client()
        kind, addr, n = tag.modbus.kind, tag.modbus.offset, REGISTER_COUNT[tag.type]
        dev = self.device_id
        if kind == RegisterKind.COIL:
            r = await client.read_coils(addr, count=1, device_id=dev)
            self._check(r, f"read coil {addr}")
            return bool(r.bits[0])
        if kind == RegisterKind.DISCRETE:
            r = await client.read_discrete_inputs(addr, count=1, device_id=dev)
            self._check(r, f"read discrete input {addr}")
            return bool(r.bits[0])
        if kind == RegisterKind.HOLDING:
            r = await client.read_holding_registers(addr, count=n, device_id=dev)
        else:
            r = await client.read_input_registers(addr, count=n, device_id=dev)
        self._check(r, f"read {kind.value} {addr}")
        return decode_raw(tag, r.registers)

    async def _write_raw(self, tag: Tag, raw: Value) -> Value | None:
        if tag.modbus is None:
            raise KeyError(f"tag {tag.name!r} has no modbus address")
        client = self._live_client()
        kind, addr = tag.modbus.kind, tag.modbus.offset
        if kind == RegisterKind.COIL:
            r = await client.write_coil(addr, bool(raw), device_id=self.device_id)
        elif kind == RegisterKind.HOLDING:
            regs = encode_raw(tag, raw)
            if len(regs) == 1:
                r = await client.write_register(addr, regs[0], device_id=self.device_id)
            else:
                r = await client.write_registers(addr, regs, device_id=self.device_id)
        else:
            raise ModbusRequestError(f"{kind.value} {addr} cannot be written over Modbus")
        self._check(r, f"write {kind.value} {addr}")
        return None  # BaseDriver reads the value back with a separate request: a real confirmation

    async def read_many(self, tags: Iterable[str]) -> dict[str, Value]:
        """Read several tags with one request per register kind where they sit close together.

        Fewer requests means less time holding the connection, so a reject queued behind a status poll
        waits less. Falls back to one request per tag if the PLC refuses a block (e.g. unmapped gaps).
        """
        names = list(tags)
        by_kind: dict[RegisterKind, list[Tag]] = {}
        for name in names:
            tag = self.tags.get(name)
            if tag.modbus is None:
                raise KeyError(f"tag {name!r} has no modbus address")
            by_kind.setdefault(tag.modbus.kind, []).append(tag)
        self._require_connected()
        out: dict[str, Value] = {}
        for kind, group in by_kind.items():
            try:
                raw = await asyncio.wait_for(self._read_block(kind, group), self.io_timeout_s)
            except ModbusRequestError:
                raw = {t.name: await self.read_raw(t.name) for t in group}
            except Exception as exc:
                if self._is_link_error(exc):
                    self._mark_lost(exc)
                    raise PlcUnavailable(f"{self.protocol}: read {kind.value} block: {exc}") from exc
                raise
            out.update(raw)
        return {name: self.tags.get(name).to_engineering(out[name]) for name in names}

    async def _read_block(self, kind: RegisterKind, group: list[Tag]) -> dict[str, Value]:
        client = self._live_client()
        start = min(t.modbus.offset for t in group if t.modbus is not None)
        end = max(t.modbus.offset + REGISTER_COUNT[t.type] for t in group if t.modbus is not None)
        count = end - start
        if count > _MAX_BLOCK[kind]:
            raise ModbusRequestError(f"{kind.value} block of {count} is too large for one request")
        dev = self.device_id
        if kind == RegisterKind.COIL:
            r = await client.read_coils(start, count=count, device_id=dev)
        elif kind == RegisterKind.DISCRETE:
            r = await client.read_discrete_inputs(start, count=count, device_id=dev)
        elif kind == RegisterKind.HOLDING:
            r = await client.read_holding_registers(start, count=count, device_id=dev)
        else:
            r = await client.read_input_registers(start, count=count, device_id=dev)
        self._check(r, f"read {kind.value} {start}+{count}")
        res: dict[str, Value] = {}
        for t in group:
            assert t.modbus is not None
            i = t.modbus.offset - start
            if kind in (RegisterKind.COIL, RegisterKind.DISCRETE):
                res[t.name] = bool(r.bits[i])
            else:
                res[t.name] = decode_raw(t, r.registers[i : i + REGISTER_COUNT[t.type]])
        return res


# Modbus limits per request: 2000 bits, 125 registers.
_MAX_BLOCK = {
    RegisterKind.COIL: 2000,
    RegisterKind.DISCRETE: 2000,
    RegisterKind.HOLDING: 125,
    RegisterKind.INPUT: 125,
}
