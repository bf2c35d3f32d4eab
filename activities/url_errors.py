"""URLs httpx cannot request at all, and how to say why without repeating the URL.

httpx refuses such a URL before any I/O (a bad port, an unclosed bracket, an invalid host name),
and its message quotes the offending piece: `Invalid port: 's3cret'` for
`http://user:s3cret/x@host`, where a `/` in the password ends the authority early. A detail or
error goes into workflow history and log lines, so only the unquoted text of the reason is kept.
"""

from __future__ import annotations

from typing import TypeGuard

import httpx

from models.urls import url_error_reason

URL_ERRORS = (httpx.InvalidURL, OverflowError, ValueError)
"""What httpx raises for a URL it cannot request at all (bad port, brackets, host), before any I/O."""


def url_error(err: BaseException) -> Exception | None:
    """The URL error in `err` (itself, or inside the ExceptionGroup anyio's connect raises).

    Not a UnicodeEncodeError: httpx raises that for a header value it cannot encode, which is
    no fault of the URL (httpx percent-encodes a URL's non-ASCII characters).
    """
    if _is_url_error(err):
        return err
    if isinstance(err, ExceptionGroup):
        found = err.subgroup(_is_url_error)
        return found.exceptions[0] if found is not None else None
    return None


def _is_url_error(err: BaseException) -> TypeGuard[Exception]:
    return isinstance(err, URL_ERRORS) and not isinstance(err, UnicodeEncodeError)


def url_problem(url: str) -> str | None:
    """Why httpx cannot request `url` at all, checked before any request; None when it can.

    Checking first, rather than catching what the request raises, keeps other errors of the
    same types (a ValueError from encoding a body, say) from being taken for the URL's.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as err:
        return url_error_reason(err)
    if parsed.scheme not in ("http", "https"):
        return "it is not an http:// or https:// URL"
    if not parsed.host:
        return "it names no host"
    if parsed.port is not None and not 0 < parsed.port < 65536:
        return "its port is not in 1-65535"
    return None
