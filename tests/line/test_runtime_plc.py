"""The line runtime against the real Modbus PLC simulator over TCP: reject gate and stop rule."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hardware.modbus import ModbusDriver
from hardware.safety import LineController
from hardware.sim_plc import SimPlc
from line_agent.config import parse_line_config
from line_agent.live import LiveHub
from line_agent.mqtt import Publisher
from line_agent.runtime import LineRuntime


def _line(defect_rate: float, stop: dict[str, int] | None) -> dict[str, object]:
    return {
        "line": "rt1",
        "cameras": [{
            "name": "cam1", "source": f"synthetic://?defect_rate={defect_rate}&seed=5&count=12",
            "detector": "template",
            "qa": {"rules": [{"classes": ["*"], "min_confidence": 0.3, "action": "reject"}],
                   "unknown_action": "reject"},
        }],
        "control": {"stop": stop},
        "save_frames": "none",
    }


async def _run(cfg_data: dict[str, object], mqtt_url: str, tmp: Path, seconds: float) -> tuple[LineRuntime, dict]:  # type: ignore[type-arg]
    sim = SimPlc(port=0, watchdog_s=2.0).start()
    try:
        cfg = parse_line_config(cfg_data)
        ctl = LineController(ModbusDriver(sim.tags, "127.0.0.1", sim.port), plc_watchdog_s=2.0)
        await ctl.start_background()
        await ctl.start()
        pub = Publisher(mqtt_url, client_id=f"rt-test-{time.monotonic_ns()}")
        rt = LineRuntime(cfg, controller=ctl, publisher=pub, hub=LiveHub(), frames_dir=tmp)
        await rt.run(until=time.monotonic() + seconds)
        await asyncio.sleep(0.3)  # the gate pulse and counters settle in the PLC scan
        snap = sim.snapshot()
        await ctl.close()
        pub.close()
        return rt, snap
    finally:
        sim.stop()


def test_reject_gate_fires_for_rejects_only(mqtt_url: str, tmp_path: Path) -> None:
    rt, snap = asyncio.run(_run(_line(0.5, None), mqtt_url, tmp_path, 8.0))
    assert rt.inspected == 12  # the whole synthetic batch went through
    rejects = rt.counters.counts["reject"]
    assert 0 < rejects < 12
    assert snap["reject_count"] == rejects  # the PLC counted one gate pulse per rejected part, no more


@pytest.mark.parametrize("count", [3])
def test_stop_rule_trips_at_the_threshold(mqtt_url: str, tmp_path: Path, count: int) -> None:
    rt, snap = asyncio.run(_run(_line(1.0, {"count": count, "within_parts": count}), mqtt_url, tmp_path, 6.0))
    # Every board is defective: the burst rule stops the line at the count-th part and no part follows.
    assert rt.inspected == count
    assert snap["reject_count"] == count
    assert not snap["run_cmd"]
