"""What every notifier shares: secrets from the environment and HTTP delivery with retry semantics.

Errors raised here carry the route name and the HTTP status only: never a URL, key or body,
because webhook URLs and routing keys are secrets and failures end up in workflow history.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from temporalio.exceptions import ApplicationError

from activities.url_errors import url_problem

MAX_RETRY_AFTER = timedelta(minutes=5)
"""The longest Retry-After honoured: a page held back longer than this is worse than a 429."""


def resolve_secret(env_name: str, what: str) -> str:
    """Read a secret from the worker's environment; name the variable, never the value, on error."""
    value = os.environ.get(env_name)
    if not value:
        raise ApplicationError(
            f"{what} is taken from env var {env_name}, which is not set on this worker",
            type="MissingSecret", non_retryable=True,
        )
    return value


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after(response: httpx.Response, now: datetime | None = None) -> timedelta | None:
    """The delay a Retry-After header asks for (seconds or an HTTP date), capped; None if absent."""
    header = response.headers.get("Retry-After")
    if header is None:
        return None
    header = header.strip()
    if header.isdigit():
        delay = timedelta(seconds=int(header))
    else:
        try:
            when = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = when - (now or datetime.now(UTC))
    if delay <= timedelta(0):
        return None
    return min(delay, MAX_RETRY_AFTER)


def raise_for_delivery(response: httpx.Response, route_name: str) -> None:
    """Retry 408/429/5xx (after Retry-After when given); other 4xx mean the request is wrong."""
    code = response.status_code
    if code < 400:
        return
    message = f"route {route_name!r} answered HTTP {code}"
    if code in (408, 429) or code >= 500:
        raise ApplicationError(message, type="DeliveryRetryable", next_retry_delay=retry_after(response))
    raise ApplicationError(message, type="DeliveryRejected", non_retryable=True)


async def post(
    http: httpx.AsyncClient, url: str, route_name: str, *, timeout: timedelta,
    content: bytes | None = None, json: Any = None, headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST once; a transport failure becomes a retryable error that does not echo the URL.

    A URL that cannot be requested at all (not http(s), a bad port or host: a webhook URL comes
    from the environment, unchecked) fails before anything is sent and stays so until the
    worker's environment changes: `DeliveryRejected`, non-retryable, with the reason but none
    of the URL pieces httpx's message quotes (they can be a password or the URL's secret path).
    """
    if (problem := url_problem(url)) is not None:
        raise ApplicationError(f"route {route_name!r} URL cannot be requested: {problem}",
                               type="DeliveryRejected", non_retryable=True)
    try:
        response = await http.post(url, content=content, json=json, headers=headers,
                                   timeout=timeout.total_seconds())
    except httpx.HTTPError as err:
        raise ApplicationError(
            f"route {route_name!r} unreachable: {type(err).__name__}", type="DeliveryRetryable",
        ) from None
    raise_for_delivery(response, route_name)
    return response
