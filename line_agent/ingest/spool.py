"""Store and forward: batches the database could not take wait on disk, in order, until it returns.

One file per batch, written to a temporary name, fsynced, then renamed: after ``append`` returns the
batch survives a crash or power cut, so the MQTT messages behind it may be acknowledged. Files are
replayed oldest first and deleted only after their transaction committed; a crash in between replays
the file again, which the idempotent writer turns into no change.

A file keeps its batch message by message (each with its dead-letter identity, not its whole payload): if
the database refuses one message's rows on replay, that message alone becomes a dead letter and the
others are stored, exactly as for a live batch. A file that cannot be read at all is renamed ``.corrupt``
(kept for a person, never replayed again), so it cannot stop every restart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from line_agent.ingest.rows import Batch, DeadLetter, dead_from_jsonable, dead_jsonable

#: One decoded message in a spool file: what identifies it as a dead letter (source, topic, payload head,
#: size, digests; None for a file from before parts were kept) and its rows.
Part = tuple[DeadLetter | None, Batch]


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

    def append(self, batch: Batch, parts: Sequence[Part] | None = None) -> Path:
        """Spool ``batch``; ``parts`` = the same rows message by message (without: one part, no identity)."""
        items = [(None, batch)] if parts is None else parts
        body = {"v": 2, "parts": [[None if ref is None else dead_jsonable(ref), b.to_jsonable()] for ref, b in items]}
        data = json.dumps(body, separators=(",", ":")).encode()
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
    def read(path: Path) -> list[Part]:
        """The file's parts (a file written before parts were kept is one part without identity)."""
        data = json.loads(path.read_bytes())
        if "parts" not in data:
            return [(None, Batch.from_jsonable(data))]
        return [(None if ref is None else dead_from_jsonable(ref), Batch.from_jsonable(b)) for ref, b in data["parts"]]

    def quarantine(self, path: Path) -> Path:
        """Set an unreadable file aside (``.corrupt``, not replayed again); its bytes leave the count."""
        size = path.stat().st_size
        target = path.with_suffix(".corrupt")
        os.replace(path, target)
        self.bytes = max(0, self.bytes - size)
        return target

    def remove(self, path: Path) -> None:
        size = path.stat().st_size
        path.unlink()
        self.bytes = max(0, self.bytes - size)
