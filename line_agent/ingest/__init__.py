"""MQTT -> PostgreSQL ingest: decoders (JSON convention, Sparkplug B), a batched exactly-once writer,
a disk spool for when the database is away, and the worker that ties them to a broker subscription.

Start it in-process with ``IngestWorker(IngestConfig(...)).run(stop_event)`` or as processes with
``lineguard ingest --workers N``.
"""

from line_agent.ingest.rows import Batch, DeadLetter, EventRow, InspectionRow, TelemetryRow
from line_agent.ingest.worker import IngestConfig, IngestWorker, run_workers

__all__ = [
    "Batch",
    "DeadLetter",
    "EventRow",
    "IngestConfig",
    "IngestWorker",
    "InspectionRow",
    "TelemetryRow",
    "run_workers",
]
