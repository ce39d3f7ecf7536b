"""Request limits: per-key request and token buckets, per-key concurrency, and an ASGI guard
on request body size."""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RateLimiter:
    """One token bucket per key: `per_minute` tokens, refilled continuously."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if the request may go on, else the seconds until a token is free."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.refill_per_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.refill_per_s


class TokenBudget:
    """Per key: `per_minute` model tokens, refilled continuously, charged after the work.

    A request is admitted while its key's balance is positive and charged what it used
    (prompt + completion tokens) when it ends, so the balance may go below zero; the key
    then waits until it refills. What one key can overspend is bounded by its requests in
    flight (`InFlightLimiter`) times the prompt and completion limits."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self._balances: dict[str, tuple[float, float]] = {}  # key -> (balance, at)
        self._lock = threading.Lock()

    def _balance(self, key: str, now: float) -> float:
        balance, at = self._balances.get(key, (self.capacity, now))
        return min(self.capacity, balance + (now - at) * self.refill_per_s)

    def wait_s(self, key: str) -> float:
        """0 if the key may start a request, else the seconds until its balance is positive."""
        now = time.monotonic()
        with self._lock:
            balance = self._balance(key, now)
        if balance > 0:
            return 0.0
        return (1.0 - balance) / self.refill_per_s

    def charge(self, key: str, tokens: int) -> None:
        """Take `tokens` from the key's balance."""
        now = time.monotonic()
        with self._lock:
            self._balances[key] = (self._balance(key, now) - tokens, now)


class InFlightLimiter:
    """At most `limit` requests in flight per key."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> bool:
        """Whether the key may start one more request (then `release` it when it ends)."""
        with self._lock:
            count = self._counts.get(key, 0)
            if count >= self.limit:
                return False
            self._counts[key] = count + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)

    def in_flight(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)


def retry_after_header(wait_s: float) -> str:
    """Retry-After in whole seconds, never 0 (a client would retry at once)."""
    return str(max(1, math.ceil(wait_s)))


class BodySizeLimit:
    """413 for a body larger than `max_bytes`, by Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        too_large = False
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal refused
            # The app may turn the aborted read into its own error response: send ours.
            if too_large:
                if not refused:
                    refused = True
                    await self._refuse(send)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not refused:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        await send_error(send, 413, f"request body larger than the limit of {self.max_bytes} "
                         "bytes (serving.max_body_bytes)", "request_too_large")


class _BodyTooLarge(Exception):
    pass


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    """An error both FastAPI clients (`detail`) and OpenAI clients (`error`) understand."""
    return {"detail": message, "error": {"message": message, "type": kind, "code": code or kind}}


async def send_error(send: Send, status: int, message: str, kind: str) -> None:
    """An `error_body` response sent straight from ASGI middleware (before any route)."""
    body = json.dumps(error_body(message, kind)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
