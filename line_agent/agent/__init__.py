"""The line agent: deterministic analysis tools, verified summaries, triggers and eval.

Public entry points (import from here):
* ``summarize(url, line, since="8h", lang="en", backend=None, trigger="on_demand", publish=None)``
  -> ``SummaryResult`` (stored in table ``summaries``; LLM calls in ``llm_calls``);
* ``get_summary(url, summary_id)``, ``list_summaries(url, line=None, limit=20)``;
* ``run_due(...)``, ``Scheduler`` (per shift / hourly), ``on_alarm(...)`` in ``triggers``.
"""

from line_agent.agent.core import SummaryResult, get_summary, list_summaries, parse_since, summarize

__all__ = ["SummaryResult", "get_summary", "list_summaries", "parse_since", "summarize"]
