"""The circuit breaker: a state machine over a count-based window of call outcomes.

Every finished call takes the next number from one `itertools.count` (atomic under the GIL).
A successful, not slow call in the closed state does nothing else: no lock, no attribute
written. Failures and slow calls are the exceptions, so only they are stored, by call number,
under a lock; the window is "the last `window_size` call numbers", so its call count, failure
and slow counts, and the run of consecutive failures (failures with consecutive numbers) are
all exact, whatever the threads do.
States: closed -> open (fail fast for a jittered time) -> half_open (a few trial calls) ->
ramping (an admitted fraction of calls rising to 1) -> closed. Any failure while testing reopens,
for longer each time.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import random
import threading
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from breakers.config import BreakerConfig

P = ParamSpec("P")
R = TypeVar("R")
Clock = Callable[[], int]
"""Monotonic nanoseconds; `time.monotonic_ns` unless a test injects its own."""

_log = logging.getLogger("medkit.breakers")

# How a call was admitted, which decides where its outcome is recorded.
_NORMAL, _TRIAL, _RAMP = 0, 1, 2
_NS = 1_000_000_000


class State(StrEnum):
    """Where a breaker is in its cycle."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    RAMPING = "ramping"


class Outcome(StrEnum):
    """How a finished call was classified."""

    SUCCESS = "success"
    SLOW = "slow"
    TIMEOUT = "timeout"
    EXCEPTION = "exception"
    IGNORED = "ignored"


class CircuitOpenError(Exception):
    """The breaker refused the call without running it (open, or no trial/ramp slot free)."""

    def __init__(self, breaker: str, state: State, retry_after: float) -> None:
        super().__init__(f"circuit breaker {breaker!r} is {state.value}; retry in {retry_after:.3f}s")
        self.breaker = breaker
        self.state = state
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class StateChange:
    """One transition, as listeners (and so the gateway reporter) see it."""

    breaker: str
    from_state: State
    to_state: State
    reason: str
    at: datetime
    failure_rate: float
    slow_rate: float
    calls_in_window: int
    consecutive_failures: int
    slow_threshold_s: float
    open_for_s: float | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's counters at one moment, for metrics and tests."""

    name: str
    state: State
    calls_in_window: int
    failure_rate: float
    slow_rate: float
    consecutive_failures: int
    slow_threshold_s: float
    rejected: int
    open_remaining_s: float


Listener = Callable[[StateChange], None]


def classify(config: BreakerConfig, exc: BaseException) -> Outcome:
    """How a raised exception counts: ignored, a timeout, another failure, or a success.

    Cancellation and other BaseExceptions that are not Exceptions say nothing about the
    dependency, so they are ignored unless listed in `record_exceptions`.
    """
    if isinstance(exc, config.ignore_exceptions):
        return Outcome.IGNORED
    if config.failure_predicate is not None:
        failed = config.failure_predicate(exc)
    elif isinstance(exc, config.record_exceptions):
        failed = True
    elif not isinstance(exc, Exception):
        return Outcome.IGNORED
    else:
        failed = False
    if not failed:
        return Outcome.SUCCESS
    return Outcome.TIMEOUT if isinstance(exc, TimeoutError) else Outcome.EXCEPTION


class CircuitBreaker:
    """A named circuit breaker; call through `call`/`call_async`, as a decorator, or `guard()`."""

    __slots__ = ("__weakref__", "_calls", "_clock", "_closed", "_failures", "_last_failure", "_latencies",
                 "_latency_count", "_latency_fresh", "_latency_pos", "_listeners", "_lock",
                 "_look_closer_ns", "_n", "_open_base_s", "_open_until", "_ramp_calls",
                 "_ramp_consecutive", "_ramp_credit", "_ramp_failures", "_ramp_ns", "_ramp_slow",
                 "_ramp_started", "_recompute_every", "_rejected", "_rng", "_run", "_sample_mask", "_slow",
                 "_slow_threshold_ns", "_state", "_timeout_ns", "_trial_successes", "_trials_in_flight",
                 "_window_start", "config", "name")

    def __init__(self, name: str, config: BreakerConfig | None = None, *, clock: Clock = time.monotonic_ns,
                 rng: random.Random | None = None, listeners: Iterable[Listener] = ()) -> None:
        self.name = name
        self.config = config = config or BreakerConfig()
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._lock = threading.RLock()
        self._listeners: list[Listener] = list(listeners)
        self._n = config.window_size
        self._calls = itertools.count(1)
        self._window_start = 0
        self._failures: deque[int] = deque()
        self._slow: deque[int] = deque()
        self._last_failure = -2
        self._run = 0
        self._ramp_consecutive = 0
        self._closed = True
        self._state = State.CLOSED
        self._timeout_ns = int(config.call_timeout * _NS) if config.call_timeout else 2**63 - 1
        fixed = config.slow_call_duration
        self._slow_threshold_ns = int((fixed if fixed is not None else config.adaptive_slow_ceiling) * _NS)
        self._look_closer_ns = min(self._slow_threshold_ns, self._timeout_ns)
        self._sample_mask = config.latency_sample_every - 1
        self._latencies = array("q", bytes(8 * config.latency_samples))
        self._latency_pos = 0
        self._latency_count = 0
        self._latency_fresh = 0
        self._recompute_every = max(1, config.latency_samples // 8)
        self._open_base_s = config.open_duration
        self._open_until = 0
        self._trials_in_flight = 0
        self._trial_successes = 0
        self._ramp_started = 0
        self._ramp_ns = int(config.ramp_duration * _NS)
        self._ramp_credit = 0.0
        self._ramp_calls = self._ramp_failures = self._ramp_slow = 0
        self._rejected = 0

    # --- public API -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (open becomes half_open lazily, on the next call after its time)."""
        return self._state

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` on every state change; it runs under the breaker's lock, so keep it quick."""
        with self._lock:
            self._listeners.append(listener)

    def call(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Run `fn(*args, **kwargs)` through the breaker, or raise CircuitOpenError."""
        if self._closed:
            clock = self._clock
            start = clock()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._record_exception(exc, clock() - start, _NORMAL)
                raise
            elapsed = clock() - start
            if elapsed > self._look_closer_ns:
                self._record_success(elapsed, _NORMAL)
                return result
            if not next(self._calls) & self._sample_mask:
                self._sample_latency(elapsed)
            return result
        return self._call_admitted(fn, args, kwargs)

    async def call_async(self, fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any) -> R:
        """Await `fn(*args, **kwargs)` through the breaker, cancelled after `call_timeout` if set."""
        kind = _NORMAL if self._closed else self._admit()
        clock = self._clock
        start = clock()
        try:
            if self.config.call_timeout is None:
                result = await fn(*args, **kwargs)
            else:
                async with asyncio.timeout(self.config.call_timeout):
                    result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._record_exception(exc, clock() - start, kind)
            raise
        elapsed = clock() - start
        if kind != _NORMAL or elapsed > self._look_closer_ns:
            self._record_success(elapsed, kind)
            return result
        if not next(self._calls) & self._sample_mask:
            self._sample_latency(elapsed)
        return result

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate a function (sync or async) so every call goes through this breaker."""
        if inspect.iscoroutinefunction(fn):
            async_fn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                return await self.call_async(async_fn, *args, **kwargs)
            return cast(Callable[P, R], guarded_async)
        breaker = self
        clock = self._clock
        calls = self._calls
        sample_mask = self._sample_mask

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            # The same fast path as `call`, inlined: one Python frame less per call.
            if breaker._closed:
                start = clock()
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    breaker._record_exception(exc, clock() - start, _NORMAL)
                    raise
                elapsed = clock() - start
                if elapsed > breaker._look_closer_ns:
                    breaker._record_success(elapsed, _NORMAL)
                    return result
                if not next(calls) & sample_mask:
                    breaker._sample_latency(elapsed)
                return result
            return breaker._call_admitted(fn, args, kwargs)
        return guarded

    def guard(self) -> Guard:
        """A context manager (`with` or `async with`) around one call; raises CircuitOpenError
        on entry when refused. It cannot cancel its body: `call_timeout` only classifies."""
        return Guard(self)

    def trip(self, reason: str = "opened by hand") -> None:
        """Open now, whatever the window says (an operator's or a health check's decision)."""
        with self._lock:
            self._open(reason, backoff=False)

    def reset(self, reason: str = "closed by hand") -> None:
        """Close now and forget the window."""
        with self._lock:
            if self._state is not State.CLOSED:
                self._close(reason)

    def snapshot(self) -> BreakerSnapshot:
        """The counters, computed from the window under the lock."""
        with self._lock:
            now = self._last_call_number()
            calls, failures, slow = self._window_counts(now)
            remaining = 0.0
            if self._state is State.OPEN:
                remaining = max(0.0, (self._open_until - self._clock()) / _NS)
            return BreakerSnapshot(
                name=self.name, state=self._state, calls_in_window=calls,
                failure_rate=failures / calls if calls else 0.0, slow_rate=slow / calls if calls else 0.0,
                consecutive_failures=self._run if self._last_failure == now else 0,
                slow_threshold_s=self._slow_threshold_ns / _NS,
                rejected=self._rejected, open_remaining_s=remaining)

    # --- admission and recording (slow paths) ------------------------------------------------

    def _call_admitted(self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        kind = self._admit()
        start = self._clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record_exception(exc, self._clock() - start, kind)
            raise
        self._record_success(self._clock() - start, kind)
        return result

    def _admit(self) -> int:
        """Let a call through outside the fast path (as normal, trial or ramp call) or refuse it."""
        with self._lock:
            state = self._state
            if state is State.CLOSED:
                return _NORMAL
            now = self._clock()
            if state is State.OPEN:
                if now < self._open_until:
                    self._rejected += 1
                    raise CircuitOpenError(self.name, state, (self._open_until - now) / _NS)
                self._transition(State.HALF_OPEN, "open time elapsed")
                state = State.HALF_OPEN
            if state is State.HALF_OPEN:
                if self._trials_in_flight >= self.config.half_open_max_concurrent:
                    self._rejected += 1
                    raise CircuitOpenError(self.name, state, 0.0)
                self._trials_in_flight += 1
                return _TRIAL
            progress = (now - self._ramp_started) / self._ramp_ns
            if progress >= 1:
                self._close("ramp complete")
                return _NORMAL
            start = self.config.ramp_start_fraction
            self._ramp_credit += start + (1 - start) * progress
            if self._ramp_credit >= 1:
                self._ramp_credit -= 1
                return _RAMP
            self._rejected += 1
            raise CircuitOpenError(self.name, state, 0.0)

    def _record_fast_success(self, elapsed: int) -> None:
        """The closed fast path's bookkeeping, for callers that cannot inline it."""
        if not next(self._calls) & self._sample_mask:
            self._sample_latency(elapsed)

    def _record_exception(self, exc: BaseException, elapsed: int, kind: int) -> None:
        outcome = classify(self.config, exc)
        if outcome is Outcome.IGNORED:
            if kind == _TRIAL:
                with self._lock:
                    self._trials_in_flight -= 1
            return
        if outcome is Outcome.SUCCESS:
            self._record_success(elapsed, kind)
            return
        self._record(kind, failed=True, slow=elapsed > self._slow_threshold_ns, outcome=outcome)

    def _record_success(self, elapsed: int, kind: int) -> None:
        if elapsed > self._timeout_ns:
            self._record(kind, failed=True, slow=True, outcome=Outcome.TIMEOUT)
        elif elapsed > self._slow_threshold_ns:
            self._record(kind, failed=False, slow=True, outcome=Outcome.SLOW)
        else:
            self._record(kind, failed=False, slow=False, outcome=Outcome.SUCCESS)

    def _record(self, kind: int, *, failed: bool, slow: bool, outcome: Outcome) -> None:
        with self._lock:
            if kind == _NORMAL:
                self._record_closed(failed, slow, outcome)
            elif kind == _TRIAL:
                self._record_trial(failed, slow, outcome)
            else:
                self._record_ramp(failed, slow, outcome)

    def _record_closed(self, failed: bool, slow: bool, outcome: Outcome) -> None:
        if self._state is not State.CLOSED:
            return  # admitted before the breaker opened; the outcome belongs to the old period
        number = next(self._calls)
        if failed:
            self._run = self._run + 1 if number == self._last_failure + 1 else 1
            self._last_failure = number
            self._failures.append(number)
        if slow:
            self._slow.append(number)
        config = self.config
        in_a_row = config.consecutive_failures
        if failed and in_a_row and self._run >= in_a_row:
            self._open(f"{config.consecutive_failures} consecutive failures (last: {outcome.value})",
                       backoff=False)
            return
        calls, failures, slow_calls = self._window_counts(number)
        if calls < config.minimum_calls:
            return
        if failed and failures / calls >= config.failure_rate_threshold:
            self._open(f"failure rate {failures}/{calls} (last: {outcome.value})", backoff=False)
        elif slow and slow_calls / calls >= config.slow_call_rate_threshold:
            self._open(f"slow-call rate {slow_calls}/{calls} above "
                       f"{self._slow_threshold_ns / 1e6:.1f} ms", backoff=False)

    def _record_trial(self, failed: bool, slow: bool, outcome: Outcome) -> None:
        self._trials_in_flight -= 1
        if self._state is not State.HALF_OPEN:
            return
        if failed or slow:
            self._open(f"trial call {outcome.value}", backoff=True)
            return
        self._trial_successes += 1
        if self._trial_successes >= self.config.half_open_successes:
            if self._ramp_ns == 0:
                self._close(f"{self._trial_successes} trial calls succeeded")
            else:
                self._ramp_started = self._clock()
                self._ramp_credit = 0.0
                self._ramp_calls = self._ramp_failures = self._ramp_slow = 0
                self._ramp_consecutive = 0
                self._transition(State.RAMPING, f"{self._trial_successes} trial calls succeeded")

    def _record_ramp(self, failed: bool, slow: bool, outcome: Outcome) -> None:
        if self._state is not State.RAMPING:
            return
        config = self.config
        self._ramp_calls += 1
        self._ramp_failures += failed
        self._ramp_slow += slow
        self._ramp_consecutive = self._ramp_consecutive + 1 if failed else 0
        if failed and config.consecutive_failures and self._ramp_consecutive >= config.consecutive_failures:
            self._open(f"{self._ramp_consecutive} consecutive failures while ramping", backoff=True)
        elif self._ramp_calls >= config.ramp_minimum_calls:
            if self._ramp_failures / self._ramp_calls >= config.failure_rate_threshold:
                self._open(f"failure rate {self._ramp_failures}/{self._ramp_calls} while ramping "
                           f"(last: {outcome.value})", backoff=True)
            elif self._ramp_slow / self._ramp_calls >= config.slow_call_rate_threshold:
                self._open(f"slow-call rate {self._ramp_slow}/{self._ramp_calls} while ramping",
                           backoff=True)

    # --- transitions (called with the lock held) ---------------------------------------------

    def _last_call_number(self) -> int:
        """The number of the latest finished call, read without taking one (count's repr is
        `count(<next number>)`)."""
        return int(repr(self._calls)[6:-1]) - 1

    def _window_counts(self, now: int) -> tuple[int, int, int]:
        """Calls, failures and slow calls among the last `window_size` calls up to call `now`."""
        oldest_kept = now - self._n
        for numbers in (self._failures, self._slow):
            while numbers and numbers[0] <= oldest_kept:
                numbers.popleft()
        return min(self._n, now - self._window_start), len(self._failures), len(self._slow)

    def _open(self, reason: str, *, backoff: bool) -> None:
        config = self.config
        base = min(self._open_base_s * config.open_backoff, config.max_open_duration) if backoff \
            else config.open_duration
        self._open_base_s = base
        duration = base * (1 + self._rng.uniform(-config.open_jitter, config.open_jitter))
        self._open_until = self._clock() + int(duration * _NS)
        self._trials_in_flight = 0
        self._trial_successes = 0
        self._transition(State.OPEN, reason, open_for=duration)

    def _close(self, reason: str) -> None:
        self._window_start = self._last_call_number()
        self._failures.clear()
        self._slow.clear()
        self._run = 0
        self._open_base_s = self.config.open_duration
        self._transition(State.CLOSED, reason)

    def _transition(self, to: State, reason: str, open_for: float | None = None) -> None:
        now = self._last_call_number()
        calls, failures, slow = self._window_counts(now)
        consecutive = self._run if self._last_failure == now else 0
        if self._state is State.RAMPING and self._ramp_calls:
            calls, failures, slow = self._ramp_calls, self._ramp_failures, self._ramp_slow
            consecutive = self._ramp_consecutive
        change = StateChange(
            breaker=self.name, from_state=self._state, to_state=to, reason=reason, at=datetime.now(UTC),
            failure_rate=failures / calls if calls else 0.0, slow_rate=slow / calls if calls else 0.0,
            calls_in_window=calls, consecutive_failures=consecutive,
            slow_threshold_s=self._slow_threshold_ns / _NS, open_for_s=open_for,
            labels=dict(self.config.labels))
        self._state = to
        self._closed = to is State.CLOSED
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:
                _log.exception("breaker %s: state-change listener failed", self.name)

    # --- adaptive slow-call threshold -------------------------------------------------------

    def _sample_latency(self, elapsed: int) -> None:
        """Keep one normal call's latency; every few samples, recompute the slow threshold as
        multiplier x quantile, clamped to [floor, ceiling]. Slow calls never get here, so a
        degradation cannot drag the threshold up behind it."""
        config = self.config
        if config.slow_call_duration is not None:
            return
        i = self._latency_pos
        self._latencies[i] = elapsed
        self._latency_pos = i + 1 if i + 1 < config.latency_samples else 0
        if self._latency_count < config.latency_samples:
            self._latency_count += 1
        self._latency_fresh += 1
        if self._latency_count < config.latency_warmup or self._latency_fresh < min(
                self._recompute_every, config.latency_warmup):
            return
        self._latency_fresh = 0
        count = self._latency_count
        ordered = sorted(self._latencies[:count])
        quantile = ordered[min(count - 1, int(config.adaptive_slow_quantile * count))]
        threshold = quantile * config.adaptive_slow_multiplier
        threshold = max(config.adaptive_slow_floor * _NS, min(threshold, config.adaptive_slow_ceiling * _NS))
        self._slow_threshold_ns = int(threshold)
        self._look_closer_ns = min(self._slow_threshold_ns, self._timeout_ns)


class Guard:
    """One call through a breaker as a `with` / `async with` block (see CircuitBreaker.guard)."""

    __slots__ = ("_breaker", "_kind", "_start")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._kind = _NORMAL
        self._start = 0

    def __enter__(self) -> Guard:
        breaker = self._breaker
        self._kind = _NORMAL if breaker._closed else breaker._admit()
        self._start = breaker._clock()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        breaker = self._breaker
        elapsed = breaker._clock() - self._start
        if exc is None:
            if self._kind == _NORMAL and elapsed <= breaker._look_closer_ns:
                breaker._record_fast_success(elapsed)
            else:
                breaker._record_success(elapsed, self._kind)
        else:
            breaker._record_exception(exc, elapsed, self._kind)

    async def __aenter__(self) -> Guard:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)
