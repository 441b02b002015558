"""Prometheus metrics shared by the runtime, ingest and the API (served at ``GET /metrics``).

Import and update them from anywhere in the process, e.g.::

    from line_agent import metrics
    metrics.FRAMES.labels(line="line-1", camera="cam-1").inc()
    metrics.INFERENCE_LATENCY.labels(camera="cam-1").observe(0.012)

They live in the default registry; defining them twice in one process is impossible, which is why
they are module-level singletons here and nowhere else.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Defined where the cost is computed (llm_ops stays free of the API); re-exported with the rest.
from llm_ops.accounting import LLM_COST as LLM_COST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

FRAMES = Counter("lineguard_frames", "Frames inspected.", ["line", "camera"])  # exported as lineguard_frames_total
INFERENCE_LATENCY = Histogram(
    "lineguard_inference_latency_seconds", "Detector latency per frame.", ["camera"], buckets=_LATENCY_BUCKETS
)
INGEST_LAG = Gauge(
    "lineguard_ingest_lag_seconds", "Age of the newest message stored by ingest when it was written.", ["source"]
)
SPOOL_BYTES = Gauge("lineguard_spool_bytes", "Bytes waiting in the store-and-forward spool.", ["line"])
PLC_WRITE_LATENCY = Histogram(
    "lineguard_plc_write_latency_seconds", "PLC write (and read-back) latency.", ["line"], buckets=_LATENCY_BUCKETS
)
API_REQUESTS = Counter("lineguard_api_requests", "API requests by route and status.", ["method", "route", "status"])
API_LATENCY = Histogram(
    "lineguard_api_request_seconds", "API request latency by route.", ["route"], buckets=_LATENCY_BUCKETS
)
DEAD_LETTERS_TRUNCATED = Counter(
    "lineguard_dead_letters_truncated",
    "Dead letters stored with only the head of their payload (its size and SHA-256 kept; docs/MQTT.md).",
)
DEAD_LETTERS_DROPPED = Counter(
    "lineguard_dead_letters_dropped",
    "Bad messages acknowledged without a dead_letter row: quota = the table is full, unwritable = the row itself"
    " was refused.",
    ["reason"],
)
DEAD_LETTER_BYTES = Gauge("lineguard_dead_letter_bytes", "Estimated bytes held in dead_letter, against its quota.")

# Store and forward at the edge (line_agent/outbox.py): what waits on disk for the broker.
OUTBOX_PENDING = Gauge("lineguard_outbox_pending", "Messages waiting in the edge outbox for the broker.", ["outbox"])
OUTBOX_BYTES = Gauge("lineguard_outbox_bytes", "Bytes waiting in the edge outbox.", ["outbox"])
OUTBOX_DROPPED = Counter("lineguard_outbox_dropped", "Oldest outbox messages dropped because it was full.",
                         ["outbox"])
