"""Triggers: per-shift and hourly summaries (idempotent per window), and short alerts on anomalies.

``run_due`` is what a scheduler calls every minute or so; it writes a summary for the last completed
shift/hour unless one is already stored for that window. ``Scheduler`` is a small thread around it.
``on_alarm`` runs the anomaly/fault/quality tools over a short look-back and, when something is off,
stores (and publishes) a short alert summary.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg

from line_agent.agent.core import Publish, SummaryResult, ensure_schema, summarize
from line_agent.agent.tools import ALERT_PLAN, ToolConfig, run_tools
from llm_ops.backends import Backend
from llm_ops.facts import Window

log = logging.getLogger(__name__)

DEFAULT_SHIFT_STARTS: tuple[int, ...] = (6, 14, 22)  # hours, UTC


def last_shift(now: datetime, starts: Sequence[int] = DEFAULT_SHIFT_STARTS) -> tuple[datetime, datetime]:
    """The most recent completed shift [start, end) before ``now`` (shifts start at the given hours)."""
    if not starts or any(not 0 <= h < 24 for h in starts):
        raise ValueError(f"shift start hours must be in 0..23, got {list(starts)}")
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    boundaries = sorted(day + timedelta(days=d, hours=h) for d in (-2, -1, 0) for h in starts)
    past = [b for b in boundaries if b <= now]
    end = past[-1]
    start = past[-2]
    return start, end


def last_hour(now: datetime) -> tuple[datetime, datetime]:
    end = now.replace(minute=0, second=0, microsecond=0)
    return end - timedelta(hours=1), end


def run_due(
    url: str,
    line: str,
    kind: str,
    *,
    now: datetime | None = None,
    lang: str = "en",
    backend: Backend | str | None = None,
    publish: Publish | None = None,
    shift_starts: Sequence[int] = DEFAULT_SHIFT_STARTS,
) -> SummaryResult | None:
    """Summarise the last completed shift (kind='shift') or hour (kind='hourly') unless already stored."""
    now = now or datetime.now(UTC)
    if kind == "shift":
        start, end = last_shift(now, shift_starts)
    elif kind == "hourly":
        start, end = last_hour(now)
    else:
        raise ValueError(f"kind must be 'shift' or 'hourly', got {kind!r}")
    ensure_schema(url)
    with psycopg.connect(url) as conn:
        done = conn.execute(
            "SELECT 1 FROM summaries WHERE line = %s AND trigger = %s AND window_start = %s AND window_end = %s"
            " AND lang = %s",
            (line, kind, start, end, lang),
        ).fetchone()
    if done:
        return None
    return summarize(url, line, start=start, end=end, lang=lang, backend=backend, trigger=kind, publish=publish)


def on_alarm(
    url: str,
    line: str,
    *,
    at: datetime | None = None,
    lookback: timedelta = timedelta(hours=1),
    lang: str = "en",
    backend: Backend | str | None = None,
    publish: Publish | None = None,
    cfg: ToolConfig = ToolConfig(bucket=timedelta(minutes=15)),
) -> SummaryResult | None:
    """A short alert summary when the look-back window holds an anomaly or a fault; None otherwise."""
    at = at or datetime.now(UTC)
    w = Window(line, at - lookback, at)
    ensure_schema(url)
    with psycopg.connect(url) as conn:
        results = run_tools(conn, w, ["anomalies", "fault_summary"], cfg)
    triggered = any(f.kind == "anomaly" for r in results for f in r.facts) or any(
        f.kind == "fault_total" and f.value > 0 for r in results for f in r.facts)
    if not triggered:
        return None
    return summarize(url, line, start=w.start, end=w.end, lang=lang, backend=backend, trigger="alarm",
                     publish=publish, tools=list(ALERT_PLAN), alert=True, cfg=cfg)


class Scheduler:
    """Background thread: every ``period_s`` run hourly and per-shift summaries for each line."""

    def __init__(self, url: str, lines: Sequence[str], *, kinds: Sequence[str] = ("shift", "hourly"),
                 lang: str = "en", backend: Backend | str | None = None, publish: Publish | None = None,
                 period_s: float = 60.0) -> None:
        self.url, self.lines, self.kinds, self.lang = url, list(lines), list(kinds), lang
        self.backend, self.publish, self.period_s = backend, publish, period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self, now: datetime | None = None) -> list[SummaryResult]:
        """One pass; errors of one line never stop the others (they are logged)."""
        out: list[SummaryResult] = []
        for line in self.lines:
            for kind in self.kinds:
                try:
                    r = run_due(self.url, line, kind, now=now, lang=self.lang, backend=self.backend,
                                publish=self.publish)
                except Exception:  # keep the scheduler alive through a database restart
                    log.exception("scheduled %s summary for %s failed", kind, line)
                    continue
                if r is not None:
                    out.append(r)
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.period_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="agent-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
