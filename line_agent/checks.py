"""``lineguard check-config``: load every model of a line, and with ``--probe`` reach what the line needs.

A line that passes these starts: the same factory (vision.detectors.factory) builds the detectors, the same
driver table (hardware.drivers) builds the PLC link, as ``lineguard run`` does. Each check gives a
result naming what it tried; nothing here raises for a bad device.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

from line_agent.config import LineConfig
from line_agent.plant import redact
from line_agent.services import port_in_use
from line_agent.settings import Settings


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def check_models(settings: Settings, line: LineConfig) -> list[CheckResult]:
    from vision.detectors.factory import build_detector

    out = []
    for cam in line.cameras:
        try:
            det = build_detector(cam.detector, settings.registry_dir)
            out.append(CheckResult(f"model {cam.name}", True, f"{det.name} loaded"))
        except Exception as exc:
            out.append(CheckResult(f"model {cam.name}", False, _describe(exc)))
    return out


def _first_frame(line: LineConfig, cam_index: int, timeout_s: float) -> CheckResult:
    from vision.config import make_source

    cam = line.cameras[cam_index]
    name = f"camera {cam.name}"
    try:
        source = make_source(cam)
    except Exception as exc:
        return CheckResult(name, False, _describe(exc))
    got: list[object] = []
    err: list[BaseException] = []

    def read() -> None:
        try:
            got.append(next(iter(source), None))
        except Exception as exc:
            err.append(exc)

    # A network camera that never answers blocks inside OpenCV: read in a thread and give up after the timeout.
    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout_s)
    with contextlib.suppress(Exception):
        source.close()
    if err:
        return CheckResult(name, False, f"{cam.source}: {_describe(err[0])}")
    if not got or got[0] is None:
        why = "no frame" if got else f"no frame within {timeout_s:g} s"
        return CheckResult(name, False, f"{redact(cam.source)}: {why}")
    return CheckResult(name, True, f"{redact(cam.source)}: first frame read")


async def _plc(line: LineConfig, timeout_s: float) -> CheckResult:
    from hardware.drivers import make_driver
    from hardware.tags import TagMap

    if line.plc.url is None:
        return CheckResult("plc", False, "plc.url is not set (lineguard run needs it)")
    try:
        driver = make_driver(line.plc.driver, line.plc.url, TagMap.load(line.plc.tags))
        await asyncio.wait_for(driver.connect(), timeout_s)
        try:
            running = await asyncio.wait_for(driver.read("running"), timeout_s)
        finally:
            await driver.close()
    except Exception as exc:
        return CheckResult("plc", False, f"{line.plc.driver} {redact(line.plc.url)}: {_describe(exc)}")
    return CheckResult("plc", True, f"{line.plc.driver} {redact(line.plc.url)}: connected, running={bool(running)}")


def _broker(settings: Settings, timeout_s: float) -> CheckResult:
    if settings.mqtt_url is None:
        host, port = settings.listen
        probe = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        if port and port_in_use(probe, port):
            return CheckResult("broker", False, f"the embedded broker's listener {host}:{port} is already in use")
        return CheckResult("broker", True, f"embedded broker will listen on {host}:{port}")
    from line_agent.mqtt import Publisher

    pub = Publisher(settings.mqtt_url, client_id="lineguard-check-config")
    try:
        ok = pub.wait_connected(timeout_s)
    finally:
        with contextlib.suppress(Exception):
            pub.close(flush_timeout_s=0)  # nothing was published
    url = redact(settings.mqtt_url)
    return CheckResult("broker", ok, f"{url}: connected" if ok else f"{url}: no connection within {timeout_s:g} s")


def check_line(settings: Settings, line: LineConfig, *, probe: bool = False,
               timeout_s: float = 10.0) -> list[CheckResult]:
    """Every model loads; with ``probe`` each camera gives a frame, the PLC answers and the broker accepts us."""
    results = check_models(settings, line)
    if probe:
        results += [_first_frame(line, i, timeout_s) for i in range(len(line.cameras))]
        results.append(asyncio.run(_plc(line, timeout_s)))
        results.append(_broker(settings, timeout_s))
    return results
