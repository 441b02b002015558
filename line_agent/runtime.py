"""The line runtime: for every camera, source -> detector -> QA verdict -> line actions -> inspection event.

One asyncio loop per process. Each camera is a task; the blocking parts (reading a frame, running the
detector) go to worker threads so PLC writes and the API never wait on inference. Verdicts leave in two
directions: line actions to the PLC through the LineController (reject gate per part, slow/stop on a
burst, each audited with the rule that fired), and an ``Inspection`` (line_agent.contracts) over MQTT
that ingest stores.

The runtime never starts a line. It watches the line's state and says why it is what it is (the last
command and who gave it, or the safe state / e-stop the PLC reports), and audits every change it did
not cause itself. Cameras and models report their own health, which ``/readyz`` serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2

from hardware.driver import LinkState
from hardware.isolated import Controller
from hardware.safety import Cause, CommandRefused
from line_agent.actions import DecisionRules
from line_agent.config import LineConfig
from line_agent.contracts import Defect, Inspection, LineAction, TruthLabel, Verdict, topic
from line_agent.frames import frame_path
from line_agent.live import LiveHub
from line_agent.metrics import FRAMES, INFERENCE_LATENCY, PLC_WRITE_LATENCY
from line_agent.mqtt import Publisher
from vision.config import CameraConfig, make_source
from vision.detectors.base import Detector
from vision.detectors.factory import build_detector
from vision.types import Detection, Frame

if TYPE_CHECKING:
    from line_agent.audit import AuditWriter

log = logging.getLogger(__name__)

#: Seconds between attempts to load a camera's model that failed (a model copied in later is picked up).
MODEL_RETRY_S = 5.0


def _box(d: Detection) -> tuple[float, float, float, float]:
    return (round(d.box.x1, 1), round(d.box.y1, 1), round(d.box.x2, 1), round(d.box.y2, 1))


@dataclass
class Counters:
    """Verdict counts of one line, and parts per minute over the last 60 s."""

    counts: dict[str, int] = field(default_factory=lambda: {v.value: 0 for v in Verdict})
    recent: deque[float] = field(default_factory=deque)

    def add(self, verdict: Verdict, ts: float) -> None:
        self.counts[verdict.value] = self.counts.get(verdict.value, 0) + 1
        self.recent.append(ts)
        while self.recent and ts - self.recent[0] > 60.0:
            self.recent.popleft()

    def as_event(self, line: str) -> dict[str, Any]:
        span = (self.recent[-1] - self.recent[0]) if len(self.recent) > 1 else 0.0
        ppm = (len(self.recent) - 1) * 60.0 / span if span > 0 else 0.0
        return {"line": line, **self.counts, "total": sum(self.counts.values()), "throughput_ppm": round(ppm, 1)}


@dataclass
class CameraStatus:
    """What one camera is doing, for ``/readyz`` and the console: state, model, frames/s, last frame."""

    state: str = "starting"  # starting, loading_model, model_error, error, connected, reconnecting, stalled, ended
    detail: str = ""
    model: str = ""
    frames: int = 0
    last_frame_ts: float | None = None
    live: bool = False
    #: The classes the camera's model reports (the label editor and the feedback set take these).
    classes: list[str] = field(default_factory=list)
    _recent: deque[float] = field(default_factory=lambda: deque(maxlen=64), repr=False)

    def frame(self, ts: float) -> None:
        self.frames += 1
        self.last_frame_ts = ts
        self._recent.append(time.monotonic())

    def fps(self, window_s: float = 10.0) -> float:
        now = time.monotonic()
        times = [t for t in self._recent if now - t <= window_s]
        if len(times) < 2:
            return 0.0
        return round((len(times) - 1) / max(1e-6, times[-1] - times[0]), 2)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["fps"] = self.fps()
        return d


class LineRuntime:
    """Runs one line: its cameras, its control rules, its controller and its publishing."""

    def __init__(
        self,
        cfg: LineConfig,
        *,
        controller: Controller | None,
        publisher: Publisher,
        hub: LiveHub,
        frames_dir: Path,
        registry: Path | None = None,
        audit: AuditWriter | None = None,
        detector_factory: Callable[[CameraConfig], Detector] | None = None,
        no_frame_s: float = 10.0,
    ) -> None:
        self.cfg = cfg
        self.controller = controller
        self.publisher = publisher
        self.hub = hub
        self.frames_dir = frames_dir
        self.audit = audit
        self.rules = DecisionRules(cfg.control)
        self.counters = Counters()
        self.line_mode = "unknown"
        #: Why the line is in its state (last command and who gave it, or what the PLC reports).
        self.cause: Cause | None = None
        self.plc_state: dict[str, Any] = {}
        self.no_frame_s = no_frame_s
        self._make_detector = detector_factory or (lambda cam: build_detector(cam.detector, registry))
        self._stop = asyncio.Event()
        self._state_known = asyncio.Event()
        self.cameras: dict[str, CameraStatus] = {c.name: CameraStatus() for c in cfg.cameras}
        self._sources: list[Any] = []
        self.inspected = 0
        self.action_errors = 0
        #: Decision -> reject register written and read back on the PLC, per rejected part (ms).
        self.reject_latency_ms: list[float] = []
        self.actor = f"runtime:{cfg.line}"
        self._passes: dict[str, int] = {}  # passed parts per camera, for the kept sample

    def topic_for(self, camera: str) -> str:
        return topic(self.cfg.site, self.cfg.line, self.cfg.mqtt.cell or camera, "inspection", self.cfg.mqtt.prefix)

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
            for src in self._sources:
                src.close()
            # A part already being inspected finishes (decision, PLC action, event): cancelling it
            # half-way would lose an inspection. Only what is still running after that is cancelled.
            await asyncio.wait(tasks, timeout=10.0)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ health
    def health(self) -> dict[str, str]:
        """Readiness of this line's PLC link, cameras and models: "ok ...", or what is wrong."""
        out: dict[str, str] = {}
        line = self.cfg.line
        if self.controller is not None:
            link = self.controller.driver.state
            out[f"plc:{line}"] = "ok" if link == LinkState.CONNECTED else f"PLC link {link.value}"
        now = time.time()
        for name, st in self.cameras.items():
            key = f"{line}/{name}"
            if st.state in ("starting", "loading_model"):
                out[f"model:{key}"] = f"loading: {st.detail}" if st.detail else "loading"
            elif st.state == "model_error":
                out[f"model:{key}"] = f"failed to load: {st.detail}"
            else:
                out[f"model:{key}"] = f"ok ({st.model})"
            if st.state == "idle":
                out[f"camera:{key}"] = "ok (idle: the line is stopped)"
            elif st.state in ("connected", "reconnecting", "stalled") and st.last_frame_ts is not None:
                age = now - st.last_frame_ts
                # A folder source brings no images while the line stands; a live camera always streams.
                if (st.live or self.line_mode == "running") and age > self.no_frame_s:
                    out[f"camera:{key}"] = (f"no frame for over {self.no_frame_s:g} s (last {age:.0f} s ago; "
                                            f"source {st.state})")
                else:
                    out[f"camera:{key}"] = "ok"
            elif st.state in ("model_error", "starting", "loading_model"):
                out[f"camera:{key}"] = "waiting for its model"
            else:
                out[f"camera:{key}"] = f"{st.state}: {st.detail}" if st.detail else st.state
        return out

    def current_cause(self) -> Cause | None:
        """The newest of what the runtime saw (safe state, e-stop, a stop at the panel) and the last command
        the controller carried out (a person's through the API, or a rule's), whichever came last."""
        last = self.controller.last_command if self.controller is not None else None
        if last is not None and (self.cause is None or last.ts >= self.cause.ts):
            return last
        return self.cause

    def status(self) -> dict[str, Any]:
        """The line as the console shows it: state, why, cameras with frames/s and last frame."""
        cause = self.current_cause()
        return {
            "line": self.cfg.line,
            "state": self.line_mode,
            "cause": None if cause is None else cause.as_dict(),
            "plc": self.plc_state,
            "cameras": {name: st.as_dict() for name, st in self.cameras.items()},
            "counters": self.counters.as_event(self.cfg.line),
        }

    # ------------------------------------------------------------------ line state
    def _observe(self, action: str, reason: str) -> None:
        """A change the runtime did not command (safe state, e-stop, a stop at the panel): cause + audit."""
        self.cause = Cause(action=action, actor=f"plc:{self.cfg.line}", reason=reason, ts=time.time())
        log.warning("%s: %s", self.cfg.line, reason)
        if self.audit is not None:
            self.audit.observed(self.actor, f"line.{action}", self.cfg.line, reason)

    def _explain(self, before: dict[str, Any], now: dict[str, Any], mode: str, prev_mode: str) -> None:
        """Edge-triggered: each new safety condition, and a stop nobody here commanded, gets a cause."""
        if now.get("estop_active") and not before.get("estop_active"):
            self._observe("estop", "emergency stop pressed")
        elif now.get("safe_state") and not before.get("safe_state"):
            self._observe("safe_state", "PLC in its safe state: the controller heartbeat was lost")
        elif now.get("guard_door_open") and not before.get("guard_door_open"):
            self._observe("guard_door", "guard door opened")
        elif prev_mode == "running" and mode == "stopped":
            last = self.controller.last_command if self.controller is not None else None
            if last is None or last.action != "stop" or time.time() - last.ts > 5.0:
                self._observe("stopped_at_plc", "line stopped at the PLC (no command from lineguard)")

    async def _watch_line(self) -> None:
        """Poll the PLC's line state twice a second; unknown whenever the link is down."""
        prev: dict[str, Any] = {}
        prev_mode = "unknown"
        while not self._stop.is_set():
            reason = ""
            state: dict[str, Any] = {}
            if self.controller is None:
                mode = "unknown"
            else:
                try:
                    st = await self.controller.line_state()
                    mode, state = st.mode, st.as_dict()
                except Exception as exc:  # a dead link must show as unknown, never as good
                    mode, reason = "unknown", str(exc)
                if mode != "unknown":
                    self._explain(prev, state, mode, prev_mode)
                    prev, prev_mode = state, mode
            self.line_mode = mode
            self.plc_state = state
            self._state_known.set()
            current = self.current_cause()
            cause = None if current is None else current.as_dict()
            self.hub.publish("line_state", {
                "line": self.cfg.line, "state": mode, "speed_pct": state.get("speed_setpoint"),
                "estop": state.get("estop_active"), "guard_door": state.get("guard_door_open"),
                "safe_state": state.get("safe_state"),
                "reason": reason or state.get("error", "") or (cause or {}).get("reason", ""), "cause": cause,
                "cameras": {name: c.as_dict() for name, c in self.cameras.items()},
            })
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.5)

    # ------------------------------------------------------------------ cameras
    async def _load_model(self, cam: CameraConfig, st: CameraStatus) -> Detector | None:
        """The camera's detector; on failure say why (readiness) and try again every MODEL_RETRY_S."""
        while not self._stop.is_set():
            st.state, st.detail = "loading_model", cam.detector.type
            try:
                detector = await asyncio.to_thread(self._make_detector, cam)
            except Exception as exc:
                st.state, st.detail = "model_error", f"{type(exc).__name__}: {exc}"[:500]
                log.error("%s/%s: model did not load: %s", self.cfg.line, cam.name, st.detail)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), MODEL_RETRY_S)
                continue
            st.model, st.detail = detector.name, ""
            st.classes = [str(c) for c in getattr(detector, "classes", ())]
            return detector
        return None

    async def _camera(self, cam: CameraConfig) -> None:
        st = self.cameras[cam.name]
        detector = await self._load_model(cam, st)
        if detector is None:
            return
        try:
            source = make_source(cam)
        except (ValueError, OSError) as exc:
            st.state, st.detail = "error", str(exc)
            log.error("%s/%s: %s", self.cfg.line, cam.name, exc)
            return
        self._sources.append(source)
        frames: Iterator[Frame] = iter(source)
        log.info("%s/%s: %s with detector %s", self.cfg.line, cam.name, cam.source, detector.name)
        # A live camera (network, USB, looping video) keeps streaming while the conveyor stands: its frames are
        # read and dropped, so its health stays true. A folder or data set is not read until the line runs:
        # those images are parts waiting to be inspected.
        live = bool(getattr(source, "live", False))
        st.live, st.state = live, source.state.value
        while not self._stop.is_set():
            idle = self.controller is not None and (not self._state_known.is_set() or self.line_mode == "stopped")
            if idle and not live:
                st.state = "idle"
                await asyncio.sleep(0.2)
                continue
            frame = await asyncio.to_thread(next, frames, None)
            if frame is None:
                st.state, st.detail = "ended", "the source has no more frames"
                log.info("%s/%s: source ended", self.cfg.line, cam.name)
                return
            st.state, st.detail = "connected", ""
            st.frame(time.time())
            if idle or self.line_mode == "stopped":  # no parts arrive on a stopped conveyor
                continue
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
        verdict = cam.qa.decide(detections).action
        ts = time.time()
        self.counters.add(verdict, ts)
        part_id = frame.part_id or f"{cam.name}-{frame.seq}"
        for trip in self.rules.on_decision(verdict, ts):
            await self._act(trip.action, part_id, trip.reason)
        inspection_id = uuid.uuid4().hex
        # Disk and JPEG work off the event loop: PLC writes of the next part must not wait on them.
        saved, jpeg = await asyncio.to_thread(self._encode_and_save, frame, cam.name, inspection_id, ts, verdict)
        event = Inspection(
            inspection_id=inspection_id, ts=ts, site=self.cfg.site, line=self.cfg.line, camera=cam.name,
            part_id=part_id, decision=verdict,
            defects=[Defect(cls=d.cls, confidence=round(min(1.0, max(0.0, d.confidence)), 4), box=_box(d))
                     for d in detections],
            latency_ms=round(latency_s * 1000.0, 2), model=detector.name[:200], frame_saved=saved,
            truth=None if frame.truth is None else [
                TruthLabel(cls=lb.cls, box=(lb.box.x1, lb.box.y1, lb.box.x2, lb.box.y2)) for lb in frame.truth
            ],
        )
        # Durable (fsynced into the outbox) before the part counts as published: off the event loop.
        await asyncio.to_thread(self.publisher.publish, self.topic_for(cam.name), event.model_dump_json())
        self.inspected += 1
        shown = event.model_dump(mode="json", exclude={"truth"})
        self.hub.publish("inspection", shown)
        self.hub.publish("counters", self.counters.as_event(self.cfg.line))
        if jpeg is not None:
            h, w = frame.image.shape[:2]
            self.hub.publish("frame", {
                "line": self.cfg.line, "camera": cam.name, "jpeg": jpeg, "width": w, "height": h,
                "boxes": shown["defects"], "inspection_id": inspection_id, "decision": verdict.value, "ts": ts,
            })

    async def _act(self, action: LineAction, part_id: str, reason: str) -> None:
        if self.controller is None:
            return
        t0 = time.perf_counter()
        try:
            if action is LineAction.REJECT_PART:
                await self.controller.reject_part(part_id, reason=reason)
                elapsed = time.perf_counter() - t0
                PLC_WRITE_LATENCY.labels(line=self.cfg.line).observe(elapsed)
                self.reject_latency_ms.append(elapsed * 1000.0)
            elif action is LineAction.STOP:
                why = f"stop rule: {reason}"
                log.warning("%s: stopping the line: %s", self.cfg.line, why)
                await self.controller.stop(reason=why)
                self.line_mode = "stopped"
            elif action is LineAction.SLOW:
                why = f"slow rule: {reason}; speed {self.cfg.control.slow_speed_pct:g} %"
                log.warning("%s: slowing the line: %s", self.cfg.line, why)
                await self.controller.slow(self.cfg.control.slow_speed_pct, reason=why)
        except CommandRefused as exc:  # audited by the controller; the line state says why
            self.action_errors += 1
            log.warning("%s: %s for part %s refused: %s", self.cfg.line, action, part_id, exc.reason)
        except Exception as exc:
            self.action_errors += 1
            log.error("%s: %s for part %s failed: %s", self.cfg.line, action, part_id, exc)

    def _encode_and_save(self, frame: Frame, camera: str, inspection_id: str, ts: float,
                         verdict: Verdict) -> tuple[bool, bytes | None]:
        """JPEG for the live view; the frame (and its template) on disk when the line keeps it."""
        ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        jpeg = buf.tobytes() if ok else None
        mode = self.cfg.save_frames
        if mode == "none":
            return False, jpeg
        if mode == "rejects" and verdict is Verdict.PASS:
            # A sample of passed parts is kept too: a defect the model missed can be found and relabelled.
            every = self.cfg.save_pass_every
            self._passes[camera] = n = self._passes.get(camera, 0) + 1
            if not every or n % every:
                return False, jpeg
        path = frame_path(self.frames_dir, self.cfg.line, camera, inspection_id, ts)
        path.parent.mkdir(parents=True, exist_ok=True)
        # PNG, lossless: these frames are relabelled and go back into training.
        cv2.imwrite(str(path), frame.image)
        if frame.template is not None:
            cv2.imwrite(str(frame_path(self.frames_dir, self.cfg.line, camera, inspection_id, ts, "temp")),
                        frame.template)
        return True, jpeg
