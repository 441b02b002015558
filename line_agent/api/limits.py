"""Abuse limits in front of the routes: request body size (ASGI middleware) and failed-authentication lockout.

``BodyLimit`` is pure ASGI so it sees the body as it arrives: a request whose ``Content-Length`` announces
more than the limit is answered 413 before a byte is read, and a chunked (or lying) body is counted chunk by
chunk and cut off with 413 as soon as it passes the limit. Nothing upstream ever holds more than the limit.

``AuthFailures`` is a per-client-address token bucket of failed authentications (unknown or revoked
tokens): ``burst`` failures at once, refilled at ``burst / window_s`` per second. An empty bucket answers
429 with ``Retry-After`` to every token from that address, right or wrong, so guessing cannot go on at the
refill rate plus a success oracle. It is in memory and bounded (``max_clients`` addresses, least recently
failed dropped first).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: the largest legitimate body (500 label boxes) is ~50 kB


class BodyTooLarge(Exception):
    """Raised into the app by the wrapped ``receive`` once the body passed the limit."""


def _json(status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[Message, Message]:
    body = json.dumps({"detail": detail}).encode()
    start: Message = {"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]}
    return start, {"type": "http.response.body", "body": body, "more_body": False}


class BodyLimit:
    """413 for any HTTP request body over ``max_bytes`` (announced or counted); ``max_bytes <= 0``: no limit."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    announced = int(v)
                except ValueError:
                    announced = -1  # the server refuses a malformed length before we get here
                if announced > limit:
                    await self._refuse(send, limit)
                    return
        seen = 0
        exceeded = False
        started = False
        refused = False

        async def counted() -> Message:
            nonlocal seen, exceeded
            if exceeded:
                raise BodyTooLarge
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise BodyTooLarge  # the chunk that passed the limit is dropped with the exception
            return msg

        async def guarded_send(msg: Message) -> None:
            nonlocal started, refused
            if exceeded and not started:
                # Whatever the app answers to the cut-off body (400, 422, 500), the answer is 413.
                if not refused:
                    refused = True
                    await self._refuse(send, limit)
                return
            if refused:
                return
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, guarded_send)
        except BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started and not refused:
            await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        start, body = _json(413, f"request body over the {limit} byte limit")
        await send(start)
        await send(body)


class AuthFailures:
    """Failed authentications per client address, as a token bucket; thread-safe, bounded."""

    def __init__(self, burst: int = 10, window_s: float = 60.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = max(1, int(burst))
        self.window_s = max(1e-3, float(window_s))
        self.max_clients = max(1, int(max_clients))
        self._rate = self.burst / self.window_s  # failures given back per second
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # addr -> (tokens, at)

    def _level(self, addr: str, now: float) -> float:
        hit = self._buckets.get(addr)
        if hit is None:
            return float(self.burst)
        tokens, at = hit
        return min(float(self.burst), tokens + (now - at) * self._rate)

    def retry_after(self, addr: str) -> float:
        """Seconds until ``addr`` may try again; 0 when it may now."""
        with self._lock:
            now = self._clock()
            level = self._level(addr, now)
            if level >= 1.0:
                if level >= self.burst:
                    self._buckets.pop(addr, None)  # full again: forget it
                return 0.0
            return (1.0 - level) / self._rate

    def failed(self, addr: str) -> bool:
        """Record one failure; True when this one emptied the bucket (the address is now locked out)."""
        with self._lock:
            now = self._clock()
            level = max(0.0, self._level(addr, now) - 1.0)
            self._buckets[addr] = (level, now)
            self._buckets.move_to_end(addr)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return level < 1.0

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
