"""Common base model and field types used across medkit's vocabulary."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

_DURATION_RE = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

MAX_DURATION = timedelta(days=3650)
"""The longest duration a policy may hold (10 years). Far beyond any timer or window medkit sets,
and far below what Python's timedelta and Temporal's timers (Go durations, about 292 years) can
represent, so an absurd value is a clear policy error rather than an overflow at run time."""


def _seconds_in_range(seconds: float) -> float:
    """The number of seconds if it is a valid duration; a ValueError saying why if not."""
    if math.isnan(seconds):
        raise ValueError("a duration must be a number of seconds, not NaN")
    if seconds < 0:
        raise ValueError("a duration must not be negative")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError("a duration must be at most 3650d (10 years)")
    return seconds


def parse_duration(value: Any) -> Any:
    """Accept `250ms`, `30s`, `5m`, `2h`, `1d`, plain seconds, or anything pydantic's timedelta takes.

    Negative, NaN and absurdly large values are refused with a ValueError, which pydantic reports
    against the field, instead of overflowing `timedelta` with an OverflowError, which pydantic
    would let escape as a traceback.
    """
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '30s' or '5m'")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf if value > 0 else -math.inf
        return timedelta(seconds=_seconds_in_range(seconds))
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            number, unit = match.groups()
            return timedelta(seconds=_seconds_in_range(float(number) * _UNIT_SECONDS[unit or "s"]))
        if not value.strip().upper().startswith("P"):
            raise ValueError(
                f"invalid duration {value!r}: use a number with a unit, e.g. '250ms', '30s', '5m', '2h'"
            )
    return value


def _check_range(value: timedelta) -> timedelta:
    """The same bounds for durations pydantic parsed itself (ISO 8601 `P…` strings, timedeltas)."""
    _seconds_in_range(value.total_seconds())
    return value


def _format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(_check_range),
    PlainSerializer(_format_duration, return_type=str, when_used="json"),
]
"""A time span written as `30s`, `5m`, `250ms` or a number of seconds; never negative, and at
most `MAX_DURATION`."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
"""A service, action, probe or route name: letters, digits, `_`, `.`, `-`; at most 63 characters."""

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

SHOWN_OF_A_VALUE = 4
"""Characters of a refused `*_env` value the error shows: enough to recognise what was pasted
(`http`, `Bear`), too few to give away a secret (the error is printed and logged)."""

KEY_LIKE_LENGTH = 20
"""A name this long, with lower-case letters and digits and no `_`, is a pasted key (a
PagerDuty integration key is 32 of [a-z0-9]), not a variable's name."""


def _looks_like_a_key(value: str) -> bool:
    """Whether a value that is a valid identifier is more likely a pasted key or token: long,
    with lower-case letters and digits, without the `_` of a variable name."""
    return (len(value) >= KEY_LIKE_LENGTH and "_" not in value and any(c.islower() for c in value)
            and any(c.isdigit() for c in value))


def _env_name(value: str) -> str:
    shown = repr(value) if len(value) <= SHOWN_OF_A_VALUE else f"{value[:SHOWN_OF_A_VALUE]!r}..."
    if not _ENV_NAME_RE.match(value):
        raise ValueError(f"{shown} is not an environment variable name (letters, digits and _, "
                         "not starting with a digit): name the variable, never write its value")
    if _looks_like_a_key(value):
        raise ValueError(f"{shown} looks like a key or token, not an environment variable name "
                         "(long, lower-case letters and digits, no _): name the variable, never "
                         "write its value")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]
"""The NAME of an environment variable on the worker (for `*_env` fields: one holding a secret,
never the secret itself); a shell-style identifier, so a value pasted by mistake is refused
(and only its start is echoed in the error, in case it was a secret)."""


class MedkitModel(BaseModel):
    """Strict base: unknown fields are errors, so a typo in a policy file is reported, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)


def positive(duration: timedelta, field: str) -> timedelta:
    """Reject zero or negative durations with a message naming the field."""
    if duration <= timedelta(0):
        raise ValueError(f"{field} must be greater than zero")
    return duration
