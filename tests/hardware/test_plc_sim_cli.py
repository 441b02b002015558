"""`lineguard plc-sim --protocol …` as its own process, reached through `hardware.drivers.make_driver`.

For each protocol: the banner's URL is what `validate_plc_url` accepts, the driver built from it runs the line
through `LineController` (interlock from the simulator's e-stop, start, reject, stop), and the process stops
cleanly on SIGTERM. Plus the URL checks of every driver, good and bad.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from hardware.driver import LinkState, PlcDriver
from hardware.drivers import DRIVERS, make_driver, parse_sparkplug_url, validate_plc_url
from hardware.safety import CommandRefused, LineController, LineState
from hardware.sim_base import parse_banner, set_sim_inputs
from hardware.tags import TagMap

if TYPE_CHECKING:  # the fixture's type; conftest is not imported as a module at run time
    from conftest import PlcSimCli

BANNER = {
    "modbus": re.compile(r"^plc-sim: modbus listening on (modbus://127\.0\.0\.1:(\d+))$"),
    "opcua": re.compile(r"^plc-sim: opcua listening on (opc\.tcp://127\.0\.0\.1:(\d+)/lineguard/)$"),
    "sparkplug": re.compile(
        r"^plc-sim: sparkplug node (\S+) on (mqtt://127\.0\.0\.1:\d+/\S+)$"
    ),
}


async def _until(what: str, get: Callable[[], Awaitable[LineState]], ok: Callable[[LineState], bool]) -> LineState:
    """Poll the line state until `ok` (the PLC scan and Sparkplug reports take a few ms to show a change)."""
    deadline = asyncio.get_running_loop().time() + 3.0
    while True:
        state = await get()
        if ok(state):
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last state {state.as_dict()}")
        await asyncio.sleep(0.02)


async def _run_line(driver_key: str, url: str, tags: TagMap) -> None:
    driver: PlcDriver = make_driver(driver_key, url, tags, io_timeout_s=1.0)
    assert driver.state == LinkState.UNKNOWN  # built, not connected: LineController connects it
    ctl = LineController(driver, heartbeat_period_s=0.1, plc_watchdog_s=2.0)
    await ctl.start_background()
    try:
        assert driver.state == LinkState.CONNECTED
        state = await ctl.line_state()
        assert state.link == "connected" and state.mode == "stopped" and not state.safe_state

        # The simulator's e-stop, pressed from this (another) process, blocks a start.
        await set_sim_inputs(driver_key, url, estop=True)
        await _until("e-stop seen", ctl.line_state, lambda s: s.estop_active)
        with pytest.raises(CommandRefused, match="emergency stop"):
            await ctl.start()
        await set_sim_inputs(driver_key, url, estop=False, guard_door=True)
        await _until("guard door seen", ctl.line_state, lambda s: s.guard_door_open and not s.estop_active)
        with pytest.raises(CommandRefused, match="guard door"):
            await ctl.start()
        await set_sim_inputs(driver_key, url, guard_door=False)
        await _until("inputs clear", ctl.line_state, lambda s: not s.guard_door_open)

        await ctl.slow(40)
        await ctl.start()
        state = await _until("running", ctl.line_state, lambda s: s.mode == "running")
        rejects_before = state.reject_count
        result = await ctl.reject_part("part-1")
        assert result.part_id == "part-1" and result.latency_ms >= 0
        await _until("reject counted", ctl.line_state, lambda s: s.reject_count == rejects_before + 1)
        await ctl.stop()
        await _until("stopped", ctl.line_state, lambda s: s.mode == "stopped")
        assert ctl.heartbeat.beats > 0
    finally:
        await ctl.close()


def _check_banner(sim: PlcSimCli, protocol: str) -> None:
    assert sim.protocol == protocol
    m = BANNER[protocol].match(sim.banner)
    assert m is not None, sim.banner
    assert validate_plc_url(protocol, sim.url) == sim.url  # the printed URL is already normalised


def test_modbus_plc_sim_process(plc_sim_cli: Callable[..., PlcSimCli], tags: TagMap) -> None:
    sim = plc_sim_cli("--protocol", "modbus", "--port", "0", "--watchdog-s", "2.0")
    _check_banner(sim, "modbus")
    assert int(sim.url.rsplit(":", 1)[1]) > 0  # port 0 was replaced by the real one
    asyncio.run(_run_line("modbus", sim.url, tags))
    assert sim.stop() == 0  # SIGTERM: clean exit


def test_modbus_is_the_default_protocol(plc_sim_cli: Callable[..., PlcSimCli]) -> None:
    sim = plc_sim_cli("--port", "0")  # the pre-existing invocation keeps working
    _check_banner(sim, "modbus")
    assert sim.stop() == 0


def test_opcua_plc_sim_process(plc_sim_cli: Callable[..., PlcSimCli], tags: TagMap) -> None:
    sim = plc_sim_cli("--protocol", "opcua", "--port", "0", "--watchdog-s", "2.0")
    _check_banner(sim, "opcua")
    asyncio.run(_run_line("opcua", sim.url, tags))
    assert sim.stop() == 0


@pytest.mark.parametrize(
    ("ids", "address"),
    [
        (["--group-id", "lg-cli", "--edge-node-id", "cell7", "--device-id", "plc"], "lg-cli/cell7/plc"),
        (["--group-id", "lg-cli", "--edge-node-id", "cell8", "--device-id", ""], "lg-cli/cell8"),  # node-level
    ],
)
def test_sparkplug_plc_sim_process(
    plc_sim_cli: Callable[..., PlcSimCli], mosquitto: str, tags: TagMap, ids: list[str], address: str
) -> None:
    sim = plc_sim_cli("--protocol", "sparkplug", "--broker", mosquitto, "--watchdog-s", "2.0", *ids)
    _check_banner(sim, "sparkplug")
    assert sim.banner.split()[3] == address
    assert sim.url == f"{mosquitto}/{address}"
    sp = parse_sparkplug_url(sim.url)
    assert (sp.group_id, sp.edge_node_id) == tuple(address.split("/")[:2])
    assert sp.device_id == (address.split("/")[2] if address.count("/") == 2 else None)
    asyncio.run(_run_line("sparkplug", sim.url, tags))
    assert sim.stop() == 0


def test_plc_sim_bad_options_fail_fast(tmp_path: Any) -> None:
    import subprocess

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "line_agent.cli", "plc-sim", *args], capture_output=True, text=True, timeout=60
        )

    r = run("--protocol", "sparkplug", "--port", "0")
    assert r.returncode == 2 and "--broker" in r.stderr
    r = run("--protocol", "sparkplug", "--broker", "mqtt://127.0.0.1:1883", "--group-id", "a/b")
    assert r.returncode == 2 and "group id" in r.stderr
    r = run("--protocol", "opcua", "--broker", "mqtt://127.0.0.1:1883")
    assert r.returncode == 2 and "sparkplug" in r.stderr
    r = run("--protocol", "profinet")
    assert r.returncode != 0


# ----- URL checks


@pytest.mark.parametrize(
    ("driver", "url", "normalised"),
    [
        ("modbus", "modbus://127.0.0.1:5020", "modbus://127.0.0.1:5020"),
        ("modbus", "  MODBUS://PLC-7.plant.local:502/ ", "modbus://plc-7.plant.local:502"),
        ("modbus", "modbus://10.0.0.5:502?unit=3", "modbus://10.0.0.5:502?unit=3"),
        ("modbus", "modbus://10.0.0.5:502?unit=1", "modbus://10.0.0.5:502"),
        ("modbus", "modbus://[::1]:5020", "modbus://[::1]:5020"),
        ("opcua", "opc.tcp://127.0.0.1:4840/lineguard/", "opc.tcp://127.0.0.1:4840/lineguard/"),
        ("opcua", "opc.tcp://plc1:4840", "opc.tcp://plc1:4840"),
        ("opcua", "opc.tcp://op:s3cret@plc1:4840/UA/Server", "opc.tcp://op:s3cret@plc1:4840/UA/Server"),
        ("sparkplug", "mqtt://broker:1883/lineguard/line1-plc/plc", "mqtt://broker:1883/lineguard/line1-plc/plc"),
        ("sparkplug", "mqtt://broker:1883/lineguard/line1-plc/", "mqtt://broker:1883/lineguard/line1-plc"),
        ("sparkplug", "mqtt://u:p%40ss@broker:8883/g/n/d", "mqtt://u:p%40ss@broker:8883/g/n/d"),
        ("sparkplug", "mqtt://broker:1883/my%20group/n/d", "mqtt://broker:1883/my%20group/n/d"),
    ],
)
def test_validate_plc_url_good(driver: str, url: str, normalised: str) -> None:
    assert validate_plc_url(driver, url) == normalised
    assert validate_plc_url(driver, normalised) == normalised  # idempotent


@pytest.mark.parametrize(
    ("driver", "url", "message"),
    [
        # The URL the demo's string split once turned into port '4840/lineguard/'.
        ("modbus", "opc.tcp://h:4840/lineguard/", r"needs a modbus:// url.*that is a 'opcua' url"),
        ("modbus", "modbus://h:4840/lineguard/", "unexpected path '/lineguard/'"),
        ("modbus", "modbus://h", "no port"),
        ("modbus", "modbus://h:", "no port"),
        ("modbus", "modbus://:502", "no host"),
        ("modbus", "modbus://h:0", "not in 1-65535"),
        ("modbus", "modbus://h:70000", "port '70000'.*not a number in 1-65535"),
        ("modbus", "modbus://h:50x2", "port '50x2'"),
        ("modbus", "modbus://h:502?unit=300", "unit '300'"),
        ("modbus", "modbus://h:502?slave=3", "unknown query parameter 'slave'"),
        ("modbus", "modbus://admin:pw@h:502", "no login"),
        ("modbus", "h:502", "needs a modbus:// url"),
        ("modbus", "", "url is empty"),
        ("modbus", "modbus://bad host:502", "not a host name"),
        ("opcua", "modbus://h:502", r"needs a opc.tcp:// url.*that is a 'modbus' url"),
        ("opcua", "opc.tcp://h/lineguard/", "no port"),
        ("opcua", "opc.tcp://h:4840lineguard", "port '4840lineguard'"),
        ("opcua", "opc.tcp://h:4840/x?y=1", "unexpected query"),
        ("opcua", "http://h:4840", "needs a opc.tcp:// url"),
        ("sparkplug", "mqtt://broker:1883", "Sparkplug address"),
        ("sparkplug", "mqtt://broker:1883/group", "Sparkplug address"),
        ("sparkplug", "mqtt://broker:1883/g/n/d/extra", "Sparkplug address"),
        ("sparkplug", "mqtt://broker/g/n/d", "no port"),
        ("sparkplug", "mqtt://broker:1883/g//d", "empty edge node id"),
        ("sparkplug", "mqtt://broker:1883/g/n+/d", r"edge node id 'n\+'.*contains '\+'"),
        ("sparkplug", "mqtt://broker:1883/g/n/d%2Fx", "device id 'd/x'.*contains '/'"),
        ("sparkplug", "mqtts://broker:8883/g/n/d", "TLS"),
        ("sparkplug", "opc.tcp://h:4840/g/n/d", r"needs a mqtt:// url.*'opcua'"),
    ],
)
def test_validate_plc_url_bad(driver: str, url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_plc_url(driver, url)
    with pytest.raises(ValueError, match=message):  # make_driver checks the same way before building
        make_driver(driver, url, TagMap.load())


def test_unknown_driver_lists_known_ones() -> None:
    assert set(DRIVERS) == {"modbus", "opcua", "sparkplug"}
    for call in (lambda: validate_plc_url("profinet", "x://h:1"), lambda: make_driver("profinet", "x", TagMap.load())):
        with pytest.raises(ValueError, match=r"unknown plc driver 'profinet'; known drivers: modbus, opcua, sparkplug"):
            call()


def test_make_driver_builds_each_protocol_unconnected(tags: TagMap) -> None:
    from hardware.modbus import ModbusDriver
    from hardware.mqtt_cmd import SparkplugDriver
    from hardware.opcua import OpcUaDriver

    m = make_driver("modbus", "modbus://10.1.2.3:1502?unit=7", tags, io_timeout_s=0.3)
    assert isinstance(m, ModbusDriver)
    assert (m.host, m.port, m.device_id, m.io_timeout_s) == ("10.1.2.3", 1502, 7, 0.3)
    o = make_driver("opcua", "opc.tcp://plc:4840/ua/", tags)
    assert isinstance(o, OpcUaDriver) and o.url == "opc.tcp://plc:4840/ua/"
    s = make_driver("sparkplug", "mqtt://op:pw@broker:1884/grp/node/dev", tags, client_id="t1")
    assert isinstance(s, SparkplugDriver)
    assert (s.host, s.port, s.username, s.password, s.client_id) == ("broker", 1884, "op", "pw", "t1")
    assert (s.target.group_id, s.target.edge_node_id, s.target.device_id) == ("grp", "node", "dev")
    n = make_driver("sparkplug", "mqtt://broker:1884/grp/node", tags)
    assert isinstance(n, SparkplugDriver) and n.target.device_id is None and n.username is None
    for d in (m, o, s, n):
        assert isinstance(d, PlcDriver) and d.state == LinkState.UNKNOWN


def test_importing_drivers_is_cheap() -> None:
    import subprocess

    code = (
        "import sys, hardware.drivers; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pymodbus', 'asyncua', 'paho', 'pysparkplug'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_parse_banner() -> None:
    assert parse_banner("plc-sim: modbus listening on modbus://127.0.0.1:5020\n") == (
        "modbus",
        "modbus://127.0.0.1:5020",
    )
    assert parse_banner("plc-sim: sparkplug node g/n/d on mqtt://h:1883/g/n/d") == ("sparkplug", "mqtt://h:1883/g/n/d")
    assert parse_banner("listening 127.0.0.1 5020") is None
