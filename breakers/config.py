"""A breaker's options, checked once when the breaker is built so the hot path never has to."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields


class BreakerConfigError(ValueError):
    """An option out of range; the message starts with the option's name."""


def _check(condition: bool, name: str, rule: str, value: object) -> None:
    if not condition:
        raise BreakerConfigError(f"{name}: {rule} (got {value!r})")


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _exception_classes(name: str, value: object) -> tuple[type[BaseException], ...]:
    """`value` as a tuple of exception classes (one class, or a list, set or tuple of them)."""
    classes = (value,) if isinstance(value, type) else value
    if isinstance(classes, tuple | list | set | frozenset) and all(
            isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        return tuple(classes)
    raise BreakerConfigError(f"{name}: must be a tuple of exception classes (got {value!r})")


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Every option of a circuit breaker. Durations are seconds; rates are fractions in (0, 1].

    The defaults suit a remote dependency called a few times a second or more: open when half of
    the last 100 calls (at least 20 of them) failed or were slow, or after 10 failures in a row.
    """

    window_size: int = 100
    """Outcomes of the last `window_size` calls kept for the failure and slow-call rates."""
    minimum_calls: int = 20
    """Rates are not evaluated until the window holds this many calls."""
    failure_rate_threshold: float = 0.5
    """Open when failed calls / calls in the window reach this."""
    consecutive_failures: int = 10
    """Open after this many failures in a row, whatever the window says; 0 disables."""
    slow_call_rate_threshold: float = 0.5
    """Open when slow calls / timed calls in the window reach this; 1.0 only when all are slow."""
    slow_call_duration: float | None = None
    """A fixed slow-call threshold. None (default): adaptive, from the latency quantile below."""
    adaptive_slow_quantile: float = 0.99
    """The adaptive threshold is this quantile of recent normal latencies ..."""
    adaptive_slow_multiplier: float = 3.0
    """... times this multiplier ..."""
    adaptive_slow_floor: float = 0.005
    """... never below this ...
    (so a dependency answering in microseconds does not make scheduler noise count as slow) ..."""
    adaptive_slow_ceiling: float = 10.0
    """... and never above this; it is also the threshold until enough latencies are known."""
    timing_sample_every: int = 8
    """One closed-state call in this many (a power of two) is timed, and the slow-call rate is
    the slow share of the timed calls in the window: reading the clock is most of a breaker's
    cost per call. Every call is timed when `call_timeout` is set, and outside the closed state.
    1 times every call."""
    latency_samples: int = 128
    """Latencies kept for the quantile (the most recent ones)."""
    latency_sample_every: int = 64
    """One call in this many (a power of two, at least `timing_sample_every`) contributes its
    latency; slow calls never do."""
    latency_warmup: int = 16
    """Samples needed before the adaptive threshold replaces the ceiling."""
    call_timeout: float | None = None
    """Async calls are cancelled after this (TimeoutError); a sync call that took longer still
    returns its result but is recorded as a timeout failure. None: no deadline."""
    record_exceptions: tuple[type[BaseException], ...] = (Exception,)
    """Exceptions that count as failures (one class, or a tuple, list or set of them)."""
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    """Exceptions that propagate without being recorded at all (a 404, a validation error);
    checked before `record_exceptions`. Exceptions in neither list count as successes."""
    failure_predicate: Callable[[BaseException], bool] | None = None
    """When set, decides alone whether a (not ignored) exception is a failure."""
    open_duration: float = 30.0
    """How long the breaker stays open the first time."""
    open_jitter: float = 0.2
    """Each open time is drawn uniformly within ± this fraction, so that many clients do not
    probe a recovering dependency in the same instant."""
    open_backoff: float = 2.0
    """A failed half-open or ramp phase reopens for the previous open time times this ..."""
    max_open_duration: float = 300.0
    """... up to this, jitter included."""
    half_open_max_concurrent: int = 1
    """Trial calls let through at the same time while half-open; the others are refused."""
    half_open_successes: int = 3
    """Successful trials needed to leave half-open; any failed trial reopens."""
    ramp_duration: float = 10.0
    """After half-open, the admitted fraction of calls rises linearly to 1 over this; 0 closes
    at once."""
    ramp_start_fraction: float = 0.1
    """The fraction of calls admitted when the ramp starts."""
    ramp_minimum_calls: int = 5
    """A ramp reopens on the failure or slow-call rate only once it has seen this many calls."""
    labels: dict[str, str] = field(default_factory=dict)
    """Free-form labels carried on every state-change event (and so onto detections)."""

    def __post_init__(self) -> None:
        for name in _INTEGERS:
            _check(_is_integer(getattr(self, name)), name, "must be an integer", getattr(self, name))
        for name in _NUMBERS:
            _check(_is_finite_number(getattr(self, name)), name, "must be a finite number",
                   getattr(self, name))
        for name in _OPTIONAL_NUMBERS:
            value = getattr(self, name)
            _check(value is None or _is_finite_number(value), name, "must be a finite number or None",
                   value)
        for name in ("record_exceptions", "ignore_exceptions"):
            object.__setattr__(self, name, _exception_classes(name, getattr(self, name)))
        _check(self.failure_predicate is None or callable(self.failure_predicate), "failure_predicate",
               "must be a function of the exception, or None", self.failure_predicate)
        _check(isinstance(self.labels, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()),
            "labels", "must be a dict of strings to strings", self.labels)
        _check(1 <= self.window_size <= 65_536, "window_size", "must be 1..65536", self.window_size)
        _check(1 <= self.minimum_calls <= self.window_size, "minimum_calls",
               "must be 1..window_size", self.minimum_calls)
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, name)
            _check(0 < value <= 1, name, "must be in (0, 1]", value)
        _check(self.consecutive_failures >= 0, "consecutive_failures", "must be >= 0",
               self.consecutive_failures)
        _check(self.slow_call_duration is None or self.slow_call_duration > 0, "slow_call_duration",
               "must be > 0 or None", self.slow_call_duration)
        _check(0 < self.adaptive_slow_quantile < 1, "adaptive_slow_quantile", "must be in (0, 1)",
               self.adaptive_slow_quantile)
        _check(self.adaptive_slow_multiplier >= 1, "adaptive_slow_multiplier", "must be >= 1",
               self.adaptive_slow_multiplier)
        _check(0 < self.adaptive_slow_floor <= self.adaptive_slow_ceiling, "adaptive_slow_floor",
               "must be > 0 and <= adaptive_slow_ceiling", self.adaptive_slow_floor)
        _check(self.latency_samples >= 8, "latency_samples", "must be >= 8", self.latency_samples)
        every = self.latency_sample_every
        _check(every >= 1 and every & (every - 1) == 0, "latency_sample_every",
               "must be a power of two", every)
        timing = self.timing_sample_every
        _check(timing >= 1 and timing & (timing - 1) == 0, "timing_sample_every", "must be a power of two",
               timing)
        _check(every >= timing, "latency_sample_every", "must be >= timing_sample_every", every)
        _check(1 <= self.latency_warmup <= self.latency_samples, "latency_warmup",
               "must be 1..latency_samples", self.latency_warmup)
        _check(self.call_timeout is None or self.call_timeout > 0, "call_timeout", "must be > 0 or None",
               self.call_timeout)
        for name in ("open_duration", "max_open_duration"):
            value = getattr(self, name)
            _check(value > 0, name, "must be > 0 and finite", value)
        _check(self.open_duration <= self.max_open_duration, "open_duration",
               "must be <= max_open_duration", self.open_duration)
        _check(0 <= self.open_jitter < 1, "open_jitter", "must be in [0, 1)", self.open_jitter)
        _check(self.open_backoff >= 1, "open_backoff", "must be >= 1", self.open_backoff)
        _check(self.half_open_max_concurrent >= 1, "half_open_max_concurrent", "must be >= 1",
               self.half_open_max_concurrent)
        _check(self.half_open_successes >= 1, "half_open_successes", "must be >= 1",
               self.half_open_successes)
        _check(self.ramp_duration >= 0, "ramp_duration", "must be >= 0", self.ramp_duration)
        _check(0 < self.ramp_start_fraction <= 1, "ramp_start_fraction", "must be in (0, 1]",
               self.ramp_start_fraction)
        _check(self.ramp_minimum_calls >= 1, "ramp_minimum_calls", "must be >= 1", self.ramp_minimum_calls)


def _options_annotated(annotation: str) -> tuple[str, ...]:
    """The options whose type is written `annotation`, so a new option cannot go unchecked."""
    return tuple(option.name for option in fields(BreakerConfig) if option.type == annotation)


_INTEGERS = _options_annotated("int")
_NUMBERS = _options_annotated("float")
_OPTIONAL_NUMBERS = _options_annotated("float | None")
