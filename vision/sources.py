"""Image sources: where frames come from (synthetic boards, folders, cameras/streams, replayed datasets).

Every source implements ``ImageSource``: iterate it for Frames; ``state`` and the counters tell the runtime
how the feed is doing, so a dropped camera shows up as ``reconnecting``/``stalled`` rather than as silence.

``VideoSource`` reads in a worker thread and waits on it with a timeout: a blocking ``read()`` (an RTSP
camera that stops sending) or a blocking open cannot hang the inspection loop. After ``stall_timeout_s``
without a frame it abandons that connection and reconnects with exponential backoff.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from vision.types import Frame, Image, Sample

log = logging.getLogger("vision.sources")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class SourceState(StrEnum):
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    STALLED = "stalled"
    CLOSED = "closed"


@runtime_checkable
class ImageSource(Protocol):
    """A stream of Frames with health counters."""

    camera: str

    @property
    def state(self) -> SourceState: ...

    @property
    def frames(self) -> int: ...

    @property
    def corrupt_frames(self) -> int: ...

    @property
    def reconnects(self) -> int: ...

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class _Base:
    """Counters, state with an optional change callback, fps limit and close()."""

    def __init__(
        self,
        camera: str,
        max_fps: float | None = None,
        on_state: Callable[[SourceState], None] | None = None,
    ) -> None:
        self.camera = camera
        self.max_fps = max_fps
        self._on_state = on_state
        self._state = SourceState.CONNECTED
        self._frames = 0
        self._corrupt = 0
        self._reconnects = 0
        self._closed = threading.Event()
        #: Every state the source went through, in order (for health reporting and tests).
        self.state_history: list[SourceState] = [self._state]

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def frames(self) -> int:
        return self._frames

    @property
    def corrupt_frames(self) -> int:
        return self._corrupt

    @property
    def reconnects(self) -> int:
        return self._reconnects

    def _set_state(self, st: SourceState) -> None:
        if st != self._state:
            log.info("source %s: %s -> %s", self.camera, self._state, st)
            self._state = st
            self.state_history.append(st)
            if self._on_state is not None:
                self._on_state(st)

    def close(self) -> None:
        self._closed.set()
        self._set_state(SourceState.CLOSED)

    def _frames_iter(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        period = 1.0 / self.max_fps if self.max_fps else 0.0
        next_t = time.monotonic()
        try:
            for fr in self._frames_iter():
                if self._closed.is_set():
                    break
                if period:
                    # Sleep off the remainder of the frame period; never burst to catch up.
                    now = time.monotonic()
                    if next_t > now:
                        time.sleep(next_t - now)
                    next_t = max(now, next_t) + period
                self._frames += 1
                yield fr
        finally:
            self._set_state(SourceState.CLOSED)

    def __enter__(self) -> _Base:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_image(path: Path) -> Image | None:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        return None
    if img.dtype != np.uint8:  # 16-bit TIFFs etc.: scale to 8 bit, the detectors' input type
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(1.0, float(img.max())))
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- synthetic


class SyntheticSource(_Base):
    """Synthetic boards (vision.synth): a fraction ``defect_rate`` carry defects; every frame has template
    and truth. Deterministic: frame ``seq`` of seed ``s`` is always the same board."""

    def __init__(
        self,
        camera: str = "synthetic",
        *,
        defect_rate: float = 0.3,
        seed: int = 0,
        count: int | None = None,
        n_defects: int | tuple[int, int] = (1, 4),
        max_fps: float | None = None,
        on_state: Callable[[SourceState], None] | None = None,
    ) -> None:
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate}")
        super().__init__(camera, max_fps, on_state)
        self.defect_rate = defect_rate
        self.seed = seed
        self.count = count
        self.n_defects = n_defects

    def _frames_iter(self) -> Iterator[Frame]:
        from vision.synth import make_board

        rng = np.random.default_rng([self.seed, 3])
        seq = 0
        while self.count is None or seq < self.count:
            defective = bool(rng.random() < self.defect_rate)
            board = make_board(self.seed * 1_000_003 + seq, self.n_defects if defective else 0)
            yield Frame(
                camera=self.camera,
                seq=seq,
                ts=time.time(),
                image=board.image,
                template=board.template,
                truth=board.labels,
                part_id=f"syn-{self.seed}-{seq:06d}",
            )
            seq += 1


# ------------------------------------------------------------------------------------------------ folder


def _template_name(path: Path) -> str:
    stem = path.stem
    return (stem[: -len("_test")] if stem.endswith("_test") else stem) + "_temp" + path.suffix


class FolderSource(_Base):
    """Images of a folder in name order. ``X_test.ext`` is paired with ``X_temp.ext`` beside it; otherwise
    a template of the same name (or ``X_temp.ext``) is taken from ``template_dir``, or a single
    ``template`` image for every frame. Unreadable images are counted as corrupt and skipped."""

    def __init__(
        self,
        path: Path,
        camera: str = "folder",
        *,
        template_dir: Path | None = None,
        template: Path | None = None,
        loop: bool = False,
        max_fps: float | None = None,
        on_state: Callable[[SourceState], None] | None = None,
    ) -> None:
        super().__init__(camera, max_fps, on_state)
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.path}")
        if template_dir is not None and not Path(template_dir).is_dir():
            raise FileNotFoundError(f"template folder not found: {template_dir}")
        self.template_dir = Path(template_dir) if template_dir else None
        self._fixed: Image | None = None
        if template is not None:
            self._fixed = _read_image(Path(template))
            if self._fixed is None:
                raise FileNotFoundError(f"template image not readable: {template}")
        self.loop = loop

    def images(self) -> list[Path]:
        return sorted(
            p
            for p in self.path.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.stem.endswith("_temp")
        )

    def _template_for(self, p: Path) -> Image | None:
        cands = [p.with_name(_template_name(p))]
        if self.template_dir is not None:
            cands += [self.template_dir / p.name, self.template_dir / _template_name(p)]
        for c in cands:
            if c.is_file():
                return _read_image(c)
        return self._fixed

    def _frames_iter(self) -> Iterator[Frame]:
        seq = 0
        while True:
            files = self.images()
            for p in files:
                img = _read_image(p)
                if img is None:
                    self._corrupt += 1
                    log.warning("source %s: unreadable image %s skipped", self.camera, p)
                    continue
                yield Frame(self.camera, seq, time.time(), img, self._template_for(p), None, p.stem, {"path": str(p)})
                seq += 1
            if not self.loop or not files:
                return


# ----------------------------------------------------------------------------------------------- dataset


class DatasetSource(_Base):
    """Replays a list[Sample] (any importer's output) with its truth, e.g. to measure a line end to end."""

    def __init__(
        self,
        samples: Sequence[Sample],
        camera: str = "dataset",
        *,
        loop: bool = False,
        max_fps: float | None = None,
        on_state: Callable[[SourceState], None] | None = None,
    ) -> None:
        super().__init__(camera, max_fps, on_state)
        self.samples = list(samples)
        self.loop = loop

    def _frames_iter(self) -> Iterator[Frame]:
        seq = 0
        while True:
            for s in self.samples:
                img = _read_image(s.image_path)
                tmpl = _read_image(s.template_path) if s.template_path else None
                if img is None or (s.template_path is not None and tmpl is None):
                    self._corrupt += 1
                    log.warning("source %s: unreadable sample %s skipped", self.camera, s.sample_id)
                    continue
                yield Frame(
                    self.camera,
                    seq,
                    time.time(),
                    img,
                    tmpl,
                    list(s.labels),
                    s.sample_id or s.image_path.stem,
                    {"path": str(s.image_path)},
                )
                seq += 1
            if not self.loop or not self.samples:
                return


# ------------------------------------------------------------------------------------------------- video


class _Capture(Protocol):
    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, Any]: ...

    def release(self) -> None: ...


def _default_capture(uri: str | int) -> _Capture:
    return cv2.VideoCapture(uri)


class VideoSource(_Base):
    """cv2.VideoCapture for files, RTSP/HTTP URLs and USB device indices.

    * ``live`` (default: True for URLs and device indices, False for files): on end of stream or a failed
      read, reconnect with exponential backoff (``backoff_s`` doubling up to ``backoff_max_s``) instead of
      finishing. ``max_reconnects`` bounds the reconnects in a row that bring no frame
      (None = forever, as a line camera should); any frame resets the count and the backoff.
    * A stall (no frame for ``stall_timeout_s``) abandons the connection and reconnects; the state goes
      ``stalled`` then ``reconnecting`` then ``connected`` again.
    * A corrupt frame (read ok but no/empty image) is counted in ``corrupt_frames`` and skipped.
    * ``template`` is the golden template for every frame (a fixed camera over one part type).
    """

    def __init__(
        self,
        uri: str | int,
        camera: str = "video",
        *,
        live: bool | None = None,
        stall_timeout_s: float = 5.0,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_reconnects: int | None = None,
        template: Image | None = None,
        max_fps: float | None = None,
        on_state: Callable[[SourceState], None] | None = None,
        capture_factory: Callable[[str | int], _Capture] = _default_capture,
    ) -> None:
        super().__init__(camera, max_fps, on_state)
        self.uri = uri
        is_file = isinstance(uri, str) and "://" not in uri
        self.live = (not is_file) if live is None else live
        self.stall_timeout_s = stall_timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_reconnects = max_reconnects
        self.template = template
        self._factory = capture_factory
        self._dropped = 0
        # Not connected until the first open succeeds (an RTSP open can block for many seconds).
        self._state = SourceState.RECONNECTING
        self.state_history = [self._state]

    @property
    def dropped_frames(self) -> int:
        """Live frames dropped because the consumer was slower than the camera (the oldest go first)."""
        return self._dropped

    def _put(self, q: queue.Queue[tuple[str, Any]], item: tuple[str, Any], stop: threading.Event) -> bool:
        """Hand an item to the reader; gives up once the connection is abandoned (never blocks forever).

        On a live stream a full queue drops its oldest frame: inspection wants the part in front of the
        camera now, not a backlog. A file is read at the consumer's pace instead, losing nothing.
        """
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                if self.live and item[0] == "frame":
                    try:
                        old = q.get_nowait()
                        if old[0] == "frame":
                            self._dropped += 1
                        else:  # keep control messages; put it back and wait
                            q.put_nowait(old)
                    except (queue.Empty, queue.Full):
                        pass
        return False

    def _worker(self, q: queue.Queue[tuple[str, Any]], stop: threading.Event) -> None:
        """One connection: open, then push ('frame', img) / ('corrupt', None) until the stream ends."""
        cap: _Capture | None = None
        try:
            cap = self._factory(self.uri)
            if not cap.isOpened():
                self._put(q, ("fail", f"cannot open {self.uri}"), stop)
                return
            self._put(q, ("open", None), stop)
            while not stop.is_set():
                ok, img = cap.read()
                if stop.is_set():
                    return
                if not ok:
                    self._put(q, ("eof", None), stop)
                    return
                if img is None or not isinstance(img, np.ndarray) or img.size == 0:
                    self._put(q, ("corrupt", None), stop)
                    continue
                if not self._put(q, ("frame", img), stop):
                    return
        except Exception as exc:  # a backend error must end this connection, not the worker process
            self._put(q, ("fail", f"{type(exc).__name__}: {exc}"), stop)
        finally:
            if cap is not None:
                cap.release()

    def _frames_iter(self) -> Iterator[Frame]:
        seq = 0
        delay = self.backoff_s
        attempts = 0
        first = True
        while not self._closed.is_set():
            if not first:
                if self.max_reconnects is not None and attempts >= self.max_reconnects:
                    log.error("source %s: giving up after %d reconnects", self.camera, attempts)
                    return
                self._set_state(SourceState.RECONNECTING)
                if self._closed.wait(delay):
                    return
                delay = min(delay * 2, self.backoff_max_s)
                attempts += 1
                self._reconnects += 1
            first = False
            q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=4)
            stop = threading.Event()
            t = threading.Thread(target=self._worker, args=(q, stop), daemon=True, name=f"video-{self.camera}")
            t.start()
            ended = False
            try:
                while not self._closed.is_set():
                    try:
                        kind, payload = q.get(timeout=self.stall_timeout_s)
                    except queue.Empty:
                        log.warning("source %s: no frame for %.1fs, reconnecting", self.camera, self.stall_timeout_s)
                        self._set_state(SourceState.STALLED)
                        break
                    if kind == "open":
                        self._set_state(SourceState.CONNECTED)
                    elif kind == "frame":
                        delay = self.backoff_s  # a healthy frame resets the backoff
                        attempts = 0
                        self._set_state(SourceState.CONNECTED)
                        yield Frame(self.camera, seq, time.time(), payload, self.template, None, "", {})
                        seq += 1
                    elif kind == "corrupt":
                        self._corrupt += 1
                    elif kind == "fail":
                        log.warning("source %s: %s", self.camera, payload)
                        break
                    else:  # eof
                        ended = True
                        break
            finally:
                # Abandon the connection; a worker stuck in a blocking read exits when the read returns.
                stop.set()
                while True:  # unblock a worker waiting on a full queue
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        break
            if ended and not self.live:
                return


# ------------------------------------------------------------------------------------------------ factory


def parse_uri(uri: str) -> tuple[str, str, dict[str, str]]:
    """``scheme://rest?query`` -> (scheme, rest without query, query as a dict)."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(uri)
    rest = (parts.netloc + parts.path) if parts.scheme not in ("folder", "file", "dataset") else parts.path
    if parts.scheme in ("folder", "file", "dataset") and parts.netloc:
        rest = parts.netloc + parts.path  # tolerate folder://relative/path
    return parts.scheme, rest, dict(parse_qsl(parts.query))
