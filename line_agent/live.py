"""In-process hub from the line runtime to the console's live view.

The runtime (any thread) calls ``hub.publish(kind, data)``; every connected console receives the event
over Server-Sent Events. The hub keeps the latest event of each kind (per line, per camera for frames)
so a console that connects later paints at once. Slow consumers lose old events, never block the line.

Kinds and payloads the runtime sends (extra keys are passed through):

* ``inspection``: ``{"inspection_id", "ts", "line", "camera", "part_id", "decision": "pass|reject|rework",
  "defects": [{"cls", "confidence", "box": [x1, y1, x2, y2]}], "latency_ms"}``
* ``counters``: ``{"line", "pass", "reject", "rework", "total", "throughput_ppm"}``
* ``line_state``: ``{"line", "state": "running|stopped|unknown", "speed_pct", "estop", "guard_door", "reason"}``
* ``frame``: ``{"line", "camera", "jpeg": bytes, "width", "height", "boxes": [{"cls", "confidence",
  "box": [x1, y1, x2, y2]}], "inspection_id", "decision", "ts"}``. The JPEG stays in the hub
  (``GET /api/live/frame/{camera}``); the event carries the rest plus ``seq``.
* ``alarm`` (the API's alarm watcher, not kept for the snapshot): ``{"line", "change": "raised|acknowledged|
  cleared|updated", "alarm": AlarmOut}``.
* anything else (e.g. ``alert``, ``summary``): forwarded as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

_QUEUE_MAX = 256


@dataclass(slots=True)
class LatestFrame:
    camera: str
    seq: int
    jpeg: bytes
    meta: dict[str, Any]


@dataclass
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[str, dict[str, Any]]]


@dataclass
class LiveHub:
    """Thread-safe fan-out of live events; see the module docstring for kinds and payloads."""

    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _subs: list[_Subscriber] = field(default_factory=list, init=False, repr=False)
    _latest: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)
    _frames: dict[str, LatestFrame] = field(default_factory=dict, init=False, repr=False)
    _seq: int = field(default=0, init=False, repr=False)
    published: int = field(default=0, init=False)

    def publish(self, kind: str, data: dict[str, Any], *, retain: bool = True) -> None:
        """Publish one event. Safe from any thread and from inside or outside an event loop.

        ``retain=False``: a change, not a state (e.g. ``alarm``): sent to the subscribers, not kept for the snapshot."""
        if not isinstance(kind, str) or not kind:
            raise ValueError("kind must be a non-empty string")
        if not isinstance(data, dict):
            raise ValueError(f"data for {kind!r} must be a dict, got {type(data).__name__}")
        payload = dict(data)
        with self._lock:
            self._seq += 1
            payload["seq"] = self._seq
            payload.setdefault("ts", time.time())
            if kind == "frame":
                jpeg = payload.pop("jpeg", None)
                camera = str(payload.get("camera", ""))
                if not isinstance(jpeg, bytes | bytearray) or not camera:
                    raise ValueError("a frame event needs 'camera' and 'jpeg' bytes")
                # Two lines may both have a camera "top": a frame belongs to its line and camera.
                where = f"{payload.get('line', '')}/{camera}"
                self._frames[where] = LatestFrame(camera, self._seq, bytes(jpeg), payload)
                key = f"frame:{where}"
            else:
                key = f"{kind}:{payload.get('line', '')}"
            payload = _jsonable(payload)
            if retain:
                self._latest[key] = {"kind": kind, "data": payload}
            self.published += 1
            subs = list(self._subs)
        for sub in subs:
            with contextlib.suppress(RuntimeError):  # the subscriber's loop has closed
                sub.loop.call_soon_threadsafe(_offer, sub.queue, (kind, payload))

    def snapshot(self) -> list[dict[str, Any]]:
        """The latest event of each kind (per line / camera), oldest first."""
        with self._lock:
            items = list(self._latest.values())
        return sorted(items, key=lambda e: int(e["data"].get("seq", 0)))

    def latest_frame(self, camera: str, line: str | None = None) -> LatestFrame | None:
        """The newest frame of ``line``'s ``camera``; without a line, the newest of any line's camera of that name."""
        with self._lock:
            if line is not None:
                return self._frames.get(f"{line}/{camera}")
            same = [f for f in self._frames.values() if f.camera == camera]
        return max(same, key=lambda f: f.seq) if same else None

    def cameras(self) -> list[str]:
        """``line/camera`` of every camera that has sent a frame."""
        with self._lock:
            return sorted(self._frames)

    def subscribe(self) -> _Subscriber:
        """Register the calling event loop's consumer; pair with ``unsubscribe``."""
        sub = _Subscriber(asyncio.get_running_loop(), asyncio.Queue(maxsize=_QUEUE_MAX))
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subs.remove(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)


def _offer(queue: asyncio.Queue[tuple[str, dict[str, Any]]], item: tuple[str, dict[str, Any]]) -> None:
    # Drop the oldest event rather than block the publisher: the console wants the newest state.
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(item)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    # Round-trip once here so a bad payload fails in the publisher's call, not in every stream.
    out: dict[str, Any] = json.loads(json.dumps(data, default=_default))
    return out


def _default(o: object) -> object:
    if isinstance(o, bytes | bytearray):
        return f"<{len(o)} bytes>"
    if hasattr(o, "isoformat"):
        return o.isoformat()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
