"""Per-call accounting in PostgreSQL (table ``llm_calls``): tokens, latency, cost; totals per day and line."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg
from prometheus_client import Counter

from llm_ops.backends import BackendError, Completion
from llm_ops.prices import PriceTable

#: Spend in US dollars by backend, exported as ``lineguard_llm_cost_total`` (Prometheus adds _total).
LLM_COST = Counter("lineguard_llm_cost", "LLM spend in US dollars.", ["backend"])


@dataclass
class CallRecord:
    backend: str
    model: str
    purpose: str
    tokens_in: int
    tokens_out: int
    latency_ms: float
    cost_usd: float
    ok: bool
    error: str = ""


@dataclass
class Ledger:
    """Collects call records for one summary; ``flush`` writes them to ``llm_calls``."""

    line: str = ""
    prices: PriceTable = field(default_factory=PriceTable.load)
    records: list[CallRecord] = field(default_factory=list)

    def record(self, out: Completion, purpose: str) -> CallRecord:
        for err in out.failed_attempts:
            self.record_error(err, purpose, model="")
        rec = CallRecord(
            backend=out.backend, model=out.model, purpose=purpose, tokens_in=out.tokens_in,
            tokens_out=out.tokens_out, latency_ms=out.latency_ms,
            cost_usd=self.prices.cost(out.model, out.tokens_in, out.tokens_out), ok=True,
        )
        self.records.append(rec)
        LLM_COST.labels(backend=out.backend).inc(rec.cost_usd)
        return rec

    def record_error(self, err: BackendError, purpose: str, model: str = "") -> CallRecord:
        rec = CallRecord(backend=err.backend or "", model=model, purpose=purpose, tokens_in=0, tokens_out=0,
                         latency_ms=err.latency_ms, cost_usd=0.0, ok=False, error=str(err)[:500])
        self.records.append(rec)
        return rec

    def mark_last_failed(self, reason: str) -> None:
        """The last call answered but its text was unusable (invalid JSON, failed verification)."""
        if self.records:
            self.records[-1].error = reason[:500]

    @property
    def tokens_in(self) -> int:
        return sum(r.tokens_in for r in self.records)

    @property
    def tokens_out(self) -> int:
        return sum(r.tokens_out for r in self.records)

    @property
    def cost_usd(self) -> float:
        return sum(r.cost_usd for r in self.records)

    @property
    def latency_ms(self) -> float:
        return sum(r.latency_ms for r in self.records)

    def flush(self, conn: psycopg.Connection, summary_id: int | None) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO llm_calls (line, summary_id, purpose, backend, model, tokens_in, tokens_out,"
                " latency_ms, cost_usd, ok, error) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                [(self.line, summary_id, r.purpose, r.backend, r.model, r.tokens_in, r.tokens_out,
                  r.latency_ms, r.cost_usd, r.ok, r.error) for r in self.records],
            )
        self.records.clear()


def totals(url: str, *, day: date | None = None, line: str | None = None) -> list[dict[str, Any]]:
    """Totals per day, line, backend and model from the ``llm_cost_daily`` view, optionally filtered."""
    where: list[str] = []
    args: list[Any] = []
    if day is not None:
        where.append("day = %s")
        args.append(day)
    if line is not None:
        where.append("line = %s")
        args.append(line)
    sql = "SELECT day, line, backend, model, calls, failed, tokens_in, tokens_out, cost_usd, mean_latency_ms" \
          " FROM llm_cost_daily" + (" WHERE " + " AND ".join(where) if where else "") + \
          " ORDER BY day, line, backend, model"
    with psycopg.connect(url) as conn:
        cur = conn.execute(sql.encode(), args)  # composed from fixed fragments only
        cols = [d.name for d in cur.description or []]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
