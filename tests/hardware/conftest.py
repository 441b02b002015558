"""Fixtures for hardware tests: real simulators on free loopback ports, stopped by the test that started them."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardware.sim_base import parse_banner
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


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Mosquitto on a free loopback port, started here and stopped by PID; yields mqtt://127.0.0.1:PORT."""
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        pytest.skip("mosquitto is not installed")
    d = tmp_path_factory.mktemp("mosquitto")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = d / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = (d / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"mosquitto did not start: {(d / 'mosquitto.log').read_text()}")
            time.sleep(0.05)
    yield f"mqtt://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    log.close()


@dataclass
class PlcSimCli:
    """A `lineguard plc-sim` subprocess and what its banner said."""

    proc: subprocess.Popen[str]
    protocol: str
    url: str
    banner: str
    stderr_path: Path

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM by PID, then wait; SIGKILL if it does not go. Returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def plc_sim_cli(tmp_path: Path) -> Iterator[Callable[..., PlcSimCli]]:
    """Start ``python -m line_agent.cli plc-sim ARGS…`` and wait for its banner line; stopped by PID at teardown."""
    started: list[PlcSimCli] = []

    def start(*args: str, timeout: float = 30.0) -> PlcSimCli:
        err = tmp_path / f"plc-sim-{len(started)}.stderr"
        with err.open("w") as err_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "line_agent.cli", "plc-sim", *args],
                stdout=subprocess.PIPE,
                stderr=err_file,
                text=True,
            )
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:  # readline blocks; a thread lets the wait below have a deadline
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if proc.poll() is not None and lines.empty():
                    break
                continue
            banner = parse_banner(line)
            if banner is not None:
                sim = PlcSimCli(proc, banner[0], banner[1], line.strip(), err)
                started.append(sim)
                return sim
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        pytest.fail(f"plc-sim {' '.join(args)} printed no banner (rc={proc.returncode}): {err.read_text()[-2000:]}")

    yield start
    for sim in started:
        sim.stop()
