"""``GET /api/telemetry/downtime``: stops as the controller and the runtime audit them, planned and unplanned apart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from api_support import LINE, Api

from line_agent.audit import AuditWriter


def test_downtime_from_the_audit_trail(api: Api, sim: Any) -> None:
    if sim is None:
        pytest.skip("no PLC simulator")
    from hardware.modbus import ModbusDriver
    from hardware.safety import LineController
    from hardware.tags import TagMap

    audit = AuditWriter(api.db)

    async def shift() -> None:
        ctl = LineController(ModbusDriver(TagMap.load(), "127.0.0.1", sim.port), heartbeat_period_s=0.1,
                             on_audit=audit.hook(LINE), actor=f"runtime:{LINE}", line=LINE)
        await ctl.start_background()
        await ctl.start(actor="user:sup", reason="shift start")
        await asyncio.sleep(0.3)
        await ctl.stop(actor="user:sup", reason="planned: tool change")
        await asyncio.sleep(0.6)
        await ctl.start(actor="user:sup", reason="tool changed")
        await asyncio.sleep(0.3)
        await ctl.stop(reason="stop rule: 8 rejects in the last 10 parts (limit 8/10)")  # the runtime's own
        await asyncio.sleep(0.4)
        await ctl.close()

    asyncio.run(shift())
    audit.close()
    time.sleep(0.2)
    r = api.client.get("/api/telemetry/downtime", params={"line": LINE, "hours": 1}, headers=api.h("viewer"))
    assert r.status_code == 200, r.text
    d = r.json()
    stops = [e for e in d["episodes"] if e["kind"] == "stop"]
    assert [(e["cause"], e["planned"]) for e in stops] == [("person", True), ("rule", False)]
    assert stops[0]["duration_s"] == pytest.approx(0.6, abs=0.25) and stops[0]["reason"] == "planned: tool change"
    assert stops[1]["ongoing"] and stops[1]["reason"].startswith("stop rule:")
    assert d["planned_s"] == pytest.approx(stops[0]["duration_s"]) and d["unplanned_s"] > 0
    assert d["by_cause"]["rule"]["stops"] == 1
