"""LineController + ModbusDriver against the real Modbus TCP simulator on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from hardware.driver import LinkState, PlcUnavailable
from hardware.modbus import ModbusDriver
from hardware.safety import CommandRefused, LineController
from hardware.sim_plc import SimPlc
from hardware.tags import AuditRecord, TagMap, WriteRefused


def run_with_controller(
    sim: SimPlc, scenario: Callable[[LineController, list[AuditRecord]], Awaitable[None]], **kw: object
) -> list[AuditRecord]:
    audits: list[AuditRecord] = []

    async def main() -> None:
        driver = ModbusDriver(TagMap.load(), "127.0.0.1", sim.port)
        ctl = LineController(driver, on_audit=audits.append, heartbeat_period_s=0.1, **kw)  # type: ignore[arg-type]
        await driver.connect()
        await ctl.start_background()
        try:
            await scenario(ctl, audits)
        finally:
            await ctl.close()

    asyncio.run(main())
    return audits


def test_reject_gate_fires_on_reject_only(sim: SimPlc) -> None:
    async def scenario(ctl: LineController, audits: list[AuditRecord]) -> None:
        await ctl.slow(40)
        await ctl.start()
        await asyncio.sleep(0.3)
        await ctl.slow(60)
        await ctl.stop()
        await ctl.start()
        await asyncio.sleep(0.3)  # heartbeats, speed changes, start/stop: no gate pulse
        assert sim.logic.gate_pulses == 0
        st = await ctl.line_state()
        assert st.mode == "running" and st.reject_count == 0
        res = await ctl.reject_part("P-1")
        assert sim.logic.gate_pulses == 1
        assert await ctl.driver.read("reject_gate") is True  # pulse is 200 ms long in this fixture
        st = await ctl.line_state()
        assert st.reject_count == 1
        assert res.seq >= 1 and res.latency_ms < 500
        await asyncio.sleep(0.4)
        assert await ctl.driver.read("reject_gate") is False  # pulse ended, no extra pulse
        await ctl.reject_part("P-2")
        assert sim.logic.gate_pulses == 2
        await ctl.reset_reject_counter()
        assert (await ctl.line_state()).reject_count == 0
        assert sim.logic.gate_pulses == 2

    audits = run_with_controller(sim, scenario)
    rejects = [a for a in audits if a.action == "reject_part"]
    assert [a.part_id for a in rejects] == ["P-1", "P-2"]
    assert all(a.outcome == "ok" and a.latency_ms is not None for a in rejects)


@pytest.mark.parametrize("which", ["estop", "guard"])
def test_start_refused_under_estop_and_guard(sim: SimPlc, which: str) -> None:
    async def scenario(ctl: LineController, audits: list[AuditRecord]) -> None:
        if which == "estop":
            sim.set_estop(True)
        else:
            sim.set_guard_door(True)
        with pytest.raises(CommandRefused, match="emergency stop" if which == "estop" else "guard door") as ei:
            await ctl.start()
        assert ei.value.record is not None and ei.value.record.outcome == "refused"
        assert (await ctl.line_state()).mode == "stopped"
        # The PLC enforces the interlock itself: a raw run command past the controller does not latch.
        with pytest.raises(Exception, match="read back False"):
            await ctl.driver.write("run_cmd", True)
        assert sim.snapshot()["running"] is False
        assert sim.logic.interlock_refusals == 1
        # Clearing the input allows a start; tripping it again stops the line and needs a new start.
        sim.set_estop(False)
        sim.set_guard_door(False)
        await ctl.start()
        assert (await ctl.line_state()).mode == "running"
        sim.set_estop(True) if which == "estop" else sim.set_guard_door(True)
        assert (await ctl.line_state()).mode == "stopped"
        sim.set_estop(False)
        sim.set_guard_door(False)
        await asyncio.sleep(0.05)
        assert (await ctl.line_state()).mode == "stopped"

    audits = run_with_controller(sim, scenario)
    assert audits[0].action == "start" and audits[0].outcome == "refused"
    assert ("emergency stop" if which == "estop" else "guard door") in audits[0].reason


def test_write_outside_allow_list_refused_and_audited(sim: SimPlc) -> None:
    async def scenario(ctl: LineController, audits: list[AuditRecord]) -> None:
        before = sim.snapshot()["recipe_id"]
        with pytest.raises(WriteRefused, match="not in the write allow-list"):
            await ctl.write_tag("recipe_id", 7)
        with pytest.raises(WriteRefused, match="not in the write allow-list"):
            await ctl.driver.write("reject_gate", True)  # the driver path checks too, not only the facade
        assert sim.snapshot()["recipe_id"] == before

    audits = run_with_controller(sim, scenario)
    assert len(audits) == 1
    rec = audits[0].as_dict()
    assert rec["outcome"] == "refused" and rec["tag"] == "recipe_id" and rec["value"] == 7
    assert "allow-list" in rec["reason"] and rec["line"] == "line1"


def test_out_of_range_write_refused(sim: SimPlc) -> None:
    async def scenario(ctl: LineController, audits: list[AuditRecord]) -> None:
        await ctl.slow(50)
        with pytest.raises(WriteRefused, match="above the maximum"):
            await ctl.slow(150)
        with pytest.raises(WriteRefused, match="below the minimum"):
            await ctl.slow(-5)
        with pytest.raises(WriteRefused, match="above the maximum"):
            await ctl.write_tag("reject_count", 9)  # only a reset to 0 is allowed
        assert sim.snapshot()["speed_setpoint"] == 500

    audits = run_with_controller(sim, scenario)
    assert [a.outcome for a in audits] == ["ok", "refused", "refused", "refused"]


def test_heartbeat_stop_drives_simulator_to_safe_state(sim: SimPlc) -> None:
    watchdog_s = sim.logic.watchdog_s

    async def scenario(ctl: LineController, audits: list[AuditRecord]) -> None:
        await ctl.slow(80)
        await ctl.start()
        await asyncio.sleep(watchdog_s * 1.5)  # heartbeat running: longer than the watchdog, still running
        st = await ctl.line_state()
        assert st.mode == "running" and st.safe_state is False
        await ctl.heartbeat.stop()
        t0 = time.monotonic()
        while not sim.snapshot()["safe_state"]:
            assert time.monotonic() - t0 < watchdog_s + 0.5, "no safe state within watchdog_s"
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - t0
        assert elapsed <= watchdog_s + 0.25
        snap = sim.snapshot()
        assert snap["running"] is False and snap["run_cmd"] is False and snap["reject_gate"] is False
        st = await ctl.line_state()
        assert st.safe_state is True and st.mode == "stopped"
        with pytest.raises(CommandRefused, match="safe state"):
            await ctl.start()
        pulses = sim.logic.gate_pulses
        with pytest.raises(CommandRefused, match="heartbeat is stale"):
            await ctl.reject_part("P-stale")  # the PLC would ignore it: the caller must know
        assert sim.logic.gate_pulses == pulses
        # Heartbeat back: the flag clears but the line does not restart by itself.
        ctl.heartbeat.start()
        await asyncio.sleep(0.3)
        st = await ctl.line_state()
        assert st.safe_state is False and st.mode == "stopped"
        await ctl.reject_part("P-after")
        assert sim.logic.gate_pulses == pulses + 1

    audits = run_with_controller(sim, scenario)
    assert [(a.part_id, a.outcome) for a in audits if a.action == "reject_part"] == [
        ("P-stale", "refused"),
        ("P-after", "ok"),
    ]


def test_no_heartbeat_means_safe_state(tags: TagMap) -> None:
    """A controller that never starts its heartbeat cannot keep the line running."""
    with SimPlc(port=0, watchdog_s=0.3) as plc:

        async def main() -> None:
            async with ModbusDriver(tags, "127.0.0.1", plc.port) as d:
                await d.write("run_cmd", True)
                assert await d.read("running") is True
                await asyncio.sleep(0.5)
                assert await d.read("safe_state") is True
                assert await d.read("running") is False

        asyncio.run(main())


def test_commands_fail_fast_when_plc_unreachable(tags: TagMap) -> None:
    async def main() -> None:
        plc = SimPlc(port=0).start()
        port = plc.port
        plc.stop()
        audits: list[AuditRecord] = []
        d = ModbusDriver(tags, "127.0.0.1", port)
        ctl = LineController(d, on_audit=audits.append)
        with pytest.raises(PlcUnavailable):
            await d.connect()
        assert d.state == LinkState.RECONNECTING
        assert (await ctl.line_state()).mode == "unknown"
        with pytest.raises(CommandRefused, match="unknown"):
            await ctl.reject_part("P-9")
        assert audits[-1].outcome == "refused" and audits[-1].part_id == "P-9"
        with pytest.raises(PlcUnavailable):
            await ctl.stop()
        assert audits[-1].outcome == "error"
        await ctl.close()

    asyncio.run(main())


def test_audit_hook_async_and_failing_hook_do_not_block_commands(sim: SimPlc) -> None:
    got: list[AuditRecord] = []

    async def async_hook(rec: AuditRecord) -> None:
        await asyncio.sleep(0)
        got.append(rec)

    def broken_hook(rec: AuditRecord) -> None:
        raise RuntimeError("audit store down")

    async def main() -> None:
        for hook in (async_hook, broken_hook):
            driver = ModbusDriver(TagMap.load(), "127.0.0.1", sim.port)
            ctl = LineController(driver, on_audit=hook, heartbeat_period_s=0.1)
            await ctl.start_background()
            await ctl.reject_part(f"hook-{hook.__name__}")
            await ctl.close()

    pulses = sim.logic.gate_pulses
    asyncio.run(main())
    assert sim.logic.gate_pulses == pulses + 2
    assert [r.part_id for r in got] == ["hook-async_hook"]


def test_read_many_block_reads_match_single_reads(sim: SimPlc, tags: TagMap) -> None:
    async def main() -> None:
        async with ModbusDriver(tags, "127.0.0.1", sim.port) as d:
            await d.write("heartbeat", 5)
            await d.write("speed_setpoint", 12.3)
            names = [t.name for t in tags]
            many = await d.read_many(names)
            for name in ("heartbeat", "speed_setpoint", "estop_active", "reject_gate", "recipe_id"):
                assert many[name] == await d.read(name), name
            assert many["speed_setpoint"] == pytest.approx(12.3)
            assert isinstance(many["motor_current"], float) and isinstance(many["parts_count"], int)

    asyncio.run(main())
