"""Raw value <-> 16-bit Modbus registers, shared by the Modbus driver and the Modbus PLC simulator."""

from __future__ import annotations

from collections.abc import Sequence

from pymodbus.client.mixin import ModbusClientMixin

from hardware.tags import Tag

RawValue = bool | int | float

_DT = ModbusClientMixin.DATATYPE
_PYMODBUS_TYPE = {"int16": _DT.INT16, "uint16": _DT.UINT16, "int32": _DT.INT32, "float32": _DT.FLOAT32}


def encode_raw(tag: Tag, raw: RawValue) -> list[int]:
    """Raw value -> 16-bit registers, big-endian word order (shared with the Modbus driver)."""
    if tag.type == "bool":
        return [1 if raw else 0]
    value: int | float = float(raw) if tag.type == "float32" else int(raw)
    return ModbusClientMixin.convert_to_registers(value, _PYMODBUS_TYPE[tag.type])


def decode_raw(tag: Tag, registers: Sequence[int]) -> RawValue:
    if tag.type == "bool":
        return bool(registers[0])
    value = ModbusClientMixin.convert_from_registers(list(registers), _PYMODBUS_TYPE[tag.type])
    assert isinstance(value, int | float)
    return value
