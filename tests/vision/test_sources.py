"""Image sources, with real video files (cv2.VideoWriter) and a real HTTP server for the stream faults."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from vision.datasets import append_deeppcb, load
from vision.sources import (
    DatasetSource,
    FolderSource,
    ImageSource,
    SourceState,
    SyntheticSource,
    VideoSource,
)
from vision.types import Box, Label

N_VIDEO = 20


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 20-frame MJPG AVI; frame i shows the number i."""
    path = tmp_path_factory.mktemp("video") / "line.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 48))
    assert w.isOpened()
    for i in range(N_VIDEO):
        f = np.zeros((48, 64, 3), np.uint8)
        cv2.putText(f, str(i), (5, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        w.write(f)
    w.release()
    return path


def _take(src: ImageSource, n: int, timeout: float = 20.0) -> list[Any]:
    out = []
    t0 = time.monotonic()
    for fr in src:
        out.append(fr)
        if len(out) >= n or time.monotonic() - t0 > timeout:
            src.close()
    return out


# ---------------------------------------------------------------------------------------------- synthetic


def test_synthetic_source() -> None:
    src = SyntheticSource("cam1", defect_rate=0.5, seed=4, count=10)
    assert isinstance(src, ImageSource)
    frames = list(src)
    assert [f.seq for f in frames] == list(range(10))
    assert src.frames == 10 and src.state == SourceState.CLOSED
    assert all(f.template is not None and f.truth is not None and f.camera == "cam1" for f in frames)
    assert frames[3].part_id == "syn-4-000003"
    defective = [bool(f.truth) for f in frames]
    assert 2 <= sum(defective) <= 8
    for f in frames:  # a good part is its template, a defective one differs
        assert f.template is not None
        assert bool(f.truth) == (not np.array_equal(f.image, f.template))
    again = list(SyntheticSource("cam1", defect_rate=0.5, seed=4, count=10))
    assert all(np.array_equal(a.image, b.image) and a.truth == b.truth for a, b in zip(frames, again, strict=True))
    assert all(not f.truth for f in SyntheticSource(defect_rate=0.0, count=3))
    assert all(f.truth for f in SyntheticSource(defect_rate=1.0, count=3))
    with pytest.raises(ValueError, match="defect_rate"):
        SyntheticSource(defect_rate=1.5)


def test_fps_limit() -> None:
    t0 = time.monotonic()
    assert len(list(SyntheticSource(count=4, max_fps=10))) == 4
    assert time.monotonic() - t0 >= 0.29  # three full periods between four frames


# ------------------------------------------------------------------------------------------------ folder


def _png(path: Path, value: int) -> None:
    assert cv2.imwrite(str(path), np.full((16, 16), value, np.uint8))


def test_folder_source(tmp_path: Path) -> None:
    _png(tmp_path / "a_test.png", 10)
    _png(tmp_path / "a_temp.png", 11)
    _png(tmp_path / "b.png", 20)
    (tmp_path / "c.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    tdir = tmp_path / "templates"
    tdir.mkdir()
    _png(tdir / "b.png", 21)
    src = FolderSource(tmp_path, "cam2", template_dir=tdir)
    frames = list(src)
    assert [f.part_id for f in frames] == ["a_test", "b"]
    assert [int(f.image[0, 0]) for f in frames] == [10, 20]
    assert [int(f.template[0, 0]) for f in frames if f.template is not None] == [11, 21]
    assert src.frames == 2 and src.corrupt_frames == 1
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        FolderSource(tmp_path / "nope")


def test_dataset_source(tmp_path: Path) -> None:
    img = np.full((32, 32), 255, np.uint8)
    labels = [Label(Box(2, 2, 12, 12), "short")]
    append_deeppcb(tmp_path, img, img, labels, ext=".png")
    append_deeppcb(tmp_path, img, img, [], ext=".png")
    frames = list(DatasetSource(load(tmp_path, "deeppcb"), "replay"))
    assert [f.truth for f in frames] == [labels, []]
    assert frames[0].part_id == "group90000/90000/90000000"
    assert frames[0].template is not None


# ------------------------------------------------------------------------------------------------- video


def test_video_file_plays_to_end(video: Path) -> None:
    src = VideoSource(str(video), "v")
    frames = list(src)
    assert len(frames) == N_VIDEO and src.frames == N_VIDEO
    assert src.reconnects == 0 and src.state == SourceState.CLOSED
    assert frames[0].image.shape == (48, 64, 3)


def test_truncated_file(video: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.avi"
    data = video.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    src = VideoSource(str(cut), "v")
    n = len(list(src))
    assert 0 < n < N_VIDEO  # what decodes is delivered, the rest ends the file cleanly
    live = VideoSource(str(cut), "v", live=True, backoff_s=0.01, max_reconnects=2)
    frames = _take(live, 3 * n)  # as a stream, the broken end is a drop: it reconnects and plays again
    assert len(frames) == 3 * n
    assert live.reconnects == 2
    assert SourceState.RECONNECTING in live.state_history


def test_missing_file_gives_up(tmp_path: Path) -> None:
    src = VideoSource(str(tmp_path / "none.avi"), "v", live=True, backoff_s=0.01, max_reconnects=3)
    assert list(src) == []
    assert src.reconnects == 3 and src.state == SourceState.CLOSED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def late_http_server(video: Path, tmp_path: Path) -> Iterator[tuple[str, threading.Event]]:
    """An HTTP URL whose server only starts once the test sets the event (connection refused before)."""
    port = _free_port()
    shutil.copy(video, tmp_path / "cam.avi")
    go = threading.Event()
    holder: dict[str, http.server.ThreadingHTTPServer] = {}

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    def serve() -> None:
        go.wait(30)
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Quiet, directory=str(tmp_path)))
        holder["srv"] = srv
        srv.serve_forever(poll_interval=0.05)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{port}/cam.avi", go
    go.set()
    for _ in range(100):
        if "srv" in holder:
            break
        time.sleep(0.01)
    holder["srv"].shutdown()
    holder["srv"].server_close()
    t.join(5)


def test_http_stream_refused_then_appears(late_http_server: tuple[str, threading.Event]) -> None:
    url, go = late_http_server
    states: list[SourceState] = []
    src = VideoSource(url, "ipcam", stall_timeout_s=3.0, backoff_s=0.05, backoff_max_s=0.2, on_state=states.append)
    assert src.live  # a URL is a live stream: it reconnects at end of stream
    threading.Timer(0.4, go.set).start()
    frames = _take(src, N_VIDEO + 5)
    assert len(frames) == N_VIDEO + 5  # the whole file, then a reconnect, then more
    assert src.reconnects >= 2  # refused at least once before the server came up, once after the end
    assert src.state_history[0] == SourceState.RECONNECTING  # not connected before the first open
    assert SourceState.CONNECTED in states
    assert states[-1] == SourceState.CLOSED


class _FaultyCapture:
    """A real cv2.VideoCapture with one injected fault the file cannot produce on demand."""

    def __init__(self, uri: str | int, fault: str, at: int, release: threading.Event) -> None:
        self.cap = cv2.VideoCapture(uri)
        self.fault, self.at, self.n, self.release_ev = fault, at, 0, release

    def isOpened(self) -> bool:
        return bool(self.cap.isOpened())

    def read(self) -> tuple[bool, Any]:
        self.n += 1
        if self.n == self.at and self.fault == "stall":
            self.release_ev.wait(10)  # a camera that stops sending: read() blocks
        if self.n == self.at and self.fault == "corrupt":
            self.cap.read()
            return True, None
        ok, img = self.cap.read()
        return bool(ok), img

    def release(self) -> None:
        self.cap.release()


def test_stall_detected_and_reconnected(video: Path) -> None:
    release = threading.Event()
    opened: list[int] = []

    def factory(uri: str | int) -> _FaultyCapture:
        opened.append(1)
        # Only the first connection stalls (after 5 frames); the reconnect is healthy.
        return _FaultyCapture(uri, "stall" if len(opened) == 1 else "none", 6, release)

    src = VideoSource(str(video), "v", live=True, stall_timeout_s=0.3, backoff_s=0.01, capture_factory=factory)
    t0 = time.monotonic()
    frames = _take(src, 5 + N_VIDEO)
    release.set()
    assert len(frames) == 5 + N_VIDEO
    assert time.monotonic() - t0 < 8
    assert src.reconnects == 1
    hist = src.state_history
    stalled = hist.index(SourceState.STALLED)
    assert hist[stalled + 1] == SourceState.RECONNECTING
    assert hist[-2:] == [SourceState.CONNECTED, SourceState.CLOSED]


def test_corrupt_frame_counted_and_skipped(video: Path) -> None:
    ev = threading.Event()
    src = VideoSource(str(video), "v", capture_factory=lambda u: _FaultyCapture(u, "corrupt", 3, ev))
    frames = list(src)
    assert len(frames) == N_VIDEO - 1 and src.corrupt_frames == 1


def test_close_from_another_thread_while_reconnecting(tmp_path: Path) -> None:
    src = VideoSource(str(tmp_path / "never.avi"), "v", live=True, backoff_s=5.0)
    threading.Timer(0.2, src.close).start()
    t0 = time.monotonic()
    assert list(src) == []
    assert time.monotonic() - t0 < 3 and src.state == SourceState.CLOSED


def test_slow_consumer_of_a_live_stream_gets_fresh_frames(video: Path) -> None:
    src = VideoSource(str(video), "v", live=True, max_reconnects=0)
    seqs = []
    for fr in src:
        seqs.append(int(fr.seq))
        if len(seqs) == 1:
            time.sleep(0.5)  # a slow detector: the reader decodes the rest of the file meanwhile
    assert src.dropped_frames > 0
    assert len(seqs) + src.dropped_frames == N_VIDEO  # every frame is either delivered or counted as dropped
    file_src = VideoSource(str(video), "v")  # a file read at the consumer's pace loses nothing
    n = 0
    for _ in file_src:
        n += 1
        if n == 1:
            time.sleep(0.3)
    assert n == N_VIDEO and file_src.dropped_frames == 0
