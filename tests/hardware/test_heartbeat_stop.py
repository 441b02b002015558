"""Heartbeat.stop() must end the beating task even when a driver call swallows the cancellation.

A fake driver is used on purpose: it injects a fault the real Modbus stack produces only by a timing race
(a cancel landing as an inner ``asyncio.wait_for`` completes, Python 3.11) that cannot be triggered on demand.
"""

from __future__ import annotations

import asyncio

from hardware.safety import Heartbeat


class _SwallowingDriver:
    """Every write takes ``delay_s`` and, if cancelled meanwhile, returns as if it had completed. ``inside`` is
    set while a write is in progress, so a test can cancel exactly there (not between two writes)."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.writes = 0
        self.swallowed = 0
        self.swallow = True  # turned off at the end so that a failing test still exits
        self.inside = asyncio.Event()

    async def write(self, tag: str, value: int) -> int:
        self.writes += 1
        self.inside.set()
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            if not self.swallow:
                raise
            self.swallowed += 1
        finally:
            self.inside.clear()
        return value


def test_stop_ends_the_task_although_the_driver_swallows_the_cancel() -> None:
    async def main() -> tuple[_SwallowingDriver, Heartbeat, float]:
        # A long write, and stop() called once the beat is inside one: the cancel lands in the driver call every
        # time (with short writes under a loaded CI host it could land between two writes and test nothing).
        drv = _SwallowingDriver(delay_s=0.5)
        hb = Heartbeat(drv, period_s=0.0)  # type: ignore[arg-type]
        hb.start()
        await asyncio.wait_for(drv.inside.wait(), 5.0)
        task = hb._task
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        stopper = asyncio.ensure_future(hb.stop())
        done, _ = await asyncio.wait({stopper}, timeout=3.0)  # the old single cancel + await hung here forever
        took = loop.time() - t0
        drv.swallow = False
        assert stopper in done, "stop() did not return"
        assert task is not None and task.done()
        return drv, hb, took

    drv, hb, took = asyncio.run(main())
    assert drv.swallowed >= 1  # the fault was really injected
    assert not hb.running
    assert took < 1.0
    beats = drv.writes
    # Stopped means stopped: no write after stop() returned.
    asyncio.run(asyncio.sleep(0.05))
    assert drv.writes == beats


def test_restart_after_stop_beats_again() -> None:
    async def main() -> int:
        drv = _SwallowingDriver()
        hb = Heartbeat(drv, period_s=0.01)  # type: ignore[arg-type]
        hb.start()
        await asyncio.sleep(0.05)
        await hb.stop()
        before = hb.beats
        hb.start()
        await asyncio.sleep(0.1)
        await hb.stop()
        return hb.beats - before

    assert asyncio.run(main()) > 0
