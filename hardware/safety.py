"""Controller-side safety and the `LineController` facade the line runtime and the control API call.

Safety is layered: the PLC enforces its own interlocks and watchdog (hardware/plc_logic.py on the
simulator); this module refuses unsafe commands before they are sent, keeps the PLC watchdog fed, and
reports every command, accepted or not, as an `AuditRecord` through `on_audit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Literal

from hardware.driver import LinkState, PlcDriver, PlcUnavailable, Value, WriteNotConfirmed
from hardware.tags import AuditRecord, WriteRefused

log = logging.getLogger(__name__)

AuditHook = Callable[[AuditRecord], None] | Callable[[AuditRecord], Awaitable[None]]
LineMode = Literal["running", "stopped", "unknown"]


class CommandRefused(Exception):
    """The controller refused a command because the line state makes it unsafe (or unknown)."""

    def __init__(self, reason: str, record: AuditRecord | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.record = record


@dataclass(slots=True)
class LineState:
    """What the line looks like now. `mode` is "unknown" whenever the PLC link is not up."""

    mode: LineMode
    link: str
    estop_active: bool | None = None
    guard_door_open: bool | None = None
    safe_state: bool | None = None
    speed_setpoint: float | None = None
    actual_speed: float | None = None
    reject_count: int | None = None
    parts_count: int | None = None
    ts: float = 0.0
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class Cause:
    """Why the line is in its state: the command that put it there, who asked and for what reason."""

    action: str  # start / stop / slow, or what the runtime saw: safe_state, estop, guard_door, stopped_at_plc
    actor: str
    reason: str
    ts: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class RejectResult:
    part_id: str
    seq: int
    latency_ms: float  # decision (call) -> reject register written and read back


class Heartbeat:
    """Writes an incrementing value to the heartbeat tag every `period_s` so the PLC watchdog stays fed.

    If this task stops (controller crash, hung loop, lost link), the PLC drives the line to its safe state.
    """

    def __init__(
        self,
        driver: PlcDriver,
        *,
        tag: str = "heartbeat",
        period_s: float = 0.2,
        stale_after_s: float | None = None,
    ) -> None:
        self.driver = driver
        self.tag = tag
        self.period_s = period_s
        self.value = 0
        self.beats = 0
        self.failures = 0
        self.last_ok: float | None = None
        # Beyond this age (set it to the PLC's watchdog time) the PLC may be in safe state.
        self.stale_after_s = stale_after_s if stale_after_s is not None else 5 * period_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def age_s(self) -> float | None:
        """Seconds since the last heartbeat the PLC confirmed (None: none yet)."""
        return None if self.last_ok is None else time.monotonic() - self.last_ok

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="plc-heartbeat")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop beating; returns within about ``timeout_s`` whatever the driver does.

        One ``cancel()`` is not enough: a cancellation that lands inside a driver call can be swallowed on
        the way out (Python 3.11's ``asyncio.wait_for`` returns the inner result when it completes in the same
        step as the cancel, gh-86296), and the loop then goes on beating. Seen in a shutdown that hung for
        minutes. So the loop also checks a flag, and the task is cancelled again until it ends."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        while not task.done() and time.monotonic() < deadline:
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if not task.done():
            log.error("heartbeat task did not stop within %.1f s; left behind", timeout_s)
        elif not task.cancelled() and task.exception() is not None:
            log.error("heartbeat task ended with %r", task.exception())

    async def beat(self) -> None:
        # 1..65535: never 0, so a freshly restarted PLC (register 0) always sees a change.
        self.value = self.value % 65535 + 1
        await self.driver.write(self.tag, self.value)
        self.beats += 1
        self.last_ok = time.monotonic()

    async def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stopping:
            try:
                await self.beat()
            except (PlcUnavailable, WriteNotConfirmed) as exc:
                # The driver reconnects by itself; missing beats is exactly what the PLC watchdog is for.
                self.failures += 1
                log.debug("heartbeat failed: %s", exc)
            except Exception:  # never let the heartbeat task die silently on a surprise
                self.failures += 1
                log.exception("heartbeat error")
            next_at += self.period_s
            delay = next_at - time.monotonic()
            if delay < 0:  # we fell behind (loop stalled): restart the schedule rather than burst
                next_at = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)


class Interlocks:
    """Controller-side interlock checks; they read the PLC's inputs fresh, never from a cache."""

    def __init__(self, driver: PlcDriver) -> None:
        self.driver = driver

    def require_link(self) -> None:
        if self.driver.state != LinkState.CONNECTED:
            raise CommandRefused(f"PLC link is {self.driver.state.value}: line state unknown")

    async def check_start(self) -> None:
        self.require_link()
        try:
            s = await self.driver.read_many(["estop_active", "guard_door_open", "safe_state"])
        except PlcUnavailable as exc:
            raise CommandRefused(f"cannot read interlocks: {exc}") from exc
        if s["estop_active"]:
            raise CommandRefused("start refused: emergency stop is active")
        if s["guard_door_open"]:
            raise CommandRefused("start refused: guard door is open")
        if s["safe_state"]:
            raise CommandRefused("start refused: PLC is in safe state (controller heartbeat was lost)")

    def check_reject(self, heartbeat: Heartbeat | None = None) -> None:
        """A reject moves a part off the line (the safe direction), so no input blocks it; but the PLC
        ignores rejects in its safe state, which it enters when our heartbeat stops reaching it. A stale
        heartbeat therefore means the gate may not fire: refuse, so the caller can divert the part itself.
        """
        self.require_link()
        if heartbeat is not None:
            age = heartbeat.age_s()
            if age is None or age > heartbeat.stale_after_s:
                shown = "never" if age is None else f"{age:.2f} s ago"
                raise CommandRefused(f"controller heartbeat is stale (last beat {shown}): PLC may be in safe state")


class LineController:
    """The one object the line runtime and the control API use to command the line.

    Every command is checked (tag map + interlocks), written, read back, and reported to `on_audit`
    as an AuditRecord with outcome ok / refused / error. Call `await start_background()` once to run
    the heartbeat, and `await close()` at shutdown.
    """

    def __init__(
        self,
        driver: PlcDriver,
        *,
        heartbeat_period_s: float = 0.2,
        plc_watchdog_s: float = 1.0,
        on_audit: AuditHook | None = None,
        actor: str = "controller",
        line: str | None = None,
    ) -> None:
        if heartbeat_period_s * 3 > plc_watchdog_s:
            # Fewer than 3 beats per watchdog window: one late beat may trip the PLC. Allowed (configs
            # exist), but said loudly.
            log.warning(
                "heartbeat_period_s=%s is slow for plc_watchdog_s=%s (want <= 1/3)", heartbeat_period_s, plc_watchdog_s
            )
        self.driver = driver
        self.tags = driver.tags
        # The line's own name from its YAML: the tag map's name is the PLC program's, often a template's.
        self.line = line or driver.tags.line
        self.on_audit = on_audit
        self.actor = actor
        self.heartbeat = Heartbeat(driver, period_s=heartbeat_period_s, stale_after_s=plc_watchdog_s)
        self.interlocks = Interlocks(driver)
        self._reject_seq = 0
        self._reject_seq_synced = False
        self._reject_lock = asyncio.Lock()
        self._audit_tasks: set[asyncio.Task[None]] = set()
        #: The last start / stop / slow that the PLC accepted: who, why, when (shown with the line state).
        self.last_command: Cause | None = None

    # ----- lifecycle
    async def start_background(self) -> None:
        """Connect if needed and start the heartbeat (the heartbeat keeps trying while the link is down)."""
        if self.driver.state != LinkState.CONNECTED:
            with contextlib.suppress(PlcUnavailable):
                await self.driver.connect()
        if self.driver.state == LinkState.CONNECTED:
            # First beat now, so commands are accepted as soon as this returns.
            with contextlib.suppress(PlcUnavailable, WriteNotConfirmed):
                await self.heartbeat.beat()
        self.heartbeat.start()

    async def close(self) -> None:
        await self.heartbeat.stop()
        if self._audit_tasks:
            await asyncio.gather(*self._audit_tasks, return_exceptions=True)
        await self.driver.close()

    # ----- audit
    def _audit(self, record: AuditRecord) -> AuditRecord:
        hook = self.on_audit
        if hook is None:
            return record
        try:
            result = hook(record)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._audit_tasks.add(task)
                task.add_done_callback(self._audit_tasks.discard)
        except Exception:
            # A broken audit sink must not block a reject or a stop; it is logged loudly instead.
            log.exception("on_audit hook failed for %s", record)
        return record

    async def _write(self, action: str, tag: str, value: Value, *, part_id: str | None = None, reason: str = "",
                     actor: str | None = None) -> tuple[Value, float]:
        t0 = time.perf_counter()
        rec = AuditRecord(action=action, outcome="ok", line=self.line, tag=tag, value=value, part_id=part_id,
                          reason=reason, actor=actor or self.actor)
        try:
            readback = await self.driver.write(tag, value)
        except WriteRefused as exc:
            rec.outcome, rec.reason = "refused", exc.reason
            self._audit(rec)
            raise
        except WriteNotConfirmed as exc:
            rec.outcome, rec.reason, rec.raw = "error", exc.reason, exc.readback
            self._audit(rec)
            raise
        except PlcUnavailable as exc:
            rec.outcome, rec.reason = "error", str(exc)
            self._audit(rec)
            raise
        latency_ms = (time.perf_counter() - t0) * 1000
        rec.raw, rec.latency_ms = readback, latency_ms
        self._audit(rec)
        if action in ("start", "stop", "slow"):
            self.last_command = Cause(action=action, actor=rec.actor or self.actor, reason=reason, ts=rec.ts)
        return readback, latency_ms

    def _refused(self, action: str, exc: CommandRefused, *, actor: str | None = None, asked_because: str = "",
                 **fields: object) -> CommandRefused:
        reason = exc.reason if not asked_because else f"{exc.reason} (asked: {asked_because})"
        rec = AuditRecord(action=action, outcome="refused", line=self.line, reason=reason, actor=actor or self.actor)
        for k, v in fields.items():
            setattr(rec, k, v)
        exc.record = self._audit(rec)
        return exc

    # ----- commands
    async def reject_part(self, part_id: str, *, reason: str = "") -> RejectResult:
        """Pulse the reject gate for one part: write a new reject sequence number and read it back."""
        t0 = time.perf_counter()
        try:
            self.interlocks.check_reject(self.heartbeat)
        except CommandRefused as exc:
            raise self._refused("reject_part", exc, part_id=part_id, tag="reject_seq") from None
        async with self._reject_lock:  # sequence numbers must reach the PLC in order
            if not self._reject_seq_synced:
                # Continue from what the PLC holds: writing its current value again would not pulse the gate.
                self._reject_seq = int(await self.driver.read("reject_seq"))
                self._reject_seq_synced = True
            seq = self._reject_seq % 65535 + 1
            self._reject_seq = seq
            await self._write("reject_part", "reject_seq", seq, part_id=part_id, reason=reason)
        return RejectResult(part_id=part_id, seq=seq, latency_ms=(time.perf_counter() - t0) * 1000)

    async def start(self, *, actor: str | None = None, reason: str = "") -> None:
        """Start the conveyor. Only ever called for a person (the control API) or the demo's simulated
        operator: the runtime never starts a line by itself. ``actor`` and ``reason`` go into the audit."""
        try:
            await self.interlocks.check_start()
        except CommandRefused as exc:
            raise self._refused("start", exc, actor=actor, asked_because=reason, tag="run_cmd", value=True) from None
        try:
            await self._write("start", "run_cmd", True, reason=reason, actor=actor)
        except WriteNotConfirmed as exc:
            # The PLC's own interlock dropped the command between our check and the write.
            raise CommandRefused(f"start refused by the PLC: {exc.reason}") from exc

    async def stop(self, *, actor: str | None = None, reason: str = "") -> None:
        """Stop the conveyor. Never refused by the controller (stopping is always safe)."""
        await self._write("stop", "run_cmd", False, reason=reason, actor=actor)

    async def slow(self, speed_pct: float, *, actor: str | None = None, reason: str = "") -> None:
        """Set the conveyor speed setpoint in percent (range-checked by the tag map)."""
        try:
            self.interlocks.require_link()
        except CommandRefused as exc:
            raise self._refused("slow", exc, actor=actor, asked_because=reason, tag="speed_setpoint",
                                value=speed_pct) from None
        await self._write("slow", "speed_setpoint", speed_pct, reason=reason, actor=actor)

    async def reset_reject_counter(self) -> None:
        await self._write("reset_reject_counter", "reject_count", 0)

    async def write_tag(self, tag: str, value: Value) -> Value:
        """Generic checked write for the control API / maintenance screens; same checks and audit."""
        readback, _ = await self._write("write", tag, value)
        return readback

    async def line_state(self) -> LineState:
        now = time.time()
        link = self.driver.state
        if link != LinkState.CONNECTED:
            return LineState(mode="unknown", link=link.value, ts=now)
        try:
            v = await self.driver.read_many(
                [
                    "running",
                    "estop_active",
                    "guard_door_open",
                    "safe_state",
                    "speed_setpoint",
                    "actual_speed",
                    "reject_count",
                    "parts_count",
                ]
            )
        except PlcUnavailable as exc:
            return LineState(mode="unknown", link=self.driver.state.value, ts=now, error=str(exc))
        return LineState(
            mode="running" if v["running"] else "stopped",
            link=LinkState.CONNECTED.value,
            estop_active=bool(v["estop_active"]),
            guard_door_open=bool(v["guard_door_open"]),
            safe_state=bool(v["safe_state"]),
            speed_setpoint=float(v["speed_setpoint"]),
            actual_speed=float(v["actual_speed"]),
            reject_count=int(v["reject_count"]),
            parts_count=int(v["parts_count"]),
            ts=now,
        )
