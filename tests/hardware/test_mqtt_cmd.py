"""Sparkplug B command driver against a real Mosquitto and the Sparkplug PLC simulator."""

from __future__ import annotations

import asyncio
import time

import paho.mqtt.client as mqtt
import pytest
from pysparkplug import DCmd, Topic

from hardware.driver import LinkState, PlcUnavailable, WriteNotConfirmed
from hardware.mqtt_cmd import SparkplugDriver, SparkplugTarget, new_paho_client
from hardware.safety import CommandRefused, LineController
from hardware.sim_mqtt import SimSparkplugNode
from hardware.tags import AuditRecord, TagMap, WriteRefused
from line_agent.mqtt import parse_mqtt_url


def test_sparkplug_write_is_dcmd_and_read_back(mosquitto: str, tags: TagMap) -> None:
    target = SparkplugTarget("lg-test", "line1-plc", "plc")
    # An independent subscriber proves what goes on the wire: a Sparkplug DCMD with the raw value.
    seen: list[tuple[str, bytes]] = []
    spy = new_paho_client("spy")
    spy.on_message = lambda c, u, m: seen.append((m.topic, bytes(m.payload)))
    host, port, *_ = parse_mqtt_url(mosquitto)
    spy.connect(host, port)
    spy.subscribe("spBv1.0/lg-test/DCMD/#")
    spy.loop_start()
    sim = SimSparkplugNode(mosquitto, target, watchdog_s=5.0, gate_pulse_s=0.2).start()
    try:

        async def main() -> None:
            async with SparkplugDriver(tags, mosquitto, target) as d:
                assert d.state == LinkState.CONNECTED
                assert await d.write("speed_setpoint", 33.3) == 333
                assert sim.snapshot()["speed_setpoint"] == 333
                assert await d.read("speed_setpoint") == pytest.approx(33.3)
                vals = await d.read_many(["estop_active", "running", "parts_count", "motor_current"])
                assert vals["estop_active"] is False and vals["running"] is False
                with pytest.raises(WriteRefused, match="allow-list"):
                    await d.write("recipe_id", 3)
                with pytest.raises(WriteRefused, match="allow-list"):
                    await d.write("reject_gate", True)
                # PLC-side interlock over Sparkplug: the echo says False, so the write is not confirmed.
                sim.set_estop(True)
                with pytest.raises(WriteNotConfirmed, match="read back False"):
                    await d.write("run_cmd", True)
                sim.set_estop(False)
                await asyncio.sleep(0.1)
                assert await d.read("estop_active") is False  # DDATA report-by-exception reached us

        asyncio.run(main())
        time.sleep(0.2)
        dcmds = [DCmd.decode(p) for t, p in seen if str(Topic.from_str(t).message_type) == "DCMD"]
        names = [(m.name, m.value) for c in dcmds for m in c.metrics]
        assert ("speed_setpoint", 333) in names
        assert ("run_cmd", True) in names
        assert not any(n == "recipe_id" for n, _ in names)  # refused writes never reach the wire
    finally:
        sim.stop()
        spy.loop_stop()
        spy.disconnect()


def test_sparkplug_controller_and_node_death(mosquitto: str, tags: TagMap) -> None:
    target = SparkplugTarget("lg-test", "line1-plc-b", "plc")
    sim = SimSparkplugNode(mosquitto, target, watchdog_s=1.0, gate_pulse_s=0.2).start()
    audits: list[AuditRecord] = []
    try:

        async def main() -> None:
            driver = SparkplugDriver(tags, mosquitto, target, backoff_initial_s=0.05, backoff_max_s=0.2)
            ctl = LineController(driver, on_audit=audits.append, heartbeat_period_s=0.1)
            await ctl.start_background()
            try:
                sim.set_guard_door(True)
                await asyncio.sleep(0.15)  # the DDATA report of the input reaches the host (<= 50 ms period)
                with pytest.raises(CommandRefused, match="guard door"):
                    await ctl.start()
                sim.set_guard_door(False)
                await asyncio.sleep(0.15)
                await ctl.slow(20)
                await ctl.start()
                await ctl.reject_part("SP-1")
                assert sim.logic.gate_pulses == 1
                await asyncio.sleep(1.2)  # beyond the watchdog: heartbeats over Sparkplug keep it alive
                st = await ctl.line_state()
                assert st.mode == "running" and st.safe_state is False and st.reject_count == 1

                sim.crash()  # unclean: the broker publishes the NDEATH will
                t0 = time.monotonic()
                while driver.state == LinkState.CONNECTED:
                    assert time.monotonic() - t0 < 5, "NDEATH not noticed"
                    await asyncio.sleep(0.02)
                assert (await ctl.line_state()).mode == "unknown"
                with pytest.raises(PlcUnavailable):
                    await driver.read("running")
                with pytest.raises(CommandRefused):
                    await ctl.reject_part("SP-2")
            finally:
                await ctl.close()

        asyncio.run(main())
    finally:
        sim.stop()
    assert [(a.action, a.outcome) for a in audits if a.action in ("start", "reject_part")] == [
        ("start", "refused"),
        ("start", "ok"),
        ("reject_part", "ok"),
        ("reject_part", "refused"),
    ]


def test_mqtt_client_api() -> None:
    assert isinstance(new_paho_client("x"), mqtt.Client)
