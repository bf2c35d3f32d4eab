"""URLs in a policy: refused when they cannot be requested, and redacted wherever they are shown.

A URL of a service's policy (a probe's, an action's, a notification route's) travels in every
recovery's policy snapshot, that is in the workflow's input, in clear, so one carrying
credentials (`http://user:password@host`, `?token=...`) is refused (`PolicyUrl`). Only the
detectors' own URLs (an anomaly series' Prometheus, which no workflow carries) may hold them;
logs, the start-up banner, probe evidence and detection labels show any URL redacted.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AfterValidator, Field

REDACTED = "***"
"""What a secret part of a URL is replaced with."""

SECRET_KEY = re.compile(r"token|key|secret|pass|pwd|auth|sig|credential|session", re.IGNORECASE)
"""Query-string keys whose values are redacted (access_token, api_key, password, X-Amz-Signature...)."""

_USERINFO = re.compile(r"(?<=://).*@", re.DOTALL)
"""Everything from the scheme to the last `@`: in a URL that does not parse, a password may hold
the `/`, `#` or `@` that ended its authority early, so all of it up to the host is hidden."""


_QUOTED = re.compile(r"""\s*(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
"""A quoted (repr'd) piece of an error message: where urllib, httpx and idna repeat the URL."""


def url_error_reason(err: BaseException) -> str:
    """Why a URL cannot be requested (`Invalid port`, `Port could not be cast to integer value
    as`), without the pieces of the URL the message quotes, which may be a password (a `/` in it
    ends the authority early); the error's type name if nothing is left."""
    reason = _QUOTED.sub("", str(err)).strip().rstrip(":,").strip()
    return reason or type(err).__name__


def _requestable_url(value: str) -> str:
    """Refuse an http(s) URL that would fail before any request: bad host, port or brackets."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"not a valid URL ({url_error_reason(err)})") from None
    if not parts.hostname:
        raise ValueError("the URL names no host")
    if port == 0:
        raise ValueError("port 0 cannot be requested; the port must be 1-65535")
    if any(c.isspace() for c in value):
        raise ValueError("a URL cannot contain spaces")
    return value


RequestUrl = Annotated[str, Field(pattern=r"^https?://"), AfterValidator(_requestable_url)]
"""An http:// or https:// URL that can be requested: a host, and a port (if any) in 1-65535, so
a typo is refused when the policy is checked instead of failing every request at run time."""


def _credential_free(value: str) -> str:
    """Refuse a URL carrying user info or a secret-looking query value: the policy it is part of
    is stored in every recovery's workflow history, in clear. The error names what was found,
    never the value (the URL is shown redacted)."""
    parts = urlsplit(value)  # parses: `_requestable_url` ran first
    found = []
    if "@" in parts.netloc:
        found.append("user info (user:password@)")
    keys = sorted({key for key, _ in parse_qsl(parts.query, keep_blank_values=True)
                   if SECRET_KEY.search(key)})
    if keys:
        found.append(f"the secret-looking query parameter(s) {', '.join(keys)}")
    if found:
        raise ValueError(
            f"{redact_url(value)} carries {' and '.join(found)}: a service's policy is stored in "
            "every recovery's workflow history, in clear, so it must hold no credential (use an "
            "action's bearer_token_env, a webhook route's url_env, or a command probe with "
            "inherit_env)")
    return value


PolicyUrl = Annotated[RequestUrl, AfterValidator(_credential_free)]
"""A requestable URL (`RequestUrl`) without credentials, for a service's policy, which every
recovery carries in its workflow input."""


def _redact_query(query: str) -> str:
    """The query string with the values of secret-looking keys replaced."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(SECRET_KEY.search(key) for key, _ in pairs):
        return query
    return urlencode([(k, REDACTED if SECRET_KEY.search(k) else v) for k, v in pairs], safe="*")


def redact_url(url: str) -> str:
    """`url` as it may be shown: userinfo and secret-looking query values replaced by ***."""
    try:
        parts = urlsplit(url)
        # a port that is no number (`http://user:pa/ss@host`: the authority ended inside the
        # password) means the URL does not parse as meant
        _ = parts.port
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
        return urlunsplit(SplitResult(parts.scheme, netloc, parts.path,
                                      _redact_query(parts.query), parts.fragment))
    except ValueError:  # not parseable: still never show what looks like userinfo
        return _USERINFO.sub(f"{REDACTED}@", url.split("?", 1)[0])
