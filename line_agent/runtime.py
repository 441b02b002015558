"""The line runtime: for every camera, source -> detector -> QA decision -> actions -> event.

One asyncio loop per process. Each camera is a task; the blocking parts (reading a frame,
running the detector) go to worker threads so PLC writes and the API never wait on inference.
Decisions leave in two directions: actions to the PLC through the LineController (reject gate
per part, slow/stop on a burst), and an ``inspection`` event over MQTT that ingest stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from hardware.safety import CommandRefused, LineController
from line_agent.actions import Action, DecisionRules
from line_agent.live import LiveHub
from line_agent.metrics import FRAMES, INFERENCE_LATENCY, PLC_WRITE_LATENCY
from line_agent.config import LineConfig
from line_agent.mqtt import Publisher
from vision.config import CameraConfig, make_source
from vision.detectors.base import Detector
from vision.sources import ImageSource
from vision.types import Detection, Frame

log = logging.getLogger(__name__)


def load_detector(spec: str, registry: Path | None = None) -> Detector:
    """``template``, ``onnx:<path | registry name>`` or ``hybrid:<path | registry name>`` -> a Detector (no torch).

    A registry name is looked up in ``registry``, then in the shipped models (vision/models)."""
    if spec == "template":
        from vision.detectors.template import TemplateDiffDetector

        return TemplateDiffDetector()
    if spec.startswith("onnx:"):
        from vision.detectors.load import load_model

        # The directory says which kind it holds: a registry name may be a hybrid model.
        return load_model(spec[len("onnx:"):], registry)
    if spec.startswith("hybrid:"):
        from vision.detectors.load import load_model, split_options

        ref, opts = split_options(spec[len("hybrid:"):])  # e.g. hybrid:pcb-synth-hybrid?tta=1
        return load_model(ref, registry, hybrid=True, **opts)
    raise ValueError(f"unknown detector spec {spec!r}")


def _box(d: Detection) -> list[float]:
    return [round(d.box.x1, 1), round(d.box.y1, 1), round(d.box.x2, 1), round(d.box.y2, 1)]


@dataclass
class Counters:
    """Pass/reject/rework counts of one line, and parts per minute over the last 60 s."""

    counts: dict[str, int] = field(default_factory=lambda: {"pass": 0, "reject": 0, "rework": 0})
    recent: deque[float] = field(default_factory=deque)

    def add(self, decision: str, ts: float) -> None:
        self.counts[decision] = self.counts.get(decision, 0) + 1
        self.recent.append(ts)
        while self.recent and ts - self.recent[0] > 60.0:
            self.recent.popleft()

    def as_event(self, line: str) -> dict[str, Any]:
        span = (self.recent[-1] - self.recent[0]) if len(self.recent) > 1 else 0.0
        ppm = (len(self.recent) - 1) * 60.0 / span if span > 0 else 0.0
        return {"line": line, **self.counts, "total": sum(self.counts.values()), "throughput_ppm": round(ppm, 1)}


class LineRuntime:
    """Runs one line: its cameras, its control rules, its controller and its publishing."""

    def __init__(
        self,
        cfg: LineConfig,
        *,
        controller: LineController | None,
        publisher: Publisher,
        hub: LiveHub,
        frames_dir: Path,
        registry: Path | None = None,
        detector_factory: Callable[[str], Detector] | None = None,
    ) -> None:
        self.cfg = cfg
        self.controller = controller
        self.publisher = publisher
        self.hub = hub
        self.frames_dir = frames_dir
        self.rules = DecisionRules(cfg.control)
        self.counters = Counters()
        self.line_mode = "unknown"
        self._make_detector = detector_factory or (lambda spec: load_detector(spec, registry))
        self._stop = asyncio.Event()
        self._sources: list[ImageSource] = []
        #: camera -> (its source, its detector's name), for readiness checks.
        self._cameras: dict[str, tuple[ImageSource, str]] = {}
        self.inspected = 0
        self.action_errors = 0
        #: Decision -> reject register written and read back on the PLC, per rejected part (ms).
        self.reject_latency_ms: list[float] = []
        self.topic = f"{cfg.mqtt.prefix}/{cfg.site}/{cfg.line}/{cfg.mqtt.cell}/inspection"

    # ------------------------------------------------------------------ lifecycle
    async def run(self, until: float | None = None) -> None:
        """Run until ``stop()`` is called or the monotonic deadline ``until`` passes."""
        tasks = [asyncio.create_task(self._camera(c), name=f"{self.cfg.line}/{c.name}") for c in self.cfg.cameras]
        tasks.append(asyncio.create_task(self._watch_line(), name=f"{self.cfg.line}/state"))
        try:
            if until is None:
                await self._stop.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(0.0, until - time.monotonic()))
        finally:
            self._stop.set()
            for s in self._sources:
                s.close()
            # A part already being inspected finishes (decision, PLC action, event): cancelling it
            # half-way would lose an inspection. Only what is still running after that is cancelled.
            await asyncio.wait(tasks, timeout=10.0)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()

    def health(self) -> dict[str, str]:
        """Readiness of this line's cameras and models: "ok", or what is wrong."""
        out: dict[str, str] = {}
        for cam in self.cfg.cameras:
            key = f"{self.cfg.line}/{cam.name}"
            if cam.name not in self._cameras:
                out[f"camera:{key}"] = "starting"
                out[f"model:{key}"] = f"loading {cam.detector}"
                continue
            source, model = self._cameras[cam.name]
            state = source.state.value
            out[f"camera:{key}"] = "ok" if state == "connected" else state
            out[f"model:{key}"] = f"ok ({model})"
        return out

    # ------------------------------------------------------------------ line state
    async def _watch_line(self) -> None:
        """Poll the PLC's line state twice a second; unknown whenever the link is down."""
        while not self._stop.is_set():
            reason = ""
            if self.controller is None:
                mode, state = "unknown", {}
            else:
                try:
                    st = await self.controller.line_state()
                    mode, state = st.mode, st.as_dict()
                except Exception as exc:  # a dead link must show as unknown, never as good
                    mode, state, reason = "unknown", {}, str(exc)
            self.line_mode = mode
            self.hub.publish("line_state", {
                "line": self.cfg.line, "state": mode, "speed_pct": state.get("speed_setpoint"),
                "estop": state.get("estop_active"), "guard_door": state.get("guard_door_open"),
                "reason": reason or state.get("error", ""),
            })
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.5)

    # ------------------------------------------------------------------ cameras
    async def _camera(self, cam: CameraConfig) -> None:
        detector = await asyncio.to_thread(self._make_detector, cam.detector)
        source = make_source(cam)
        self._sources.append(source)
        self._cameras[cam.name] = (source, detector.name)
        frames: Iterator[Frame] = iter(source)
        log.info("%s/%s: %s with detector %s", self.cfg.line, cam.name, cam.source, detector.name)
        while not self._stop.is_set():
            if self.controller is not None and self.line_mode == "stopped":
                # No parts arrive on a stopped conveyor; wait for someone to start it.
                await asyncio.sleep(0.2)
                continue
            frame = await asyncio.to_thread(next, frames, None)
            if frame is None:
                log.info("%s/%s: source ended", self.cfg.line, cam.name)
                return
            try:
                await self._inspect(cam, detector, frame)
            except Exception:  # one bad frame must not stop the camera
                log.exception("%s/%s: inspection of part %s failed", self.cfg.line, cam.name, frame.part_id)

    async def _inspect(self, cam: CameraConfig, detector: Detector, frame: Frame) -> None:
        t0 = time.perf_counter()
        detections = await asyncio.to_thread(detector.detect, frame)
        latency_s = time.perf_counter() - t0
        FRAMES.labels(line=self.cfg.line, camera=cam.name).inc()
        INFERENCE_LATENCY.labels(camera=cam.name).observe(latency_s)
        decision = cam.qa.decide(detections).action.value
        ts = time.time()
        self.counters.add(decision, ts)
        part_id = frame.part_id or f"{cam.name}-{frame.seq}"
        for trip in self.rules.on_decision(decision, ts):
            await self._act(trip.action, part_id, trip.reason)
        inspection_id = uuid.uuid4().hex
        defects = [{"cls": d.cls, "confidence": round(d.confidence, 4), "box": _box(d)} for d in detections]
        # Disk and JPEG work off the event loop: PLC writes of the next part must not wait on them.
        frame_path, jpeg = await asyncio.to_thread(self._encode_and_save, frame, inspection_id, decision)
        event = {
            "inspection_id": inspection_id,
            "ts": ts,
            "site": self.cfg.site,
            "line": self.cfg.line,
            "camera": cam.name,
            "part_id": part_id,
            "decision": decision,
            "defects": defects,
            "latency_ms": round(latency_s * 1000.0, 2),
            "model": detector.name,
            "frame_path": frame_path,
            "truth": None if frame.truth is None else [
                {"cls": lb.cls, "box": [lb.box.x1, lb.box.y1, lb.box.x2, lb.box.y2]} for lb in frame.truth
            ],
        }
        self.publisher.publish_json(self.topic, event)
        self.inspected += 1
        self.hub.publish("inspection", {k: v for k, v in event.items() if k != "truth"})
        self.hub.publish("counters", self.counters.as_event(self.cfg.line))
        if jpeg is not None:
            h, w = frame.image.shape[:2]
            self.hub.publish("frame", {
                "line": self.cfg.line, "camera": cam.name, "jpeg": jpeg, "width": w, "height": h,
                "boxes": defects, "inspection_id": inspection_id, "decision": decision, "ts": ts,
            })

    async def _act(self, action: Action, part_id: str, reason: str) -> None:
        if self.controller is None:
            return
        t0 = time.perf_counter()
        try:
            if action is Action.REJECT:
                await self.controller.reject_part(part_id)
                elapsed = time.perf_counter() - t0
                PLC_WRITE_LATENCY.labels(line=self.cfg.line).observe(elapsed)
                self.reject_latency_ms.append(elapsed * 1000.0)
            elif action is Action.STOP:
                log.warning("%s: stopping the line: %s", self.cfg.line, reason)
                await self.controller.stop()
                self.line_mode = "stopped"
            elif action is Action.SLOW:
                log.warning("%s: slowing the line: %s", self.cfg.line, reason)
                await self.controller.slow(self.cfg.control.slow_speed_pct)
        except CommandRefused as exc:  # audited by the controller; the line state says why
            self.action_errors += 1
            log.warning("%s: %s for part %s refused: %s", self.cfg.line, action, part_id, exc.reason)
        except Exception as exc:
            self.action_errors += 1
            log.error("%s: %s for part %s failed: %s", self.cfg.line, action, part_id, exc)

    def _encode_and_save(self, frame: Frame, inspection_id: str, decision: str) -> tuple[str | None, bytes | None]:
        """JPEG for the live view; the frame (and its template) on disk when the line keeps it."""
        ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        jpeg = buf.tobytes() if ok else None
        mode = self.cfg.save_frames
        if mode == "none" or (mode == "rejects" and decision == "pass"):
            return None, jpeg
        day = time.strftime("%Y%m%d", time.gmtime(frame.ts))
        rel = Path(self.cfg.line) / frame.camera / day / f"{inspection_id}_test.png"
        path = self.frames_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        # PNG, lossless: these frames are relabelled and go back into training.
        cv2.imwrite(str(path), frame.image)
        if frame.template is not None:
            cv2.imwrite(str(path.with_name(f"{inspection_id}_temp.png")), frame.template)
        return str(rel), jpeg
