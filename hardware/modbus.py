"""Modbus TCP driver (pymodbus AsyncModbusTcpClient)."""

from __future__ import annotations

import logging

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from hardware.driver import BaseDriver, Value
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
