"""The PLC heartbeat keeps beating while the loop that serves the API and the cameras stalls.

The stall is injected (a blocking call in the main event loop, as a synchronous handler or a slow parse
would do): the real Modbus simulator's watchdog is the judge. A controller sharing the stalled loop lets
the PLC trip into its safe state; the isolated controller (its own thread and loop) does not.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from hardware.isolated import IsolatedController
from hardware.modbus import ModbusDriver
from hardware.safety import LineController
from hardware.sim_plc import SimPlc
from hardware.tags import TagMap

WATCHDOG_S = 0.5


async def _stall_main_loop(seconds: float) -> None:
    time.sleep(seconds)  # the fault being injected: the loop is held


@pytest.mark.parametrize("isolated", [False, True], ids=["same-loop", "isolated"])
def test_heartbeat_survives_a_stalled_main_loop(isolated: bool) -> None:
    sim = SimPlc(port=0, watchdog_s=WATCHDOG_S).start()
    try:
        async def scenario() -> tuple[int, bool]:
            ctl = LineController(ModbusDriver(TagMap.load(), "127.0.0.1", sim.port), heartbeat_period_s=0.1,
                                 plc_watchdog_s=WATCHDOG_S)
            c: LineController | IsolatedController = IsolatedController(ctl) if isolated else ctl
            await c.start_background()
            await c.start(actor="user:test", reason="test")
            await asyncio.sleep(0.5)
            before = sim.logic.safe_state_trips
            await _stall_main_loop(3 * WATCHDOG_S)
            await asyncio.sleep(0.3)
            running = bool((await c.line_state()).mode == "running")
            await c.close()
            return sim.logic.safe_state_trips - before, running

        trips, running = asyncio.run(scenario())
    finally:
        sim.stop()
    if isolated:
        assert trips == 0 and running
    else:  # the control: sharing the loop, the stall starves the heartbeat and the PLC stops the line
        assert trips >= 1 and not running
