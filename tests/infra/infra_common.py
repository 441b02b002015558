"""Shared paths and helpers for the infra tests (deployment files under infra/).

Imported by name: tests/ has no packages, so pytest puts this folder on sys.path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"

# The metric names the app exports (GET /metrics); dashboards may use only these.
LINEGUARD_METRICS = frozenset(
    {
        "lineguard_frames_total",
        "lineguard_inference_latency_seconds",
        "lineguard_ingest_lag_seconds",
        "lineguard_spool_bytes",
        "lineguard_plc_write_latency_seconds",
        "lineguard_llm_cost_total",
    }
)


def require_tool(name: str, hint: str) -> str:
    """Path of an external tool, or skip the test naming how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed ({hint})")
    return path
