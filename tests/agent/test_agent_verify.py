"""Verification of numbers and names: units, rounding, percentages, Chinese text, wrong claims."""

from __future__ import annotations

from datetime import UTC, datetime

from llm_ops.facts import Fact, Window
from llm_ops.verify import extract_numbers, verify_summary, verify_text

W = Window("L1", datetime(2026, 11, 20, 6, 0, tzinfo=UTC), datetime(2026, 11, 20, 14, 0, tzinfo=UTC))
FACTS = [
    Fact("faults.total", "t", "fault_total", 3, "count"),
    Fact("faults.count.M2.TWF", "t", "fault_count", 2, "count", ("M2", "TWF")),
    Fact("faults.downtime.M2.TWF", "t", "downtime", 2100.0, "s", ("M2", "TWF")),
    Fact("energy.total", "t", "energy_total", 1234.44, "kWh"),
    Fact("quality.reject_rate", "t", "reject_rate", 8.86, "%"),
    Fact("defects.count.burr", "t", "defect_count", 30, "count", ("burr",)),
    Fact("anomaly.energy", "t", "anomaly", 4.2, "z", (), at="2026-11-20T10:00:00+00:00"),
]
VOCAB = {"M1", "M2", "M3", "TWF", "HDF", "burr", "scratch"}


def check(text: str) -> list[str]:
    v = verify_text(text, FACTS, window=W, vocabulary=VOCAB)
    return v.unsupported_numbers + v.unsupported_names + v.unsupported_times


def test_supported_numbers_in_any_unit_and_rounding() -> None:
    assert check("M2 had 2 TWF faults and 35 min downtime (0.58 h, 2100 s).") == []
    assert check("Energy was 1,234.4 kWh (1234 kWh, 1.2 MWh); reject rate 8.9%, or 9%.") == []
    assert check("The 8 h shift used 1234440 Wh. At 10:00 energy was far off (z=4.2).") == []


def test_wrong_numbers_are_caught() -> None:
    assert check("M2 had 3 TWF faults.") == ["3"]
    assert check("Downtime was 45 min.") == ["45 min"]
    assert check("Reject rate 9.5%.") == ["9.5%"]
    assert check("Energy 1,300 kWh.") == ["1,300 kWh"]
    # The right digits in the wrong unit are wrong.
    assert check("Downtime was 2100 min.") == ["2100 min"]


def test_names_and_times() -> None:
    assert sorted(check("M3 stopped with HDF.")) == ["HDF", "M3"]
    assert check("Check M7 first.") == ["M7"]  # an id-shaped name that the store does not even know
    assert check("Defect scratch rose.") == ["scratch"]
    assert check("At 11:30 the line stopped.") == ["11:30"]
    assert check("Burr defects: 30.") == []  # case-insensitive class names


def test_chinese_text() -> None:
    assert check("M2 发生 2 次 TWF 故障，停机 35.0 分钟，能耗 1234.4 千瓦时，不良率 8.9%。") == []
    assert check("M2 发生三次 TWF 故障。") == ["三"]
    assert check("M2的TWF故障停机 0.6 小时。") == []
    assert check("M3的故障。") == ["M3"]


def test_extract_ignores_ids_dates_and_list_markers() -> None:
    nums = [c.value for c in extract_numbers("1. M2 on L1 at 2026-11-20T10:00:00Z: 5 faults", {"M2", "L1"})]
    assert nums == [5.0]


def test_summary_evidence_ids_must_exist() -> None:
    summary = {"headline": "3 faults", "findings": [{"text": "3 faults", "evidence": ["faults.total", "nope"]}],
               "checks": [], "prose": "3 faults."}
    v = verify_summary(summary, FACTS, window=W, vocabulary=VOCAB)
    assert not v.ok and v.unsupported_names == ["evidence:nope"]


def test_number_bound_to_the_names_in_its_clause() -> None:
    # 3 is the line's fault total, but this clause is about M2/TWF, whose count is 2.
    assert check("M2 had 3 TWF faults.") == ["3"]
    assert check("3 faults in total; M2 had 2 TWF faults.") == []
    assert sorted(check("M1 had 2 TWF faults.")) == ["2", "M1"]
