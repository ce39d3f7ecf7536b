"""ASGI middleware: per-request metrics, and the Host / Origin guard of a service without auth."""

from __future__ import annotations

import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.limits import send_error
from serving.metrics import ServingMetrics

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
DEFAULT_PORTS = {"http": 80, "https": 443}
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class RequestMetrics:
    """Counts every HTTP request by method, route template (not raw path) and status."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # The template keeps label cardinality bounded: /v1/memories/{memory_id}.
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, path, str(status)).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - started)


class LoopbackHostGuard:
    """Without auth, only loopback names (and `serving.allowed_hosts`) may reach the service.

    DNS rebinding: a web page on evil.example whose name is made to resolve to 127.0.0.1
    reaches this port from the browser, but its requests still say `Host: evil.example`;
    they are refused with 400. A page that posts to http://127.0.0.1 directly says where it
    comes from in `Origin`: a state-changing request from a foreign origin is refused with
    403. An allowed name is `name` (on the service's own port) or `name:port`."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed = [*LOOPBACK_NAMES, *allowed_hosts]
        self._named = {_split(entry) for entry in self.allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = scope.get("server") or (None, None)
        own_port = server[1]
        headers = {name: value.decode("latin-1") for name, value in scope["headers"]
                   if name in (b"host", b"origin")}
        host = headers.get(b"host", "")
        implied = DEFAULT_PORTS.get(scope.get("scheme", "http"))
        if not self._allows(host, implied, own_port):
            await send_error(send, 400, f"Host {host!a} is not allowed: without auth the "
                             f"service answers only {', '.join(self.allowed)} on its port "
                             "(serving.allowed_hosts adds names)", "invalid_request_error")
            return
        origin = headers.get(b"origin")
        if origin is not None and scope["method"] in STATE_CHANGING:
            parts = urlsplit(origin)
            if not self._allows(parts.netloc, DEFAULT_PORTS.get(parts.scheme), own_port):
                await send_error(send, 403, f"Origin {origin!a} is not allowed to change "
                                 "anything: without auth only pages of an allowed host may "
                                 "(serving.allowed_hosts)", "permission_error")
                return
        await self.app(scope, receive, send)

    def _allows(self, netloc: str, implied_port: int | None, own_port: int | None) -> bool:
        """Whether `netloc` (host[:port]) names an allowed host on an allowed port."""
        try:
            name, port = _split(netloc)
        except ValueError:  # not a host name at all (a bad port, stray characters)
            return False
        if not name:
            return False
        port = port or implied_port
        return (name, port) in self._named or (
            (name, None) in self._named and (own_port is None or port == own_port))


def _split(netloc: str) -> tuple[str, int | None]:
    """(lower-case host name, port or None) of `host[:port]`; ValueError if malformed."""
    parts = urlsplit(f"//{netloc}")
    if parts.path or parts.query or parts.fragment or parts.username is not None:
        raise ValueError(f"not a host: {netloc!r}")
    return (parts.hostname or ""), parts.port
