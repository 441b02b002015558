"""Run an async simulator in its own thread and event loop, so sync tests and demos can start/stop it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Self

from hardware.plc_logic import PlcLogic, RawValue
from hardware.tags import TagMap

SCAN_PERIOD_S = 0.005  # PLC scan cycle of the simulators
#: Start of the one line a foreground simulator (`lineguard plc-sim`) prints on stdout once it serves.
BANNER_PREFIX = "plc-sim: "


class ThreadedSim:
    """Base for simulators: subclasses implement `serve()`, which must call `self._ready.set()` once bound."""

    name = "sim"

    def __init__(self, *, watchdog_s: float = 1.0, gate_pulse_s: float = 0.05) -> None:
        self.logic = PlcLogic(watchdog_s=watchdog_s, gate_pulse_s=gate_pulse_s)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        # A stop asked for before serve() made its event (e.g. SIGTERM while binding) must not be lost.
        self._stop_requested = False
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

    def _new_stop_event(self) -> asyncio.Event:
        """The event serve() waits on; already set when a stop came in during start-up."""
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        return self._stop

    async def _scan_until_stopped(self) -> None:
        stop = self._new_stop_event()
        while not stop.is_set():
            self.logic.scan()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SCAN_PERIOD_S)

    def stop_async(self) -> None:
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    def start(self, timeout: float = 20.0) -> Self:
        self._stop_requested = False
        self._ready.clear()
        self._error = None
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


def serve_foreground(sim: ThreadedSim, banner: Callable[[], str]) -> None:
    """Serve `sim` in this process until SIGINT/SIGTERM, printing ``banner()`` on stdout once it is ready.

    The banner is printed only after the simulator is bound (or connected to its broker), so whoever started
    the process can read it and connect straight away; with port 0 it carries the real port.
    """
    asyncio.run(_serve_foreground(sim, banner))


async def _serve_foreground(sim: ThreadedSim, banner: Callable[[], str]) -> None:
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sim.stop_async)
    task = asyncio.create_task(sim.serve(ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiter.cancel()
        task.result()  # raises the bind / broker error; a clean return means it was stopped while starting
        return
    print(BANNER_PREFIX + banner(), flush=True)
    await task


def parse_banner(line: str) -> tuple[str, str] | None:
    """``(protocol, url)`` from a foreground simulator's banner line; None for any other line.

    The URL is the banner's last word, and is what a line YAML's ``plc.url`` should say.
    """
    if not line.startswith(BANNER_PREFIX):
        return None
    words = line[len(BANNER_PREFIX) :].split()
    if len(words) < 2:
        return None
    return words[0], words[-1]


async def set_sim_inputs(driver: str, url: str, *, estop: bool | None = None, guard_door: bool | None = None) -> None:
    """Press/release the e-stop and open/close the guard door of a simulator, possibly in another process.

    `driver` and `url` are what the line's PLC config says (a `hardware.drivers.DRIVERS` key and its URL, as a
    `lineguard plc-sim` banner prints it). Goes through each simulator's own test input, outside the tag map:
    Modbus holding registers 100/101, OPC UA variables ``sim.estop``/``sim.guard_door``, Sparkplug NCMD metrics
    ``Sim Control/E-Stop``/``Sim Control/Guard Door``. Only simulators have these; a real PLC does not.
    """
    from hardware.drivers import validate_plc_url

    url = validate_plc_url(driver, url)
    if driver == "modbus":
        await _set_modbus_inputs(url, estop, guard_door)
    elif driver == "opcua":
        await _set_opcua_inputs(url, estop, guard_door)
    else:
        await asyncio.to_thread(_set_sparkplug_inputs, url, estop, guard_door)


async def _set_modbus_inputs(url: str, estop: bool | None, guard_door: bool | None) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    from hardware.drivers import parse_modbus_url
    from hardware.sim_plc import SIM_ESTOP_REGISTER, SIM_GUARD_REGISTER

    host, port, _unit = parse_modbus_url(url)
    client = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0, reconnect_delay=0)
    if not await client.connect():
        raise ConnectionError(f"cannot connect to {url}")
    try:
        for reg, value in ((SIM_ESTOP_REGISTER, estop), (SIM_GUARD_REGISTER, guard_door)):
            if value is not None:
                result = await client.write_register(reg, int(value))
                if result.isError():
                    raise ConnectionError(f"simulator refused register {reg}: {result}")
    finally:
        client.close()


async def _set_opcua_inputs(url: str, estop: bool | None, guard_door: bool | None) -> None:
    from asyncua import Client, ua

    from hardware.sim_opcua import NAMESPACE_URI, SIM_ESTOP_NODE, SIM_GUARD_NODE, sim_input_node_id

    async with Client(url, timeout=2) as client:
        idx = await client.get_namespace_index(NAMESPACE_URI)
        for ident, value in ((SIM_ESTOP_NODE, estop), (SIM_GUARD_NODE, guard_door)):
            if value is not None:
                node = client.get_node(sim_input_node_id(ident, idx))
                await node.write_value(ua.DataValue(ua.Variant(bool(value), ua.VariantType.Boolean)))


def _set_sparkplug_inputs(url: str, estop: bool | None, guard_door: bool | None) -> None:
    import time

    from hardware.drivers import parse_sparkplug_url
    from hardware.mqtt_cmd import SparkplugTarget, new_paho_client
    from hardware.sim_mqtt import sim_input_payload

    sp = parse_sparkplug_url(url)
    client = new_paho_client(f"lineguard-sim-inputs-{time.time_ns() % 10**9}")
    if sp.username is not None:
        client.username_pw_set(sp.username, sp.password)
    client.connect(sp.host, sp.port, 10)
    client.loop_start()
    try:
        topic = SparkplugTarget(sp.group_id, sp.edge_node_id, sp.device_id).node_topic("CMD")
        info = client.publish(topic, sim_input_payload(estop=estop, guard_door=guard_door), qos=1)
        info.wait_for_publish(5)
        if not info.is_published():
            raise ConnectionError(f"could not publish the simulator inputs to {sp.broker}")
    finally:
        client.disconnect()
        client.loop_stop()
