"""A virtual PLC served over Modbus TCP (pymodbus server), running hardware/plc_logic.py.

Three ways to run it:
- in-process, in its own thread and event loop: `sim = SimPlc(port=0).start(); sim.port; sim.stop()`;
- as a subprocess the tests can kill and restart: `SimPlcProcess(port=0).start()`, `.kill()`, `.start()`;
- from the shell: `python -m hardware.sim_plc --port 5020` or `lineguard plc-sim --port 5020`.

`python -m hardware.sim_plc` prints one line, ``plc-sim: modbus listening on modbus://HOST:PORT``, once bound.

The register layout comes from the tag map (default: hardware/default_tags.yaml). Two extra holding registers,
outside the tag map, let a test drive the physical inputs of a subprocess simulator:
SIM_ESTOP_REGISTER (e-stop, 1 = pressed) and SIM_GUARD_REGISTER (guard door, 1 = open).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.server import ModbusTcpServer

from hardware.modbus_codec import decode_raw, encode_raw
from hardware.plc_logic import PlcLogic, PlcWriteError
from hardware.sim_base import ListeningSim, parse_banner, serve_foreground
from hardware.tags import REGISTER_COUNT, RegisterKind, Tag, TagMap

SIM_ESTOP_REGISTER = 100
SIM_GUARD_REGISTER = 101

_FC_KIND = {
    1: RegisterKind.COIL,
    5: RegisterKind.COIL,
    15: RegisterKind.COIL,
    2: RegisterKind.DISCRETE,
    3: RegisterKind.HOLDING,
    6: RegisterKind.HOLDING,
    16: RegisterKind.HOLDING,
    22: RegisterKind.HOLDING,
    23: RegisterKind.HOLDING,
    4: RegisterKind.INPUT,
}
_ADDRESS_SPACE = 200  # addresses beyond this answer ILLEGAL_ADDRESS, like a real PLC's limited memory


class _PlcContext(ModbusServerContext):
    """Datastore that is the PLC program: reads render its state, writes go through its logic.

    pymodbus 3.x hands a ModbusServerContext flagged `old_simulator` straight to requests (no copy of
    the data), which is what lets every write run the interlocks before it is acknowledged.
    """

    def __init__(self, logic: PlcLogic, tags: TagMap) -> None:  # no super().__init__: it would need a store
        self.logic = logic
        self.old_simulator = True
        self.simdevices = []
        self._by_kind: dict[RegisterKind, dict[int, Tag]] = {k: {} for k in RegisterKind}
        for tag in tags:
            if tag.modbus is not None:
                self._by_kind[tag.modbus.kind][tag.modbus.offset] = tag

    def device_ids(self) -> list[int]:
        return [0]

    def _image(self, kind: RegisterKind, address: int, count: int) -> list[int]:
        snap = self.logic.snapshot()
        out = [0] * count
        for offset, tag in self._by_kind[kind].items():
            regs = encode_raw(tag, snap[tag.name]) if tag.name in snap else [0] * REGISTER_COUNT[tag.type]
            for i, reg in enumerate(regs):
                pos = offset + i - address
                if 0 <= pos < count:
                    out[pos] = reg
        if kind == RegisterKind.HOLDING:
            for reg, name in ((SIM_ESTOP_REGISTER, "estop_active"), (SIM_GUARD_REGISTER, "guard_door_open")):
                if address <= reg < address + count:
                    out[reg - address] = int(bool(snap[name]))
        return out

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        kind = _FC_KIND.get(func_code)
        if kind is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if address < 0 or address + count > _ADDRESS_SPACE:
            return ExcCodes.ILLEGAL_ADDRESS
        image = self._image(kind, address, count)
        if kind in (RegisterKind.COIL, RegisterKind.DISCRETE):
            return [bool(x) for x in image]
        return image

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        kind = _FC_KIND.get(func_code)
        if kind not in (RegisterKind.COIL, RegisterKind.HOLDING):
            return ExcCodes.ILLEGAL_FUNCTION
        if address < 0 or address + len(values) > _ADDRESS_SPACE:
            return ExcCodes.ILLEGAL_ADDRESS
        vals = [int(v) for v in values]
        if kind == RegisterKind.HOLDING:
            backdoor = {
                SIM_ESTOP_REGISTER: self.logic.set_estop,
                SIM_GUARD_REGISTER: self.logic.set_guard_door,
            }
            for reg, setter in backdoor.items():
                if address <= reg < address + len(vals):
                    setter(bool(vals[reg - address]))
        # Apply every tag the write fully covers; a partial write of a 32-bit value is refused.
        table = self._by_kind[kind]
        end = address + len(vals)
        for offset, tag in sorted(table.items()):
            n = REGISTER_COUNT[tag.type]
            if offset + n <= address or offset >= end:
                continue
            if offset < address or offset + n > end:
                return ExcCodes.ILLEGAL_ADDRESS
            raw = decode_raw(tag, vals[offset - address : offset - address + n])
            try:
                self.logic.write(tag.name, raw)
            except PlcWriteError:
                return ExcCodes.ILLEGAL_VALUE if tag.writable else ExcCodes.ILLEGAL_ADDRESS
        return None


class SimPlc(ListeningSim):
    """Modbus TCP PLC simulator: `start()` runs it in a background thread, `serve()` in the current loop."""

    name = "sim-plc-modbus"

    @property
    def url(self) -> str:
        """What a line YAML's ``plc.url`` says for this simulator (driver ``modbus``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"modbus://{host}:{self.port}"

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Serve until `stop_async()` (or task cancellation)."""
        server = ModbusTcpServer(_PlcContext(self.logic, self.tags), address=(self.host, self.requested_port))
        await server.serve_forever(background=True)
        self.port = _bound_port(server, self.requested_port)
        try:
            if ready is not None:
                ready.set()
            self._ready.set()
            await self._scan_until_stopped()
        finally:
            await server.shutdown()


def _bound_port(server: Any, requested: int) -> int:
    transport = getattr(server, "transport", None)
    sockets = getattr(transport, "sockets", None)
    if sockets:
        return int(sockets[0].getsockname()[1])
    return requested


class SimPlcProcess:
    """The simulator as a subprocess, so a test can kill it hard and start it again on the same port."""

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        watchdog_s: float = 1.0,
        tags_path: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        #: Run in the child before exec, e.g. to make it die with its parent (line_agent.services).
        self.preexec_fn = preexec_fn
        self.host = host
        self.port = port
        self.watchdog_s = watchdog_s
        self.tags_path = tags_path
        self.proc: subprocess.Popen[str] | None = None
        #: ``modbus://HOST:PORT`` as the child printed it, once started.
        self.url = ""

    def start(self, timeout: float = 20.0) -> SimPlcProcess:
        cmd = [sys.executable, "-m", "hardware.sim_plc", "--host", self.host, "--port", str(self.port)]
        cmd += ["--watchdog-s", str(self.watchdog_s)]
        if self.tags_path is not None:
            cmd += ["--tags", str(self.tags_path)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ},
                                     preexec_fn=self.preexec_fn)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        # The child prints one banner line "plc-sim: modbus listening on modbus://HOST:PORT" once bound;
        # port 0 becomes the real port.
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"PLC simulator exited early (rc={self.proc.poll()})")
            banner = parse_banner(line)
            if banner is not None:
                self.url = banner[1]
                self.port = int(self.url.rsplit(":", 1)[1])
                return self
        self.kill()
        raise TimeoutError("PLC simulator subprocess did not report its port")

    def kill(self) -> None:
        """Hard kill (SIGKILL), like pulling the PLC's power: no goodbye on the TCP connections."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> SimPlcProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def run_cli(host: str, port: int, watchdog_s: float, gate_pulse_s: float, tags: str | None) -> None:
    """Entry point shared by `python -m hardware.sim_plc` and `lineguard plc-sim --protocol modbus`.

    Prints ``plc-sim: modbus listening on modbus://HOST:PORT`` once bound, then serves until SIGINT/SIGTERM.
    """
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    sim = SimPlc(host, port, watchdog_s=watchdog_s, gate_pulse_s=gate_pulse_s, tags=TagMap.load(tags))
    serve_foreground(sim, lambda: f"modbus listening on {sim.url}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Virtual PLC over Modbus TCP (lineguard)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5020, help="0 picks a free port (printed on stdout)")
    p.add_argument("--watchdog-s", type=float, default=1.0)
    p.add_argument("--gate-pulse-s", type=float, default=0.05)
    p.add_argument("--tags", default=None, help="tag map YAML (default: hardware/default_tags.yaml)")
    a = p.parse_args(argv)
    run_cli(a.host, a.port, a.watchdog_s, a.gate_pulse_s, a.tags)


if __name__ == "__main__":
    main()
