"""Fixtures for hardware tests: real simulators on free loopback ports, stopped by the test that started them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hardware.sim_plc import SimPlc
from hardware.tags import TagMap


@pytest.fixture
def tags() -> TagMap:
    return TagMap.load()


@pytest.fixture
def sim() -> Iterator[SimPlc]:
    """An in-process Modbus TCP PLC simulator (own thread and event loop), watchdog 1 s."""
    plc = SimPlc(port=0, watchdog_s=1.0, gate_pulse_s=0.2).start()
    yield plc
    plc.stop()
