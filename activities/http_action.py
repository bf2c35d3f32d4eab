"""The generic HTTP admin action, and the request and status rules every HTTP actuator shares."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.child_env import redact_values, secret_values
from activities.deps import ActivityDeps
from activities.heartbeat import heartbeating
from activities.idempotency import ActionStep, DryRun, action_spec, perform_once
from activities.url_errors import url_problem
from models.actions import (
    OUTCOME_UNKNOWN,
    ActionRequest,
    ActionResult,
    HttpAction,
    sendable_header_value,
)
from models.urls import redact_url

BODY_LIMIT = 2000
"""How much of a response body is kept in the result and the history (secret values of the
worker's environment redacted first, so an endpoint that echoes a token cannot put it there)."""


def header_credential(value: str) -> str | None:
    """`value` ready for an Authorization header: surrounding whitespace dropped (a secret
    written from a file usually ends in a newline, which no token holds), or None when nothing
    is left, or a tab (no token holds one), or what cannot be sent in a header (httpx cannot
    encode non-ASCII, and h11 refuses a control character with an error quoting the value)."""
    value = value.strip()
    return value if value and "\t" not in value and sendable_header_value(value) else None


def auth_headers(bearer_token_env: str | None, what: str) -> dict[str, str]:
    """An Authorization header from the named env var (read here, on the worker), or none.

    Only the variable's name ever appears in an error; the value stays in this header.
    """
    if bearer_token_env is None:
        return {}
    raw = os.environ.get(bearer_token_env, "")
    if not raw.strip():
        raise ApplicationError(f"{what} is taken from env var {bearer_token_env}, which is not set "
                               "on this worker", type="MissingSecret", non_retryable=True)
    token = header_credential(raw)
    if token is None:
        raise ApplicationError(f"{what} in env var {bearer_token_env} cannot be sent in an HTTP "
                               "header: it holds a control or non-ASCII character",
                               type="InvalidSecret", non_retryable=True)
    return {"Authorization": f"Bearer {token}"}


def sent_credential(response: httpx.Response) -> set[str]:
    """The credential the request behind `response` carried: its Authorization header's value
    after the scheme (the whole value if it has none); empty for a response built without one."""
    try:
        authorization = response.request.headers.get("Authorization", "")
    except RuntimeError:  # a response built without a request
        return set()
    credential = authorization.partition(" ")[2].strip() or authorization.strip()
    return {credential} if credential else set()


def scrub(text: str, response: httpx.Response) -> str:
    """`text` taken from `response`, with the worker's secret values and the credential the
    request carried redacted together, in one pass (`redact_values`).

    One pass over one set of values, so the text is the same whatever the credential's variable
    is called: a name `redact` recognises (`API_TOKEN`) and one it does not (`ADMIN_BEARER`) both
    give `Bearer [redacted]`, and a token that contains or overlaps another secret is never left
    half shown.
    """
    return redact_values(text, secret_values() | sent_credential(response))


def body_text(response: httpx.Response) -> str:
    """The response body with secrets redacted: the worker's secret-looking variables, and the
    credential this very request carried (an endpoint that echoes it, as many 401 pages do,
    must not put it in an error, the history or a log line, whatever its variable is named)."""
    return scrub(response.text, response)


def raise_for_action_status(response: httpx.Response, expected: list[int], what: str) -> None:
    """Accept `expected`; retry 408, 409, 429 and 5xx; any other status is permanent."""
    code = response.status_code
    if code in expected:
        return
    message = f"{what} answered HTTP {code}: {body_text(response)[:300]}"
    if code in (408, 409, 429) or code >= 500:
        raise ApplicationError(message, type="HttpActionRetryable")
    kind = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}.get(code, "HttpActionRejected")
    raise ApplicationError(message, type=kind, non_retryable=True)


async def send(
    http: httpx.AsyncClient, method: str, url: str, *, body: Any, timeout: float,
    headers: dict[str, str], what: str,
) -> httpx.Response:
    """One request with a JSON body; a transport failure is a retryable error naming the URL only
    (redacted, as everywhere it is shown: its credentials never reach a heartbeat, an error or the
    history).

    A URL httpx cannot request at all (a port past 65535, an unclosed bracket, a bad host),
    whatever let it through, fails before anything is sent, and no retry can change that: the
    non-retryable `InvalidUrl`, with the reason but not the pieces of the URL it quotes.
    """
    if (problem := url_problem(url)) is not None:
        raise ApplicationError(f"{what} cannot request {redact_url(url)}: {problem}",
                               type="InvalidUrl", non_retryable=True)
    shown = redact_url(url)
    try:
        return await heartbeating(
            http.request(method, url, json=body, headers=headers, timeout=timeout),
            f"{method} {shown}",
        )
    # Not chained (`from None`): Temporal records a cause's message in the failure, and the SDK
    # logs its traceback, while httpx's messages may quote what the server sent back, e.g. a
    # malformed header line echoing our Authorization header. The type name says enough.
    except httpx.ConnectError as err:
        raise ApplicationError(f"{what} unreachable at {shown}: {type(err).__name__}",
                               type="Unreachable") from None
    except httpx.HTTPError as err:
        raise ApplicationError(f"{what} at {shown} failed: {type(err).__name__}",
                               type="HttpActionUnknownOutcome") from None


def response_data(response: httpx.Response) -> dict[str, float | int | str | None]:
    """The status and (truncated) body of a response, for ActionResult.data."""
    return {"status": response.status_code, "body": body_text(response)[:BODY_LIMIT]}


class HttpActionActivities:
    """The `http` action: one admin request per step, resent only when that is safe."""

    def __init__(self, deps: ActivityDeps) -> None:
        self._deps = deps

    @activity.defn(name="http_action")
    async def http_action(self, request: ActionRequest) -> ActionResult:
        """Send the request once for this step; an unknown outcome is resent only if resend-safe."""
        spec = action_spec(request, HttpAction)
        target = f"{spec.method} {redact_url(spec.url)}"

        def dry_run() -> DryRun:
            body = "" if spec.body is None else f" with body {json.dumps(spec.body)}"
            return DryRun(f"would send {target}{body}, expecting {spec.expect_status}")

        async def perform(step: ActionStep) -> ActionResult:
            if step.progress.get("sent") and not spec.resend_safe():
                raise ApplicationError(
                    f"a previous attempt sent {target} and its outcome was not recorded; {spec.method} "
                    "is not resent unless the action sets idempotent: true", type=OUTCOME_UNKNOWN,
                    non_retryable=True,
                )
            headers = {**spec.headers, "Idempotency-Key": step.key,
                       **auth_headers(spec.bearer_token_env, f"action {request.action_name!r} token")}
            await step.record(sent=True)
            try:
                response = await send(self._deps.http, spec.method, spec.url, body=spec.body,
                                      timeout=spec.timeout.total_seconds(), headers=headers,
                                      what=f"action {request.action_name!r}")
            except ApplicationError as err:
                if err.type in ("Unreachable", "InvalidUrl"):  # nothing left the worker
                    await step.record(sent=False)
                raise
            raise_for_action_status(response, spec.expect_status, f"{target}")
            return ActionResult(action_name=request.action_name, kind=spec.kind, ok=True,
                                detail=f"{target} answered HTTP {response.status_code}",
                                data=response_data(response))

        return await perform_once(self._deps.ledger, request, dry_run, perform)
