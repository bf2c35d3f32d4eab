"""The circuit breaker: a state machine over a count-based window of call outcomes.

Every call takes the next number from one `itertools.count` (atomic under the GIL) when it
starts. A successful, not slow call in the closed state does nothing else: no lock, no attribute
written. Failures and slow calls are the exceptions, so only they are stored, in number order
whatever order the calls finish in, under a lock. A finished call is judged on the window of
the `window_size` numbers up to its own, so calls started after it (perhaps still running)
do not dilute its rates; the run of consecutive failures is the failures with consecutive
numbers.
States: closed -> open (fail fast for a jittered time) -> half_open (a few trial calls) ->
ramping (an admitted fraction of calls rising to 1) -> closed. Any failure while testing reopens,
for longer each time.
"""

from __future__ import annotations

import asyncio
import bisect
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

# How a call was admitted, which decides where its outcome is recorded (_HELD: while an outside
# authority holds the breaker, its outcome goes to that authority only).
_NORMAL, _TRIAL, _RAMP, _HELD = 0, 1, 2, 3
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
    imposed: bool = False
    """Made by an outside authority (`hold`/`release`, e.g. the fleet's breaker entity), not by
    this breaker's own logic or a local `trip`/`reset`: the authority already knows of it."""


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
    held_fraction: float | None = None
    """The admitted share of calls an outside authority holds the breaker at (see `hold`), if any."""


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

    __slots__ = ("__weakref__", "_calls", "_clock", "_closed", "_failures", "_held", "_held_credit",
                 "_held_outcome", "_held_retry_after", "_ignored",
                 "_latencies", "_latency_count", "_latency_fresh", "_latency_pos", "_listeners", "_lock",
                 "_look_closer_ns", "_n", "_open_base_s", "_open_until", "_ramp_calls",
                 "_ramp_consecutive", "_ramp_credit", "_ramp_failures", "_ramp_ns", "_ramp_slow",
                 "_ramp_started", "_recompute_every", "_rejected", "_rng", "_sample_mask", "_slow",
                 "_slow_threshold_ns", "_state", "_timeout_ns", "_timing_mask", "_trial_successes",
                 "_trials_in_flight", "_window_start", "config", "name")

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
        self._ignored: deque[int] = deque()
        self._ramp_consecutive = 0
        self._closed = True
        self._state = State.CLOSED
        self._timeout_ns = int(config.call_timeout * _NS) if config.call_timeout else 2**63 - 1
        fixed = config.slow_call_duration
        self._slow_threshold_ns = int((fixed if fixed is not None else config.adaptive_slow_ceiling) * _NS)
        self._look_closer_ns = min(self._slow_threshold_ns, self._timeout_ns)
        # Every call is timed when a deadline has to be checked; otherwise one in N is.
        self._timing_mask = 0 if config.call_timeout else config.timing_sample_every - 1
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
        self._held: float | None = None
        self._held_credit = 0.0
        self._held_retry_after = 0.0
        self._held_outcome: Callable[[Outcome], None] | None = None

    # --- public API -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (open becomes half_open lazily, on the next call after its time)."""
        return self._state

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` on every state change; it runs under the breaker's lock, so keep it quick."""
        with self._lock:
            self._listeners.append(listener)

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run `fn(*args, **kwargs)` through the breaker, or raise CircuitOpenError."""
        if self._closed:
            number = next(self._calls)
            if number & self._timing_mask:
                try:
                    return fn(*args, **kwargs)
                except BaseException as exc:
                    self._record_exception(exc, 0, _NORMAL, number)
                    raise
            clock = self._clock
            start = clock()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._record_exception(exc, clock() - start, _NORMAL, number)
                raise
            elapsed = clock() - start
            if elapsed > self._look_closer_ns:
                self._record_success(elapsed, _NORMAL, number)
            elif not number & self._sample_mask:
                self._sample_latency(elapsed)
            return result
        return self._call_admitted(fn, args, kwargs)

    async def call_async(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await `fn(*args, **kwargs)` through the breaker, cancelled after `call_timeout` if set."""
        if self._closed:
            kind, number = _NORMAL, next(self._calls)
        else:
            kind = self._admit()
            number = next(self._calls) if kind == _NORMAL else 0
        clock = self._clock
        timed = kind != _NORMAL or not number & self._timing_mask
        start = clock() if timed else 0
        deadline: asyncio.Timeout | None = None
        try:
            if self.config.call_timeout is None:
                result = await fn(*args, **kwargs)
            else:
                async with asyncio.timeout(self.config.call_timeout) as deadline:
                    result = await fn(*args, **kwargs)
        except BaseException as exc:
            if deadline is not None and deadline.expired():
                # Our own deadline cancelled it: a timeout, even if `ignore_exceptions` covers
                # TimeoutError (an OSError) or the predicate would say otherwise.
                self._record(kind, number, failed=True, slow=True, outcome=Outcome.TIMEOUT)
            else:
                self._record_exception(exc, clock() - start if timed else 0, kind, number)
            raise
        if timed:
            elapsed = clock() - start
            if kind != _NORMAL or elapsed > self._look_closer_ns:
                self._record_success(elapsed, kind, number)
            elif not number & self._sample_mask:
                self._sample_latency(elapsed)
        return result

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate a function (sync or async) so every call goes through this breaker.

        The wrapper takes the function's own parameters when they are plain positional ones
        (with or without defaults), so a call is forwarded without packing `*args, **kwargs`
        (about 50 ns a call); any other signature gets a `*args, **kwargs` wrapper.
        """
        if inspect.iscoroutinefunction(fn) and self.config.call_timeout is not None:
            breaker = self
            async_fn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def guarded_with_deadline(*args: Any, **kwargs: Any) -> Any:
                return await breaker.call_async(async_fn, *args, **kwargs)
            return cast(Callable[P, R], guarded_with_deadline)
        guarded = _guarded_wrapper(self, fn, inspect.iscoroutinefunction(fn))
        return cast(Callable[P, R], functools.wraps(fn)(guarded))

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

    @property
    def held_fraction(self) -> float | None:
        """The share of calls admitted while an outside authority holds the breaker; None when
        the breaker's own logic decides."""
        return self._held

    def hold(self, state: State, fraction: float, reason: str, *, retry_after: float = 0.0,
             on_outcome: Callable[[Outcome], None] | None = None) -> None:
        """Obey an outside authority (a fleet's durable breaker entity) instead of the local logic:
        show `state` and admit `fraction` of calls (evenly, by a credit counter; 0 refuses every
        call with `retry_after`) until `release`, `reset` or `trip`. The admitted calls' outcomes
        go to `on_outcome` only: the authority decides, not the local window."""
        if state is State.CLOSED:
            raise ValueError("hold: a closed breaker is not held; call release()")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"hold: fraction must be 0..1 (got {fraction})")
        with self._lock:
            if self._held is None:
                self._held_credit = 0.0
            self._held = fraction
            self._held_retry_after = max(0.0, retry_after)
            self._held_outcome = on_outcome
            if state is State.OPEN:
                self._open_until = self._clock() + int(self._held_retry_after * _NS)
            if self._state is not state:
                self._transition(state, reason, imposed=True)

    def release(self, reason: str) -> None:
        """End a `hold`: close with an empty window, and let the local logic decide again."""
        with self._lock:
            if self._held is not None:
                self._close(reason, imposed=True)

    def snapshot(self) -> BreakerSnapshot:
        """The counters, computed from the window under the lock."""
        with self._lock:
            now = self._last_call_number()
            calls, failures, slow, timed = self._window_counts(now)
            remaining = 0.0
            if self._state is State.OPEN:
                remaining = max(0.0, (self._open_until - self._clock()) / _NS)
            return BreakerSnapshot(
                name=self.name, state=self._state, calls_in_window=calls,
                failure_rate=failures / calls if calls else 0.0, slow_rate=slow / timed if timed else 0.0,
                consecutive_failures=self._run_ending_at(now),
                slow_threshold_s=self._slow_threshold_ns / _NS,
                rejected=self._rejected, open_remaining_s=remaining, held_fraction=self._held)

    # --- admission and recording (slow paths) ------------------------------------------------

    def _call_admitted(self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        kind = self._admit()
        number = next(self._calls) if kind == _NORMAL else 0
        start = self._clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record_exception(exc, self._clock() - start, kind, number)
            raise
        self._record_success(self._clock() - start, kind, number)
        return result

    def _admit(self) -> int:
        """Let a call through outside the fast path (as normal, trial or ramp call) or refuse it."""
        with self._lock:
            state = self._state
            if state is State.CLOSED:
                return _NORMAL
            if self._held is not None:
                self._held_credit += self._held
                if self._held_credit >= 1:
                    self._held_credit -= 1
                    return _HELD
                self._rejected += 1
                raise CircuitOpenError(self.name, state, self._held_retry_after if not self._held else 0.0)
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

    def _record_exception(self, exc: BaseException, elapsed: int, kind: int, number: int) -> None:
        outcome = classify(self.config, exc)
        if outcome is Outcome.IGNORED:
            with self._lock:
                if kind == _TRIAL:
                    self._trials_in_flight -= 1
                elif kind == _NORMAL and number > self._window_start:
                    _insert_in_order(self._ignored, number)  # it took a number: not a call
            return
        if outcome is Outcome.SUCCESS:
            self._record_success(elapsed, kind, number)
            return
        self._record(kind, number, failed=True, slow=elapsed > self._slow_threshold_ns, outcome=outcome)

    def _record_success(self, elapsed: int, kind: int, number: int) -> None:
        if elapsed > self._timeout_ns:
            self._record(kind, number, failed=True, slow=True, outcome=Outcome.TIMEOUT)
        elif elapsed > self._slow_threshold_ns:
            self._record(kind, number, failed=False, slow=True, outcome=Outcome.SLOW)
        elif kind != _NORMAL:
            self._record(kind, number, failed=False, slow=False, outcome=Outcome.SUCCESS)
        # A closed-state success that is not slow needs no record: its call number is enough.

    def _record(self, kind: int, number: int, *, failed: bool, slow: bool, outcome: Outcome) -> None:
        if kind == _HELD:
            report = self._held_outcome
            if report is not None:
                try:
                    report(outcome)
                except Exception:
                    _log.exception("breaker %s: held-outcome callback failed", self.name)
            return
        with self._lock:
            if kind == _NORMAL:
                self._record_closed(number, failed, slow, outcome)
            elif kind == _TRIAL:
                self._record_trial(failed, slow, outcome)
            else:
                self._record_ramp(failed, slow, outcome)

    def _record_closed(self, number: int, failed: bool, slow: bool, outcome: Outcome) -> None:
        if self._state is not State.CLOSED or number <= self._window_start:
            return  # started before the breaker opened; the outcome belongs to the old period
        if failed:
            _insert_in_order(self._failures, number)
        if slow:
            _insert_in_order(self._slow, number)
        config = self.config
        in_a_row = config.consecutive_failures
        if failed and in_a_row and self._run_through(number, in_a_row) >= in_a_row:
            self._open(f"{config.consecutive_failures} consecutive failures (last: {outcome.value})",
                       backoff=False)
            return
        calls, failures, slow_calls, timed = self._window_counts(number)
        if calls < config.minimum_calls:
            return
        if failed and failures / calls >= config.failure_rate_threshold:
            self._open(f"failure rate {failures}/{calls} (last: {outcome.value})", backoff=False)
        elif slow and timed and slow_calls / timed >= config.slow_call_rate_threshold:
            self._open(f"slow-call rate {slow_calls}/{timed} timed calls above "
                       f"{self._slow_threshold_ns / 1e6:.1f} ms", backoff=False)

    def _record_trial(self, failed: bool, slow: bool, outcome: Outcome) -> None:
        self._trials_in_flight -= 1
        if self._state is not State.HALF_OPEN or self._held is not None:
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
        if self._state is not State.RAMPING or self._held is not None:
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
        """The latest call number handed out (that call may still be running), read without
        taking one (count's repr is `count(<next number>)`)."""
        return int(repr(self._calls)[6:-1]) - 1

    def _window_counts(self, now: int) -> tuple[int, int, int, int]:
        """Calls, failures, slow calls and timed calls among the `window_size` call numbers up
        to `now` (the call being judged, or the latest for a snapshot). Timed calls are the
        numbers that are multiples of `timing_sample_every`."""
        latest = self._last_call_number()
        # Two windows are kept, so a call finishing up to `window_size` numbers late still
        # finds every outcome of its own window; one finishing later is judged on the part of
        # its window still kept, its calls and failures counted over the same numbers.
        forget = max(latest - 2 * self._n, self._window_start)
        for numbers in (self._failures, self._slow, self._ignored):
            while numbers and numbers[0] <= forget:
                numbers.popleft()
        after = min(max(now - self._n, forget), now)
        ignored = self._ignored
        ignored_calls = ignored_timed = 0
        if ignored:
            ignored_calls = _count_between(ignored, after, now)
            ignored_timed = sum(1 for number in ignored if after < number <= now
                                and not number & self._timing_mask)
        every = self._timing_mask + 1
        return (now - after - ignored_calls, _count_between(self._failures, after, now),
                _count_between(self._slow, after, now), now // every - after // every - ignored_timed)

    def _run_through(self, number: int, cap: int) -> int:
        """Length (up to `cap`) of the run of failures with consecutive numbers that holds the
        failure `number`; calls finishing out of order still make one run."""
        failures = self._failures
        index = bisect.bisect_left(failures, number)
        run, low, high = 1, index, index
        while run < cap and low > 0 and failures[low - 1] == failures[low] - 1:
            low -= 1
            run += 1
        last = len(failures) - 1
        while run < cap and high < last and failures[high + 1] == failures[high] + 1:
            high += 1
            run += 1
        return run

    def _run_ending_at(self, now: int) -> int:
        """Failures in a row up to call `now` (0 when call `now` did not fail)."""
        failures = self._failures
        run = 0
        while run < len(failures) and failures[-1 - run] == now - run:
            run += 1
        return run

    def _open(self, reason: str, *, backoff: bool) -> None:
        """Open for a jittered time. Trials still running keep their slots until they finish,
        so the next half-open phase never runs more than `half_open_max_concurrent` at once."""
        config = self.config
        base = min(self._open_base_s * config.open_backoff, config.max_open_duration) if backoff \
            else config.open_duration
        self._open_base_s = base
        spread = base * config.open_jitter
        # Jitter clipped at the cap: never above `max_open_duration`.
        duration = self._rng.uniform(base - spread, min(base + spread, config.max_open_duration))
        self._open_until = self._clock() + int(duration * _NS)
        self._trial_successes = 0
        self._held = None
        self._transition(State.OPEN, reason, open_for=duration)

    def _close(self, reason: str, *, imposed: bool = False) -> None:
        self._window_start = self._last_call_number()
        self._failures.clear()
        self._slow.clear()
        self._ignored.clear()
        self._open_base_s = self.config.open_duration
        self._held = None
        self._transition(State.CLOSED, reason, imposed=imposed)

    def _transition(self, to: State, reason: str, open_for: float | None = None, *,
                    imposed: bool = False) -> None:
        now = self._last_call_number()
        calls, failures, slow, timed = self._window_counts(now)
        consecutive = self._run_ending_at(now)
        if self._state is State.RAMPING and self._ramp_calls:
            calls, failures, slow = self._ramp_calls, self._ramp_failures, self._ramp_slow
            timed = calls
            consecutive = self._ramp_consecutive
        change = StateChange(
            breaker=self.name, from_state=self._state, to_state=to, reason=reason, at=datetime.now(UTC),
            failure_rate=failures / calls if calls else 0.0, slow_rate=slow / timed if timed else 0.0,
            calls_in_window=calls, consecutive_failures=consecutive,
            slow_threshold_s=self._slow_threshold_ns / _NS, open_for_s=open_for,
            labels=dict(self.config.labels), imposed=imposed)
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


def _insert_in_order(numbers: deque[int], number: int) -> None:
    """Store a call number keeping the queue sorted (calls may finish out of order)."""
    if not numbers or number > numbers[-1]:
        numbers.append(number)
    else:
        bisect.insort(numbers, number)


def _count_between(numbers: deque[int], after: int, up_to: int) -> int:
    """How many of the sorted `numbers` lie in (after, up_to]."""
    if not numbers or (numbers[0] > after and numbers[-1] <= up_to):
        return len(numbers)
    return bisect.bisect_right(numbers, up_to) - bisect.bisect_right(numbers, after)


# The closed-state fast path of `CircuitBreaker.call` and `call_async`, inlined into the
# decorator's wrapper (one Python frame less per call) and generated for the wrapped function's
# own parameters. Every name it uses, builtins included, starts with `_mk_`, so no parameter can
# shadow one; a function with a parameter named so gets the generic wrapper.
_WRAPPER_SOURCE = """
def _mk_build(_mk_breaker, _mk_fn, _mk_calls, _mk_clock, _mk_timing_mask, _mk_sample_mask,
              _mk_normal, _mk_next, _mk_base_exception{default_names}):
    {async_}def guarded({parameters}):
        if _mk_breaker._closed:
            _mk_number = _mk_next(_mk_calls)
            if _mk_number & _mk_timing_mask:
                try:
                    return {await_}_mk_fn({arguments})
                except _mk_base_exception as _mk_exc:
                    _mk_breaker._record_exception(_mk_exc, 0, _mk_normal, _mk_number)
                    raise
            _mk_start = _mk_clock()
            try:
                _mk_result = {await_}_mk_fn({arguments})
            except _mk_base_exception as _mk_exc:
                _mk_breaker._record_exception(_mk_exc, _mk_clock() - _mk_start, _mk_normal, _mk_number)
                raise
            _mk_elapsed = _mk_clock() - _mk_start
            if _mk_elapsed > _mk_breaker._look_closer_ns:
                _mk_breaker._record_success(_mk_elapsed, _mk_normal, _mk_number)
            elif not _mk_number & _mk_sample_mask:
                _mk_breaker._sample_latency(_mk_elapsed)
            return _mk_result
        return {await_}{admitted}
    return guarded
"""
_PLAIN_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _plain_parameters(fn: Callable[..., Any]) -> list[inspect.Parameter] | None:
    """A plain function's parameters when all are positional (defaults allowed) and none is
    named like the wrapper's own locals; None when the wrapper must take `*args, **kwargs`.

    Only functions qualify, read from their code: another callable's signature may be declared
    (`__signature__`) rather than the one it is really called with.
    """
    if not inspect.isfunction(fn) or hasattr(fn, "__signature__"):
        return None
    parameters = list(inspect.signature(fn, follow_wrapped=False).parameters.values())
    if all(p.kind in _PLAIN_KINDS and not p.name.startswith("_mk_") for p in parameters):
        return parameters
    return None


def _guarded_wrapper(breaker: CircuitBreaker, fn: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    """Build the decorator's wrapper of `fn` from `_WRAPPER_SOURCE`."""
    plain = _plain_parameters(fn)
    defaults: list[Any] = []
    if plain is None:
        parameters = arguments = "*args, **kwargs"
        packed = "args, kwargs"
    else:
        declared = []
        for p in plain:
            if p.default is inspect.Parameter.empty:
                declared.append(p.name)
            else:
                declared.append(f"{p.name}=_mk_default_{len(defaults)}")
                defaults.append(p.default)
        positional_only = sum(p.kind is inspect.Parameter.POSITIONAL_ONLY for p in plain)
        if positional_only:
            declared.insert(positional_only, "/")
        parameters = ", ".join(declared)
        arguments = ", ".join(p.name for p in plain)
        packed = f"({arguments}{',' if len(plain) == 1 else ''}), {{}}"
    admitted = (
        f"_mk_breaker.call_async(_mk_fn, {arguments})" if is_async
        else f"_mk_breaker._call_admitted(_mk_fn, {packed})"
    )
    source = _WRAPPER_SOURCE.format(
        default_names="".join(f", _mk_default_{i}" for i in range(len(defaults))),
        async_="async " if is_async else "",
        await_="await " if is_async else "",
        parameters=parameters,
        arguments=arguments,
        admitted=admitted,
    )
    namespace: dict[str, Any] = {}
    code = compile(source, "<breakers: decorator wrapper>", "exec")  # named so in tracebacks
    exec(code, {}, namespace)  # noqa: S102 - our own template; names come from a real signature
    build = cast(Callable[..., Callable[..., Any]], namespace["_mk_build"])
    return build(breaker, fn, breaker._calls, breaker._clock, breaker._timing_mask, breaker._sample_mask,
                 _NORMAL, next, BaseException, *defaults)


class Guard:
    """One call through a breaker as a `with` / `async with` block (see CircuitBreaker.guard)."""

    __slots__ = ("_breaker", "_kind", "_number", "_start")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._kind = _NORMAL
        self._number = 0
        self._start = -1

    def __enter__(self) -> Guard:
        breaker = self._breaker
        if breaker._closed:
            self._kind, self._number = _NORMAL, next(breaker._calls)
            timed = not self._number & breaker._timing_mask
        else:
            self._kind = breaker._admit()
            self._number = next(breaker._calls) if self._kind == _NORMAL else 0
            timed = True
        self._start = breaker._clock() if timed else -1
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        breaker, kind, number = self._breaker, self._kind, self._number
        elapsed = breaker._clock() - self._start if self._start >= 0 else 0
        if exc is not None:
            breaker._record_exception(exc, elapsed, kind, number)
        elif kind != _NORMAL or elapsed > breaker._look_closer_ns:
            breaker._record_success(elapsed, kind, number)
        elif self._start >= 0 and not number & breaker._sample_mask:
            breaker._sample_latency(elapsed)

    async def __aenter__(self) -> Guard:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)
