"""ASGI middleware: bearer-token auth by path (before any body is read), the body size limit
as JSON, and request latency."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import AuthConfig, Role
from gateway.metrics import GatewayMetrics

ROLE_PREFIXES: tuple[tuple[str, Role], ...] = (
    ("/v1/alerts/", Role.DETECTOR),
    ("/v1/detections", Role.DETECTOR),
    ("/v1/series/", Role.DETECTOR),
    ("/v1/recoveries", Role.OPERATOR),
    ("/v1/dashboard", Role.OPERATOR),
    ("/v1/breakers/", Role.DETECTOR),
)
"""Which token each API path needs. Health (and health scores), readiness, metrics, the OpenAPI
spec and the dashboard's static page are open; the page's data comes from operator endpoints.
Breaker entities are the exception by method and suffix (see `accepted_roles`): reading one
takes either token, commanding one (`.../command`) the operator's."""


def required_role(path: str) -> Role | None:
    """The role a path needs, or None for the open endpoints."""
    if path.startswith("/v1/breakers/") and path.endswith("/command"):
        return Role.OPERATOR
    for prefix, role in ROLE_PREFIXES:
        if path.startswith(prefix):
            return role
    return None


def accepted_roles(method: str, path: str) -> tuple[Role, ...]:
    """Every role whose token may call the path with the method; empty for the open endpoints.
    A breaker entity's status is read by the library (detector token) and by operators."""
    role = required_role(path)
    if role is None:
        return ()
    if method == "GET" and path.startswith("/v1/breakers/"):
        return (Role.DETECTOR, Role.OPERATOR)
    return (role,)


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, if any."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class AuthMiddleware:
    """Rejects unauthenticated or wrong-role requests before the body is read or parsed."""

    def __init__(self, app: ASGIApp, auth: AuthConfig, metrics: GatewayMetrics) -> None:
        self.app = app
        self.auth = auth
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            roles = accepted_roles(scope["method"], scope["path"])
            if roles:
                role = roles[0]
                try:
                    self.auth.authorize(bearer_token(scope), *roles)
                except HTTPException as err:
                    reason = "unauthorized" if err.status_code == 401 else "forbidden"
                    self.metrics.rejected.labels(role.value, reason).inc()
                    await _send_json(send, err.status_code, {"detail": err.detail}, err.headers)
                    return
        await self.app(scope, receive, send)


def content_length(scope: Scope) -> int | None:
    """The request's declared Content-Length, or None when absent or not a number."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    """The request body limit, answered as JSON `{"detail": ...}` with 413 like every other
    error (FastAPI's own `max_body_size` answers in plain text): a declared Content-Length over
    the limit before the body is read, a chunked body once it has grown past it."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def too_large(self, size: str) -> str:
        """The 413's detail."""
        return f"request body {size} is larger than the limit of {self.max_body_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await _send_json(send, 413, {"detail": self.too_large(f"of {length} bytes")}, None)
            return
        received = 0

        async def receive_within_limit() -> Message:
            """The next body chunk; a 413 HTTPException (FastAPI answers it as JSON) once the
            body has grown past the limit."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, self.too_large("sent in chunks"))
            return message

        await self.app(scope, receive_within_limit, send)


class LatencyMiddleware:
    """Observes each request's duration under its route template (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - start)


async def _send_json(send: Send, status: int, body: dict[str, object],
                     headers: Mapping[str, str] | None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
