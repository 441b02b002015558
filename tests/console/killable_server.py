"""A console server in its own process, so a test can kill it with SIGKILL (the runtime process dying).

    python tests/console/killable_server.py <database_url> <port> <line>

A stand-in runtime publishes the line as running (state, cause, one camera, counters) into the hub twice a
second, and a controller reports the line running; the test kills the process and watches the console.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import uvicorn

from line_agent.api.app import create_app
from line_agent.api.deps import ApiDeps
from line_agent.live import LiveHub


class RunningLine:
    """Answers like hardware.safety.LineController on a running line."""

    async def line_state(self) -> dict[str, Any]:
        return {"mode": "running", "link": "connected", "estop_active": False, "guard_door_open": False,
                "safe_state": False, "speed_setpoint": 80.0, "actual_speed": 79.0, "reject_count": 7}

    async def reject_part(self, part_id: str) -> None: ...
    async def stop(self, *, actor: str | None = None, reason: str = "") -> None: ...
    async def start(self, *, actor: str | None = None, reason: str = "") -> None: ...
    async def slow(self, speed_pct: float, *, actor: str | None = None, reason: str = "") -> None: ...
    async def reset_reject_counter(self) -> None: ...


def main() -> None:
    db, port, line = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    hub = LiveHub()
    t0 = time.time()
    cause = {"action": "start", "actor": "user:test-supervisor", "reason": "shift start", "ts": t0}

    def camera() -> dict[str, Any]:
        return {"state": "connected", "detail": "", "model": "pcb:v2", "frames": int((time.time() - t0) * 2),
                "fps": 2.0, "last_frame_ts": time.time(), "live": True}

    def status(name: str) -> dict[str, Any]:
        return {"cause": cause, "cameras": {"cam-1": camera()}}

    def feed() -> None:
        n = 0
        while True:
            n += 1
            hub.publish("counters", {"line": line, "pass": 3 * n, "reject": n, "rework": 0, "total": 4 * n,
                                     "throughput_ppm": 24.0})
            hub.publish("line_state", {"line": line, "state": "running", "speed_pct": 80.0, "estop": False,
                                       "guard_door": False, "safe_state": False, "reason": "shift start",
                                       "cause": cause, "cameras": {"cam-1": camera()}})
            time.sleep(0.5)

    threading.Thread(target=feed, daemon=True).start()
    deps = ApiDeps(database_url=db, lines=[line], hub=hub, controller=RunningLine(), line_status=status,
                   migrate=False, pool_max=4)
    uvicorn.run(create_app(deps), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
