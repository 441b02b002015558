"""What the API needs from the rest of lineguard, in one dataclass, and the controller protocol.

The runtime builds an ``ApiDeps`` and calls ``create_app(deps)``; tests build one over the real
PostgreSQL and the Modbus simulator. Nothing here imports FastAPI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from line_agent.live import LiveHub


@runtime_checkable
class LineControl(Protocol):
    """The line controller (``hardware.safety.LineController``) as the API uses it.

    Every method may raise ``CommandRefused`` (an exception with a ``reason``) when the PLC state makes
    the command unsafe (e-stop, guard door, lost connection); the API answers 409 with that reason.
    """

    async def reject_part(self, part_id: str) -> Any: ...
    async def stop(self, *, actor: str | None = None, reason: str = "") -> Any: ...
    async def start(self, *, actor: str | None = None, reason: str = "") -> Any: ...
    async def slow(self, speed_pct: float, *, actor: str | None = None, reason: str = "") -> Any: ...
    async def reset_reject_counter(self) -> Any: ...
    async def line_state(self) -> Any:
        """running / stopped / unknown plus inputs (e-stop, guard door): a mapping, dataclass or object."""
        ...


# Called as summarize(line=..., start=datetime, end=datetime, lang="en"|"zh"); sync or async; returns
# the stored summary id (int), a mapping with ``summary_id``, or anything (the API then lists the newest).
SummarizeFn = Callable[..., Any]


@dataclass
class Shift:
    """A named shift by UTC start hour, e.g. Shift("A", 6, 14); end < start wraps past midnight."""

    name: str
    start_hour: int
    end_hour: int


DEFAULT_SHIFTS: tuple[Shift, ...] = (Shift("A", 6, 14), Shift("B", 14, 22), Shift("C", 22, 6))


@dataclass
class ApiDeps:
    """Everything ``create_app`` needs.

    database_url: PostgreSQL URL; the app migrates it and opens a psycopg 3 async pool on startup.
    lines: line ids this API serves; the first is the default for requests that name none.
    controller: the first line's controller, or None when there is no PLC (line state = unknown).
    controllers: per-line controllers for multi-line deployments (overrides ``controller`` per line).
    hub: the in-process LiveHub the runtime publishes into.
    model_registry: directory of the vision model registry (``<name>/<vN>/...``).
    camera_models: camera id -> "name:version" it runs (else inferred from recent inspections).
    summarize: on-demand summary function (line_agent.agent), or None.
    frames_dir: where the runtime keeps frames (``line_agent.frames.frame_path``); the API finds an inspection's
        frame there by its line, camera, id and time only (``find_frame``), never by a stored path.
    training_dir: where corrected labels are written (DeepPCB layout).
    admin_token: bootstrap admin token, stored hashed on startup as the single row "bootstrap-admin"; a changed
        token revokes the old one (never logged).
    max_body_bytes: request bodies over this many bytes are answered 413 (announced or counted as they
        arrive); 0 = no limit. The largest legitimate body (500 label boxes) is about 50 kB.
    auth_fail_burst / auth_fail_window_s: failed authentications (unknown or revoked tokens) allowed per
        client address: ``auth_fail_burst`` at once, given back over ``auth_fail_window_s``; past that every
        authentication from the address is answered 429 with Retry-After. ``auth_fail_clients``: how many
        addresses are tracked (memory bound).
    energy_metric / energy_source / energy_unit_w: passed to line_agent.store.queries.energy: a cumulative
        kWh counter ("counter", default "energy_kwh"), or a power metric integrated over time ("power",
        e.g. "power_w" with unit_w=1).
    shifts: shift boundaries for the shift comparison chart.
    sparkplug_stale_after_s: a Sparkplug edge node or device born and not dead but silent longer than this is
        ``stale`` (GET /api/nodes' default, the console's sources, the ``cond:sparkplug:`` alarms).
    dead_letter_quota_bytes: the ingest workers' dead-letter quota (``LINEGUARD_DEAD_LETTER_QUOTA_BYTES``), for
        the ``cond:dead_letter:`` alarm until a worker has reported the quota it enforces (``dead_letter_quota``).
    pool_min / pool_max: connection pool size.
    migrate: apply migrations on startup.
    """

    database_url: str
    lines: list[str] = field(default_factory=lambda: ["line-1"])
    controller: LineControl | None = None
    controllers: Mapping[str, LineControl] = field(default_factory=dict)
    hub: LiveHub = field(default_factory=LiveHub)
    model_registry: Path | None = None
    camera_models: Mapping[str, str] = field(default_factory=dict)
    summarize: SummarizeFn | None = None
    #: More readiness checks from the process that runs the line (cameras, broker, models): name -> "ok" or why not.
    extra_checks: Callable[[], Mapping[str, str]] | None = None
    #: Per line: its shift calendar and the plant's time zone (the line YAML's ``shifts`` and ``timezone``);
    #: a line without one falls back to ``shifts`` in UTC.
    calendars: Mapping[str, tuple[tuple[Any, ...], str]] = field(default_factory=dict)
    #: The runtime's view of a line (state, cause, cameras with frames/s), or None when no runtime runs it.
    line_status: Callable[[str], Mapping[str, Any] | None] | None = None
    frames_dir: Path | None = None
    training_dir: Path = Path(".lineguard/feedback")
    admin_token: str | None = None
    max_body_bytes: int = 1 << 20
    auth_fail_burst: int = 10
    auth_fail_window_s: float = 60.0
    auth_fail_clients: int = 10_000
    energy_metric: str = "energy_kwh"
    energy_source: Literal["counter", "power"] = "counter"
    energy_unit_w: float = 1.0
    shifts: tuple[Shift, ...] = DEFAULT_SHIFTS
    sparkplug_stale_after_s: float = 300.0
    dead_letter_quota_bytes: int = 256 << 20
    pool_min: int = 1
    pool_max: int = 10
    migrate: bool = True

    def __post_init__(self) -> None:
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("ApiDeps.database_url must start with postgresql://")
        if not self.lines:
            raise ValueError("ApiDeps.lines must name at least one line")
        if self.sparkplug_stale_after_s <= 0:
            raise ValueError("ApiDeps.sparkplug_stale_after_s must be > 0")
        if self.max_body_bytes < 0:
            raise ValueError("ApiDeps.max_body_bytes must be >= 0 (0 = no limit)")
        if self.auth_fail_burst < 1 or self.auth_fail_window_s <= 0 or self.auth_fail_clients < 1:
            raise ValueError("ApiDeps.auth_fail_burst, auth_fail_window_s and auth_fail_clients must be positive")

    def controller_for(self, line: str) -> LineControl | None:
        if line in self.controllers:
            return self.controllers[line]
        return self.controller if line == self.lines[0] else None

    def replace(self, **changes: Any) -> ApiDeps:
        return dataclasses.replace(self, **changes)
