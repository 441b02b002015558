"""Store and forward: batches the database could not take wait on disk, in order, until it returns.

One file per batch, written to a temporary name, fsynced, then renamed: after ``append`` returns the
batch survives a crash or power cut, so the MQTT messages behind it may be acknowledged. Files are
replayed oldest first and deleted only after their transaction committed; a crash in between replays
the file again, which the idempotent writer turns into no change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from line_agent.ingest.rows import Batch


class Spool:
    def __init__(self, directory: Path, max_bytes: int = 1 << 30) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        for tmp in self.dir.glob("*.tmp"):  # a half-written batch from a crash was never acknowledged
            tmp.unlink()
        files = self.files()
        self._next = int(files[-1].stem) + 1 if files else 0
        self.bytes = sum(f.stat().st_size for f in files)

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("*.batch"))

    def __len__(self) -> int:
        return len(self.files())

    @property
    def full(self) -> bool:
        """Past max_bytes: the worker stops acknowledging and lets the broker hold the rest."""
        return self.bytes >= self.max_bytes

    def append(self, batch: Batch) -> Path:
        data = json.dumps(batch.to_jsonable(), separators=(",", ":")).encode()
        path = self.dir / f"{self._next:012d}.batch"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself is durable
        finally:
            os.close(fd)
        self._next += 1
        self.bytes += len(data)
        return path

    @staticmethod
    def read(path: Path) -> Batch:
        return Batch.from_jsonable(json.loads(path.read_bytes()))

    def remove(self, path: Path) -> None:
        size = path.stat().st_size
        path.unlink()
        self.bytes = max(0, self.bytes - size)
