"""The LLM cost counter (lineguard_llm_cost_total) adds exactly what the price table bills."""

import pytest
from prometheus_client import REGISTRY

from llm_ops.accounting import Ledger
from llm_ops.backends import Completion
from llm_ops.prices import PriceTable


def test_cost_counter_moves_by_the_billed_amount() -> None:
    prices = PriceTable.load()
    price = prices.lookup("gpt-4o-mini")
    assert price is not None
    before = REGISTRY.get_sample_value("lineguard_llm_cost_total", {"backend": "openai-test"}) or 0.0
    ledger = Ledger(line="L1", prices=prices)
    rec = ledger.record(Completion(text="x", backend="openai-test", model="gpt-4o-mini",
                                   tokens_in=12_000, tokens_out=3_000), purpose="summary")
    expected = (12_000 * price.usd_per_m_in + 3_000 * price.usd_per_m_out) / 1e6
    assert rec.cost_usd == pytest.approx(expected) and expected > 0
    after = REGISTRY.get_sample_value("lineguard_llm_cost_total", {"backend": "openai-test"})
    assert after == pytest.approx(before + expected)
