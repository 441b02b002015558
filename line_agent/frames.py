"""Where a kept frame lives: ``<frames_dir>/<line>/<camera>/<day>/<inspection_id>_<kind>.png``.

The runtime writes there, the API reads from there, and nothing else decides a frame's path: a frame is
addressed by its line, camera and inspection id (all checked names), never by a path taken from a message.
Every path is resolved and checked to lie inside ``frames_dir`` before it is opened.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Literal

from line_agent.contracts import is_name

FrameKind = Literal["test", "temp"]  # the inspected image, and its golden template when it has one
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class FramePathError(ValueError):
    """A frame address that is not a plain name (a path separator, '..', an empty part)."""


def _check(line: str, camera: str, inspection_id: str) -> None:
    if not is_name(line) or line in (".", ".."):
        raise FramePathError(f"line {line!r} is not a plain name")
    if not is_name(camera) or camera in (".", ".."):
        raise FramePathError(f"camera {camera!r} is not a plain name")
    if not _ID.match(inspection_id):
        raise FramePathError(f"inspection id {inspection_id!r} is not a plain id")


def _inside(base: Path, path: Path) -> Path:
    base_r = base.resolve()
    path_r = path.resolve()
    if not path_r.is_relative_to(base_r):
        raise FramePathError(f"{path} resolves outside the frames folder")
    return path_r


def frame_path(frames_dir: Path, line: str, camera: str, inspection_id: str, ts: float,
               kind: FrameKind = "test") -> Path:
    """The path the runtime writes a frame to (day folder from ``ts``, UTC)."""
    _check(line, camera, inspection_id)
    day = time.strftime("%Y%m%d", time.gmtime(ts))
    return _inside(frames_dir, frames_dir / line / camera / day / f"{inspection_id}_{kind}.png")


def find_frame(frames_dir: Path, line: str, camera: str, inspection_id: str, ts: float,
               kind: FrameKind = "test") -> Path | None:
    """The stored frame of one inspection, or None. Looks in the day of ``ts`` and the days beside it
    (a part inspected just before midnight UTC may be stamped just after)."""
    try:
        _check(line, camera, inspection_id)
    except FramePathError:
        return None
    for delta in (0.0, -86400.0, 86400.0):
        try:
            p = frame_path(frames_dir, line, camera, inspection_id, ts + delta, kind)
        except FramePathError:  # a link inside the frames folder pointing out of it: no frame
            continue
        if p.is_file():
            return p
    return None
