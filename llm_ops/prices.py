"""Price table: USD per million tokens (input, output) by model name; configurable.

The defaults are *configurable estimates* taken from the providers' published list prices; prices
change often, so override them for billing with a JSON file (``LINEGUARD_LLM_PRICES=/path.json``,
``{"model-name-or-glob": {"in": 0.15, "out": 0.60}}``) or ``PriceTable.load(path)``.

Sources of the defaults (list prices, standard tier, no caching discount):
* OpenAI: platform.openai.com/docs/pricing (gpt-4o 2.50/10.00, gpt-4o-mini 0.15/0.60,
  gpt-4.1-mini 0.40/1.60).
* DeepSeek: api-docs.deepseek.com/quick_start/pricing-details-usd (deepseek-chat cache miss 0.27,
  output 1.10; deepseek-reasoner 0.55/2.19). DeepSeek has since changed prices several times.
* Alibaba Model Studio (qwen-plus, qwen-turbo): estimates; check the provider's price page.
* Local models (llama.cpp, vLLM, Ollama on your own box): 0 per token; the cost is the hardware
  and electricity, which the energy tools account for, not the price table.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Price:
    usd_per_m_in: float
    usd_per_m_out: float
    source: str = ""


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00, "platform.openai.com/docs/pricing"),
    "gpt-4o-mini": Price(0.15, 0.60, "platform.openai.com/docs/pricing"),
    "gpt-4.1-mini": Price(0.40, 1.60, "platform.openai.com/docs/pricing"),
    "deepseek-chat": Price(0.27, 1.10, "api-docs.deepseek.com/quick_start/pricing-details-usd"),
    "deepseek-reasoner": Price(0.55, 2.19, "api-docs.deepseek.com/quick_start/pricing-details-usd"),
    "qwen-plus": Price(0.40, 1.20, "estimate; check Alibaba Model Studio pricing"),
    "qwen-turbo": Price(0.05, 0.20, "estimate; check Alibaba Model Studio pricing"),
    # Local / open-weight models served on our own hardware: no per-token charge.
    "*.gguf": Price(0.0, 0.0, "local"),
    "template-v1": Price(0.0, 0.0, "built-in, no model"),
    "qwen2.5-*-instruct*": Price(0.0, 0.0, "local open weights"),
    "llama-3*": Price(0.0, 0.0, "local open weights"),
    "gemma-3*": Price(0.0, 0.0, "local open weights"),
}


@dataclass
class PriceTable:
    prices: dict[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """Defaults, overridden by the JSON file at ``path`` or ``$LINEGUARD_LLM_PRICES``."""
        table = cls()
        path = path or os.environ.get("LINEGUARD_LLM_PRICES")
        if path:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
            for name, p in raw.items():
                table.prices[name] = Price(float(p["in"]), float(p["out"]), str(p.get("source", str(path))))
        return table

    def lookup(self, model: str) -> Price | None:
        """Exact name first, then the longest matching glob; None when the model is not priced."""
        if model in self.prices:
            return self.prices[model]
        matches = [k for k in self.prices if fnmatch.fnmatch(model.lower(), k.lower())]
        return self.prices[max(matches, key=len)] if matches else None

    def cost(self, model: str, tokens_in: int, tokens_out: int) -> float:
        """USD for one call; an unpriced model costs 0 (and is flagged by ``lookup`` returning None)."""
        p = self.lookup(model)
        if p is None:
            return 0.0
        return (tokens_in * p.usd_per_m_in + tokens_out * p.usd_per_m_out) / 1_000_000
