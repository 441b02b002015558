"""OpcUaDriver + LineController against the OPC UA PLC simulator (asyncua server on loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from hardware.driver import LinkState, WriteNotConfirmed
from hardware.opcua import OpcUaDriver
from hardware.safety import CommandRefused, LineController
from hardware.sim_opcua import SimOpcUa
from hardware.tags import AuditRecord, TagMap, WritePlan, WriteRefused


@pytest.fixture(scope="module")
def opcua_sim() -> Iterator[SimOpcUa]:
    sim = SimOpcUa(port=0, watchdog_s=2.0, gate_pulse_s=0.2).start()
    yield sim
    sim.stop()


def test_opcua_read_write_roundtrip(opcua_sim: SimOpcUa, tags: TagMap) -> None:
    async def main() -> None:
        async with OpcUaDriver(tags, opcua_sim.endpoint) as d:
            assert d.state == LinkState.CONNECTED
            assert await d.write("heartbeat", 17) == 17
            assert opcua_sim.snapshot()["heartbeat"] == 17
            assert await d.write("speed_setpoint", 42.5) == 425  # raw read back
            assert await d.read("speed_setpoint") == pytest.approx(42.5)
            vals = await d.read_many(["estop_active", "parts_count", "motor_current", "running"])
            assert vals["estop_active"] is False and isinstance(vals["parts_count"], int)
            assert isinstance(vals["motor_current"], float)
            with pytest.raises(WriteRefused, match="allow-list"):
                await d.write("recipe_id", 1)
            with pytest.raises(WriteRefused, match="above the maximum"):
                await d.write("speed_setpoint", 101)
            # The PLC program's own range check (a raw value the tag map never sends) is visible on read-back.
            with pytest.raises(WriteNotConfirmed):
                await d.write_plan(WritePlan(tag=tags.get("reject_count"), value=5, raw=5))

    asyncio.run(main())


def test_opcua_controller_interlocks_and_reject(opcua_sim: SimOpcUa, tags: TagMap) -> None:
    audits: list[AuditRecord] = []

    async def main() -> None:
        ctl = LineController(OpcUaDriver(tags, opcua_sim.endpoint), on_audit=audits.append, heartbeat_period_s=0.2)
        await ctl.start_background()
        try:
            opcua_sim.set_guard_door(True)
            with pytest.raises(CommandRefused, match="guard door"):
                await ctl.start()
            with pytest.raises(WriteNotConfirmed):  # PLC-side interlock over OPC UA too
                await ctl.driver.write("run_cmd", True)
            opcua_sim.set_guard_door(False)
            await ctl.slow(50)
            await ctl.start()
            pulses = opcua_sim.logic.gate_pulses
            await asyncio.sleep(0.2)
            assert opcua_sim.logic.gate_pulses == pulses
            await ctl.reject_part("OPC-1")
            assert opcua_sim.logic.gate_pulses == pulses + 1
            assert await ctl.driver.read("reject_gate") is True
            st = await ctl.line_state()
            assert st.mode == "running" and st.reject_count is not None and st.reject_count >= 1
            await ctl.stop()
            assert (await ctl.line_state()).mode == "stopped"
        finally:
            await ctl.close()

    asyncio.run(main())
    assert [a.outcome for a in audits if a.action == "start"] == ["refused", "ok"]
