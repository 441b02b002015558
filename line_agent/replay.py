"""``lineguard replay ai4i``: the AI4I 2020 predictive-maintenance table published as one line's telemetry.

Each of the 10,000 rows is one produced part on a milling machine. Per part we publish the process
values, mechanical power (torque x rpm x 2 pi / 60, in W), the energy of the part at an assumed cycle
time, a part counter, and each failure mode set on the row (TWF, HDF, PWF, OSF, RNF) as a fault event
with a stable id (``ai4i-<line>-<UDI>-<MODE>``), so a replay repeated or re-delivered is stored once.
Part i is stamped ``start + i * cycle_s`` (simulated time), whatever the publishing rate.

Formats: the JSON convention (``lineguard/<site>/<line>/<cell>/telemetry|event``) or Sparkplug B
(group = line, edge node = cell, device = machine; DDATA by alias after NBIRTH/DBIRTH; faults as
``Faults/<MODE>`` string metrics). See docs/MQTT.md.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from line_agent.mqtt import DEFAULT_ACK_RETENTION_S, Publisher

FAILURE_MODES = ("TWF", "HDF", "PWF", "OSF", "RNF")
PROCESS_COLUMNS = {  # metric name -> AI4I column
    "air_temp_k": "Air temperature [K]",
    "process_temp_k": "Process temperature [K]",
    "speed_rpm": "Rotational speed [rpm]",
    "torque_nm": "Torque [Nm]",
    "tool_wear_min": "Tool wear [min]",
}
METRICS = (*PROCESS_COLUMNS, "power_w", "energy_wh", "parts", "machine_failure")


@dataclass(frozen=True)
class Ai4iRow:
    udi: int
    product_id: str
    quality: str
    values: dict[str, float]  # the PROCESS_COLUMNS metrics
    machine_failure: int
    failures: tuple[str, ...]  # the modes set on this row

    @property
    def power_w(self) -> float:
        return self.values["torque_nm"] * self.values["speed_rpm"] * 2.0 * math.pi / 60.0


class Ai4iError(ValueError):
    """The file is not the AI4I table: the message names the row and column."""


def load_ai4i(path: Path) -> list[Ai4iRow]:
    """Read the tab-separated AI4I table (comma-separated also accepted)."""
    text = path.read_text(encoding="utf-8")
    dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
    rows: list[Ai4iRow] = []
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    missing = {"UDI", "Product ID", "Machine failure", *PROCESS_COLUMNS.values(), *FAILURE_MODES} - set(
        reader.fieldnames or [])
    if missing:
        raise Ai4iError(f"{path}: missing columns {sorted(missing)}")
    for n, rec in enumerate(reader, start=2):
        try:
            values = {m: float(rec[c]) for m, c in PROCESS_COLUMNS.items()}
            rows.append(Ai4iRow(int(rec["UDI"]), rec["Product ID"], rec.get("Type", ""), values,
                                int(rec["Machine failure"]), tuple(f for f in FAILURE_MODES if rec[f].strip() == "1")))
        except (TypeError, ValueError) as exc:
            raise Ai4iError(f"{path} line {n}: {exc}") from None
    return rows


@dataclass
class ReplayResult:
    rows: int = 0
    messages: int = 0
    points: int = 0
    faults: int = 0
    elapsed_s: float = 0.0


def _json_dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, separators=(",", ":"))


def replay_ai4i(
    path: Path, mqtt_url: str, *, rate: float = 100.0, fmt: Literal["json", "sparkplug"] = "json",
    line: str = "L1", site: str = "site1", cell: str = "mill", device: str = "mill1", cycle_s: float = 10.0,
    start_ts: float | None = None, rows_per_message: int | None = None, limit: int | None = None,
    progress: bool = True, on_row: Callable[[int], None] | None = None, flush_timeout_s: float = 120.0,
    topic_prefix: str = "lineguard", ack_retention_s: float = DEFAULT_ACK_RETENTION_S,
) -> ReplayResult:
    """Publish the table at ``rate`` rows (parts) per second; return counts once the broker has them all.

    Through a memory outbox that keeps acknowledged messages ``ack_retention_s`` (line_agent/outbox.py):
    a broker crash during the replay, or right after it, loses nothing."""
    from tqdm import tqdm

    rows = load_ai4i(path)[:limit]
    if rate <= 0:
        raise ValueError("rate must be positive")
    start = float(int(time.time() - len(rows) * cycle_s)) if start_ts is None else start_ts
    per_msg = rows_per_message or max(1, min(500, int(rate // 20)))
    res = ReplayResult()
    t0 = time.monotonic()
    client_id = f"{topic_prefix}-replay-{line}-{fmt}"
    if fmt == "json":
        client = Publisher(mqtt_url, client_id, max_queued=0, max_inflight=200, ack_retention_s=ack_retention_s)
        base = f"{topic_prefix}/{site}/{line}/{cell}"
        sender: _Sender = _JsonSender(client, base, device)
    elif fmt == "sparkplug":
        sender = _SparkplugSender(mqtt_url, client_id, line, cell, device, start, ack_retention_s)
        client = sender.client
    else:
        raise ValueError(f"format must be json or sparkplug, not {fmt!r}")
    if not client.connected.wait(15):
        client.close()
        from line_agent.plant import redact

        raise ConnectionError(f"cannot reach the MQTT broker at {redact(mqtt_url)}")
    bar = tqdm(total=len(rows), unit="part", disable=not progress)
    try:
        for i0 in range(0, len(rows), per_msg):
            chunk = rows[i0:i0 + per_msg]
            pts, msgs, faults = sender.send(chunk, [start + (i0 + k) * cycle_s for k in range(len(chunk))],
                                            line, cycle_s)
            res.points += pts
            res.messages += msgs
            res.faults += faults
            res.rows += len(chunk)
            bar.update(len(chunk))
            if on_row is not None:
                on_row(res.rows)
            ahead = t0 + res.rows / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        sender.finish()
        if not client.flush(flush_timeout_s):
            raise TimeoutError("the broker did not acknowledge every message in time")
    finally:
        bar.close()
        client.close()
    res.elapsed_s = time.monotonic() - t0
    return res


def _metrics(row: Ai4iRow, cycle_s: float) -> dict[str, float]:
    p = row.power_w
    return {**row.values, "power_w": round(p, 3), "energy_wh": round(p * cycle_s / 3600.0, 6), "parts": 1.0,
            "machine_failure": float(row.machine_failure)}


def fault_event_id(line: str, udi: int, mode: str) -> str:
    return f"ai4i-{line}-{udi}-{mode}"


class _Sender:
    def send(self, rows: list[Ai4iRow], ts: list[float], line: str, cycle_s: float) -> tuple[int, int, int]:
        raise NotImplementedError

    def finish(self) -> None:
        """Protocol epilogue before the final flush."""


class _JsonSender(_Sender):
    def __init__(self, client: Publisher, base: str, device: str) -> None:
        self.client, self.base, self.device = client, base, device

    def send(self, rows: list[Ai4iRow], ts: list[float], line: str, cycle_s: float) -> tuple[int, int, int]:
        points = [{"ts": t, "device": self.device, "metrics": _metrics(r, cycle_s)}
                  for r, t in zip(rows, ts, strict=True)]
        self.client.publish(f"{self.base}/telemetry", _json_dumps(points))
        msgs, faults = 1, 0
        for r, t in zip(rows, ts, strict=True):
            for mode in r.failures:
                self.client.publish(f"{self.base}/event", _json_dumps({
                    "event_id": fault_event_id(line, r.udi, mode), "ts": t, "device": self.device, "kind": "fault",
                    "code": mode, "udi": r.udi, "product_id": r.product_id,
                }))
                msgs += 1
                faults += 1
        return len(points) * len(METRICS), msgs, faults


class _SparkplugSender(_Sender):
    """An edge node ``cell`` with one device, as Sparkplug B 3.0 describes: births, then DDATA by alias."""

    def __init__(self, url: str, client_id: str, group: str, node: str, device: str, start_ts: float,
                 ack_retention_s: float = DEFAULT_ACK_RETENTION_S) -> None:
        import pysparkplug as spb

        self.spb = spb
        self.group, self.node, self.device = group, node, device
        self.bd_seq = int(time.time()) % 256
        self.seq = 0
        ms = int(start_ts * 1000)
        death = spb.NDeath(timestamp=ms, bd_seq_metric=spb.Metric(timestamp=ms, name="bdSeq",
                                                                    datatype=spb.DataType.INT64, value=self.bd_seq))
        self.client = Publisher(url, client_id, max_queued=0, max_inflight=200, ack_retention_s=ack_retention_s,
                                will=(self._topic("NDEATH"), death.encode()))
        self.death = death
        self.aliases = {name: i + 1 for i, name in enumerate((*METRICS, *(f"Faults/{m}" for m in FAILURE_MODES)))}
        self.client.connected.wait(15)
        self._births(ms)

    def _topic(self, mtype: str, device: bool = False) -> str:
        return f"spBv1.0/{self.group}/{mtype}/{self.node}" + (f"/{self.device}" if device else "")

    def _next_seq(self) -> int:
        s = self.seq
        self.seq = (self.seq + 1) % 256
        return s

    def _births(self, ms: int) -> None:
        spb = self.spb
        nbirth = spb.NBirth(timestamp=ms, seq=self._next_seq(), metrics=(
            spb.Metric(timestamp=ms, name="bdSeq", datatype=spb.DataType.INT64, value=self.bd_seq),
            spb.Metric(timestamp=ms, name="Node Control/Rebirth", datatype=spb.DataType.BOOLEAN, value=False),
        ))
        self.client.publish(self._topic("NBIRTH"), nbirth.encode(include_dtypes=True))
        metrics = [spb.Metric(timestamp=ms, name=n, alias=a, datatype=spb.DataType.DOUBLE, is_null=True)
                   for n, a in self.aliases.items() if not n.startswith("Faults/")]
        metrics += [spb.Metric(timestamp=ms, name=n, alias=a, datatype=spb.DataType.STRING, value="")
                    for n, a in self.aliases.items() if n.startswith("Faults/")]
        dbirth = spb.DBirth(timestamp=ms, seq=self._next_seq(), metrics=tuple(metrics))
        self.client.publish(self._topic("DBIRTH", True), dbirth.encode(include_dtypes=True))

    def send(self, rows: list[Ai4iRow], ts: list[float], line: str, cycle_s: float) -> tuple[int, int, int]:
        spb = self.spb
        metrics = []
        points = faults = 0
        for r, t in zip(rows, ts, strict=True):
            ms = round(t * 1000)
            for name, v in _metrics(r, cycle_s).items():
                metrics.append(spb.Metric(timestamp=ms, name=None, alias=self.aliases[name],
                                          datatype=spb.DataType.DOUBLE, value=v))
                points += 1
            for mode in r.failures:
                metrics.append(spb.Metric(timestamp=ms, name=None, alias=self.aliases[f"Faults/{mode}"],
                                          datatype=spb.DataType.STRING, value=fault_event_id(line, r.udi, mode)))
                faults += 1
        ddata = spb.DData(timestamp=round(ts[-1] * 1000), seq=self._next_seq(), metrics=tuple(metrics))
        self.client.publish(self._topic("DDATA", True), ddata.encode())  # no dtypes: the births have them
        return points, 1, faults

    def finish(self) -> None:
        self.client.publish(self._topic("NDEATH"), self.death.encode())
