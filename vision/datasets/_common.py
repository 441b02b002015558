"""Helpers shared by the dataset importers: one error type and strict-but-clear parsing."""

from __future__ import annotations

import logging
from pathlib import Path

from vision.types import Box, Label

log = logging.getLogger("vision.datasets")

IMAGE_EXTS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A dataset cannot be read: the message names the file (and line) and what is wrong with it."""


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise a DatasetError that names it."""
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    return path


def make_box(x1: float, y1: float, x2: float, y2: float, where: str) -> Box:
    """Build a Box, rejecting degenerate or inverted corners with the location in the message."""
    if not (x2 > x1 and y2 > y1):
        raise DatasetError(f"{where}: box has no area or inverted corners ({x1}, {y1}, {x2}, {y2})")
    return Box(float(x1), float(y1), float(x2), float(y2))


def bad_line(where: str, msg: str, strict: bool) -> None:
    """Report a malformed annotation line: raise in strict mode, otherwise warn and let the caller skip it.

    Skipping one bad line keeps every other label of the sample (never drop good data).
    """
    if strict:
        raise DatasetError(f"{where}: {msg}")
    log.warning("%s: %s (line skipped)", where, msg)


def label(box: Box, cls: str) -> Label:
    return Label(box=box, cls=cls)
