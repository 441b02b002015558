"""Kill the PLC simulator process and start it again on the same port: the driver must reconnect."""

from __future__ import annotations

import asyncio
import time

from hardware.driver import LinkState, PlcUnavailable
from hardware.modbus import ModbusDriver
from hardware.safety import CommandRefused, LineController
from hardware.sim_plc import SimPlcProcess
from hardware.tags import AuditRecord, TagMap


def test_simulator_restart_driver_reconnects_and_resumes(tags: TagMap) -> None:
    proc = SimPlcProcess(port=0, watchdog_s=1.0).start()
    port = proc.port
    try:
        audits: list[AuditRecord] = []

        async def main() -> None:
            driver = ModbusDriver(tags, "127.0.0.1", port, backoff_initial_s=0.05, backoff_max_s=0.2)
            ctl = LineController(driver, on_audit=audits.append, heartbeat_period_s=0.1)
            await ctl.start_background()
            assert driver.state == LinkState.CONNECTED
            await ctl.slow(30)
            await ctl.start()
            await ctl.reject_part("before")
            assert (await ctl.line_state()).reject_count == 1

            proc.kill()  # power cut: no FIN handshake from the PLC side beyond the kernel's
            t0 = time.monotonic()
            while driver.state == LinkState.CONNECTED:  # the heartbeat notices within a period or two
                assert time.monotonic() - t0 < 3
                await asyncio.sleep(0.02)
            assert driver.state == LinkState.RECONNECTING
            st = await ctl.line_state()
            assert st.mode == "unknown" and st.link == "reconnecting"
            try:
                await ctl.reject_part("during")
                raise AssertionError("reject while the PLC is down must not succeed")
            except CommandRefused as exc:
                assert "unknown" in exc.reason
            try:
                await driver.read("running")
                raise AssertionError("read while the PLC is down must not succeed")
            except PlcUnavailable:
                pass
            await asyncio.sleep(0.5)  # down for a while: several failed reconnect attempts
            assert driver.state == LinkState.RECONNECTING

            proc.start()  # same port
            assert proc.port == port
            assert await driver.wait_connected(5.0), "driver did not reconnect"
            assert driver.reconnects >= 1
            # Resumes: fresh PLC (stopped, counters at 0), heartbeat keeps it out of safe state.
            await asyncio.sleep(1.3)  # longer than the PLC watchdog: the heartbeat must have resumed
            st = await ctl.line_state()
            assert st.mode == "stopped" and st.safe_state is False
            assert st.reject_count == 0
            await ctl.start()
            await ctl.reject_part("after")
            st = await ctl.line_state()
            assert st.mode == "running" and st.reject_count == 1
            await ctl.close()

        asyncio.run(main())
        by_part = {a.part_id: a.outcome for a in audits if a.action == "reject_part"}
        assert by_part == {"before": "ok", "during": "refused", "after": "ok"}
    finally:
        proc.terminate()
