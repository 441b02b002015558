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


class LoadReport:
    """What an importer had to repair or leave out, so nothing is fixed up or dropped silently.

    ``fixups`` counts each kind of repair (``"<filename> without extension: image found by stem"``: 170);
    ``skipped`` names every file left out with its reason; ``notes`` says which folders were used.
    """

    def __init__(self) -> None:
        self.fixups: dict[str, int] = {}
        self.fixup_examples: dict[str, str] = {}
        self.skipped: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def fix(self, kind: str, where: str | Path) -> None:
        self.fixups[kind] = self.fixups.get(kind, 0) + 1
        self.fixup_examples.setdefault(kind, str(where))

    def skip(self, path: str | Path, reason: str) -> None:
        self.skipped.append((str(path), reason))
        log.warning("%s: %s (skipped)", path, reason)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def as_dict(self) -> dict[str, object]:
        return {
            "layout": list(self.notes),
            "fixups": [{"kind": k, "count": n, "example": self.fixup_examples[k]} for k, n in self.fixups.items()],
            "skipped": [{"file": p, "reason": r} for p, r in self.skipped],
        }

    def summary(self) -> str:
        parts = [f"{n} x {k}" for k, n in self.fixups.items()]
        if self.skipped:
            parts.append(f"{len(self.skipped)} file(s) skipped")
        return "; ".join(parts) if parts else "no fix-ups"


def child_dir(root: Path, *names: str) -> Path | None:
    """The sub-folder of ``root`` whose name matches one of ``names`` ignoring case (first name wins)."""
    if not root.is_dir():
        return None
    by_lower = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()}
    for n in names:
        if n.lower() in by_lower:
            return by_lower[n.lower()]
    return None


def child_file(root: Path, *names: str) -> Path | None:
    """The file in ``root`` whose name matches one of ``names`` ignoring case."""
    if not root.is_dir():
        return None
    by_lower = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_file()}
    for n in names:
        if n.lower() in by_lower:
            return by_lower[n.lower()]
    return None


class ImageIndex:
    """Every image under a folder, findable by relative path, by file name and by stem (all ignoring case)."""

    def __init__(self, *roots: Path) -> None:
        self.roots = [r for r in roots if r.is_dir()]
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        seen: set[Path] = set()
        for r in self.roots:
            for p in sorted(r.rglob("*")):
                if p in seen or not p.is_file() or p.suffix.lower() not in IMAGE_EXTS or p.stem.endswith("_temp"):
                    continue
                seen.add(p)
                self.by_name.setdefault(p.name.lower(), []).append(p)
                self.by_stem.setdefault(p.stem.lower(), []).append(p)

    def find(self, name: str, stem_hint: str, where: Path, report: LoadReport | None) -> tuple[Path | None, str]:
        """The image ``name`` (as an annotation writes it) names: exact, then by name ignoring case and folder,
        then by the stem of ``name`` or ``stem_hint`` with any image extension. Returns (path, why-not)."""
        rel = Path(name.replace("\\", "/")) if name else None
        if rel is not None:
            for r in self.roots:
                if (r / rel).is_file():
                    return r / rel, ""
            hits = self.by_name.get(rel.name.lower(), [])
            if len(hits) == 1:
                if report is not None:
                    exact = hits[0].name == rel.name
                    report.fix("image found by file name in another folder" if exact
                               else "file name case differs from the image's", where)
                return hits[0], ""
        stems = []
        if rel is not None:
            base = rel.name
            # "crazing_1" has no extension; "crazing_1.jpg" may mismatch "crazing_1.bmp"
            stems.append(Path(base).stem.lower() if Path(base).suffix.lower() in IMAGE_EXTS else base.lower())
        stems.append(stem_hint.lower())
        for stem in dict.fromkeys(stems):
            hits = self.by_stem.get(stem, [])
            if len(hits) == 1:
                if report is not None:
                    if not name:
                        kind = "no file name in the annotation: image found by the annotation's stem"
                    elif Path(name).suffix.lower() not in IMAGE_EXTS:
                        kind = "file name without an image extension: image found by stem"
                    else:
                        kind = "file name's extension or stem mismatches: image found by stem"
                    report.fix(kind, where)
                return hits[0], ""
            if len(hits) > 1:
                return None, f"{len(hits)} images share the stem {stem!r} ({hits[0]}, {hits[1]})"
        looked = ", ".join(str(r) for r in self.roots)
        return None, f"image not found: {name or stem_hint} (looked under {looked} by name and by stem)"
