"""The breaker library: its state machine on an injected clock, classification, the adaptive
slow-call threshold, the registry, every calling style, behaviour under threads, and its state
changes reaching a real `medkit serve` as detections (a recovery on the real dev server).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from breakers import (
    BreakerConfig,
    BreakerConfigError,
    BreakerRegistry,
    CircuitBreaker,
    CircuitOpenError,
    EntityFollower,
    GatewayReporter,
    Outcome,
    State,
    StateChange,
    breaker,
    classify,
)
from tests.alertmanager_fixture import DETECTOR_TOKEN, running_gateway
from tests.conftest import WebhookReceiver, eventually, free_port
from tests.test_gateway import service_policy

SECOND = 1_000_000_000


class FakeClock:
    """Monotonic nanoseconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * SECOND)


class Boom(Exception):
    """The dependency failed."""


def make(clock: FakeClock, **options: Any) -> tuple[CircuitBreaker, list[StateChange]]:
    """A breaker on the fake clock, every call timed, no jitter unless asked, and the changes it
    reports."""
    changes: list[StateChange] = []
    config = BreakerConfig(**{"open_jitter": 0.0, "slow_call_duration": 1.0, "timing_sample_every": 1,
                              **options})
    return CircuitBreaker("dep", config, clock=clock, listeners=[changes.append]), changes


def ok(value: int = 1) -> int:
    return value


def fail() -> int:
    raise Boom("down")


def taking(clock: FakeClock, seconds: float) -> Any:
    """A dependency call that takes `seconds` of fake time."""
    def call() -> float:
        clock.advance(seconds)
        return seconds
    return call


def failures(b: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            b.call(fail)


def states(changes: list[StateChange]) -> list[str]:
    return [c.to_state.value for c in changes]


def test_failure_rate_over_the_count_window_opens_only_after_minimum_calls() -> None:
    clock = FakeClock()
    b, changes = make(clock, window_size=10, minimum_calls=6, failure_rate_threshold=0.5,
                      consecutive_failures=0)
    failures(b, 4)
    assert b.state is State.CLOSED  # 4 failures but fewer than 6 calls
    b.call(ok)
    assert b.state is State.CLOSED  # 4/5, still below the minimum
    b.call(ok)
    assert b.state is State.CLOSED  # successes never open
    failures(b, 1)  # 5/7
    assert b.state is State.OPEN
    assert changes[-1].reason.startswith("failure rate 5/7")
    assert changes[-1].failure_rate == pytest.approx(5 / 7)


def test_old_outcomes_leave_the_window() -> None:
    clock = FakeClock()
    b, _ = make(clock, window_size=4, minimum_calls=4, failure_rate_threshold=0.75, consecutive_failures=0)
    failures(b, 2)
    for _ in range(4):
        b.call(ok)
    failures(b, 2)  # the first two failures have left the 4-call window: 2/4
    assert b.state is State.CLOSED
    assert b.snapshot().failure_rate == 0.5
    failures(b, 1)
    assert b.state is State.OPEN


def test_calls_finishing_out_of_order_count_in_their_own_window() -> None:
    """Outcomes are kept in call-number order whatever order calls finish in: a late failure
    from an old call does not count in a later window, and failing concurrent calls still form
    a run of consecutive failures."""
    clock = FakeClock()
    b, _ = make(clock, window_size=4, minimum_calls=4, failure_rate_threshold=0.8, consecutive_failures=0)
    first = b.guard()
    first.__enter__()  # call 1 starts and hangs
    failures(b, 3)  # calls 2-4 fail
    b.call(ok)  # call 5 succeeds: the last four calls, 2-5, hold 3 failures (0.75)
    first.__exit__(Boom, Boom("late"), None)  # call 1 fails at last: outside the window of 2-5
    assert b.state is State.CLOSED
    assert b.snapshot().failure_rate == 0.75

    b, changes = make(clock, window_size=100, minimum_calls=100, consecutive_failures=3)
    for _ in range(2):  # two concurrent callers; the second call finishes first
        a, c = b.guard(), b.guard()
        a.__enter__()
        c.__enter__()
        c.__exit__(Boom, Boom("down"), None)
        a.__exit__(Boom, Boom("down"), None)
    assert b.state is State.OPEN  # calls 1-4 all failed: 3 in a row by number
    assert changes[-1].reason == "3 consecutive failures (last: exception)"


def test_a_call_finishing_late_is_judged_on_every_outcome_of_its_own_window() -> None:
    """A call that finishes after `window_size` newer calls started still sees the failures of
    its own window (they were forgotten before, and the rate was diluted by their calls); one
    finishing later still is judged on the part of its window kept, calls and failures alike."""
    clock = FakeClock()
    b, changes = make(clock, window_size=10, minimum_calls=10, failure_rate_threshold=0.6,
                      consecutive_failures=0)
    for _ in range(5):
        b.call(ok)  # calls 1-5
    failures(b, 5)  # calls 6-10: 5/10, closed
    for _ in range(4):
        b.call(ok)  # calls 11-14
    late = b.guard()
    late.__enter__()  # call 15 starts and hangs
    for _ in range(9):
        b.call(ok)  # calls 16-24
    failures(b, 1)  # call 25: its window 16-25 holds 1 failure
    assert b.state is State.CLOSED
    late.__exit__(Boom, Boom("late"), None)  # call 15: its window 6-15 holds 6 failures
    assert b.state is State.OPEN
    assert changes[-1].reason == "failure rate 6/10 (last: exception)"

    b, _ = make(clock, window_size=10, minimum_calls=4, failure_rate_threshold=0.6,
                consecutive_failures=0)
    failures(b, 3)  # calls 1-3
    late = b.guard()
    late.__enter__()  # call 4 hangs
    for _ in range(5):
        b.call(ok)  # calls 5-9
    for _ in range(15):
        b.call(ok)  # calls 10-24: call 4's window (0, 4] is older than the two kept
    failures(b, 1)  # call 25 prunes what is older than call 5
    late.__exit__(Boom, Boom("late"), None)  # nothing of its window is kept: no decision
    assert b.state is State.CLOSED
    assert b.snapshot().calls_in_window == 10


def test_calls_still_running_do_not_dilute_the_failure_rate() -> None:
    """90 calls in flight, all failing, finish in order: the breaker opens at the 50th failure
    (minimum_calls), as for one caller, not when the failures outnumber the calls still running."""
    clock = FakeClock()
    b, changes = make(clock, window_size=100, minimum_calls=50, failure_rate_threshold=0.8,
                      consecutive_failures=0)
    calls = [b.guard() for _ in range(90)]
    for call in calls:
        call.__enter__()
    finished = 0
    for call in calls:
        call.__exit__(Boom, Boom("down"), None)
        finished += 1
        if b.state is State.OPEN:
            break
    assert finished == 50
    assert changes[-1].reason == "failure rate 50/50 (last: exception)"


def test_consecutive_failures_open_before_the_rate_could() -> None:
    clock = FakeClock()
    b, changes = make(clock, window_size=100, minimum_calls=100, consecutive_failures=3)
    failures(b, 2)
    b.call(ok)
    failures(b, 2)
    assert b.state is State.CLOSED
    failures(b, 1)
    assert b.state is State.OPEN
    assert changes[-1].reason == "3 consecutive failures (last: exception)"


def test_open_refuses_then_half_open_limits_trials_then_ramp_then_closed() -> None:
    clock = FakeClock()
    b, changes = make(clock, consecutive_failures=2, open_duration=10.0, half_open_max_concurrent=2,
                      half_open_successes=3, ramp_duration=4.0, ramp_start_fraction=0.25)
    failures(b, 2)
    ran: list[int] = []
    with pytest.raises(CircuitOpenError) as refused:
        b.call(ran.append, 1)
    assert ran == []
    assert refused.value.retry_after == pytest.approx(10.0)
    assert refused.value.state is State.OPEN
    clock.advance(9.9)
    with pytest.raises(CircuitOpenError):
        b.call(ok)

    clock.advance(0.1)
    first, second = b.guard(), b.guard()
    first.__enter__()
    assert b.state is State.HALF_OPEN
    second.__enter__()
    with pytest.raises(CircuitOpenError):  # both trial slots are taken
        b.call(ok)
    first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert b.state is State.HALF_OPEN  # 2 of 3 successes
    b.call(ok)
    assert b.state is State.RAMPING

    def admitted_of_100() -> int:
        admitted = 0
        for _ in range(100):
            with contextlib.suppress(CircuitOpenError):
                admitted += b.call(ok)
        return admitted

    at_start = admitted_of_100()
    assert 24 <= at_start <= 26  # a quarter at the start of the ramp
    clock.advance(2.0)
    half_way = admitted_of_100()
    assert 61 <= half_way <= 64  # 0.25 + 0.75 x 0.5 = 62.5 %
    clock.advance(2.0)
    b.call(ok)
    assert b.state is State.CLOSED
    assert states(changes) == ["open", "half_open", "ramping", "closed"]
    assert b.snapshot().calls_in_window == 1  # closing starts a fresh window
    assert b.snapshot().rejected == 2 + 1 + (100 - at_start) + (100 - half_way)


def test_a_failed_trial_reopens_for_longer_until_the_cap_and_closing_resets_it() -> None:
    clock = FakeClock()
    b, changes = make(clock, consecutive_failures=1, open_duration=1.0, open_backoff=3.0,
                      max_open_duration=5.0, half_open_successes=1, ramp_duration=0.0)
    failures(b, 1)
    opened = []
    for _ in range(3):
        opened.append(b.snapshot().open_remaining_s)
        clock.advance(opened[-1])
        failures(b, 1)  # the trial fails
    assert opened == [1.0, 3.0, 5.0]
    assert b.snapshot().open_remaining_s == 5.0
    assert changes[-1].reason == "trial call exception"
    clock.advance(5.0)
    b.call(ok)
    assert b.state is State.CLOSED  # ramp_duration 0: straight to closed
    failures(b, 1)
    assert b.snapshot().open_remaining_s == 1.0


def test_failures_while_ramping_reopen_with_backoff() -> None:
    clock = FakeClock()
    b, changes = make(clock, consecutive_failures=0, minimum_calls=1, open_duration=2.0,
                      half_open_successes=1, ramp_duration=10.0, ramp_start_fraction=1.0,
                      ramp_minimum_calls=4, failure_rate_threshold=0.5)
    failures(b, 1)
    clock.advance(2.0)
    b.call(ok)
    assert b.state is State.RAMPING
    b.call(ok)
    b.call(ok)
    failures(b, 1)
    assert b.state is State.RAMPING  # 1/3: below the ramp's minimum calls
    failures(b, 1)
    assert b.state is State.OPEN
    assert changes[-1].reason.startswith("failure rate 2/4 while ramping")
    assert b.snapshot().open_remaining_s == 4.0


def test_a_hold_overrides_the_local_logic_until_released_or_tripped() -> None:
    clock = FakeClock()
    b, changes = make(clock, consecutive_failures=2, open_duration=10)
    seen: list[Outcome] = []
    b.hold(State.OPEN, 0.0, "fleet says open", retry_after=7.5, on_outcome=seen.append)
    with pytest.raises(CircuitOpenError) as refused:
        b.call(ok)
    assert (refused.value.state, refused.value.retry_after) == (State.OPEN, 7.5)
    clock.advance(3600)  # a held open time does not end by itself
    with pytest.raises(CircuitOpenError):
        b.call(ok)

    b.hold(State.RAMPING, 0.25, "fleet ramps at 25%", on_outcome=seen.append)
    admitted = 0
    for n in range(8):
        with contextlib.suppress(CircuitOpenError):
            b.call(ok if n % 4 else fail)
            admitted += 1
    assert admitted == 2 and seen == [Outcome.SUCCESS, Outcome.SUCCESS]
    b.hold(State.RAMPING, 1.0, "fleet ramps at 100%", on_outcome=seen.append)
    failures(b, 3)  # held: the local window does not open it, the outcomes go to the holder
    assert b.state is State.RAMPING and seen[-3:] == [Outcome.EXCEPTION] * 3
    assert b.snapshot().held_fraction == 1.0

    b.release("fleet closed")
    assert (b.state, b.snapshot().held_fraction) == (State.CLOSED, None)
    failures(b, 2)
    assert b.state is State.OPEN  # the local logic decides again
    b.hold(State.HALF_OPEN, 0.5, "fleet half-open")
    b.trip("operator on this host")
    assert b.snapshot().held_fraction is None  # a local trip ends the hold
    assert states(changes) == ["open", "ramping", "closed", "open", "half_open", "open"]
    with pytest.raises(ValueError, match="release"):
        b.hold(State.CLOSED, 1.0, "closed is not held")


def test_jitter_spreads_open_times_within_bounds() -> None:
    clock = FakeClock()
    seen = set()
    for _ in range(20):
        b, _ = make(clock, consecutive_failures=1, open_duration=10.0, open_jitter=0.2)
        failures(b, 1)
        remaining = b.snapshot().open_remaining_s
        assert 8.0 <= remaining <= 12.0
        seen.add(round(remaining, 3))
    assert len(seen) > 1


def test_backed_off_open_times_stay_jittered_and_never_pass_the_cap() -> None:
    clock = FakeClock()
    capped = []
    for _ in range(20):
        b, _ = make(clock, consecutive_failures=1, open_duration=10.0, open_jitter=0.2, open_backoff=2.0,
                    max_open_duration=30.0, half_open_successes=1)
        failures(b, 1)
        for _ in range(3):  # 10 -> 20 -> 30 (capped) -> 30 (capped)
            clock.advance(b.snapshot().open_remaining_s + 1e-6)
            failures(b, 1)  # the trial fails
        capped.append(b.snapshot().open_remaining_s)
    # At the cap the jitter is clipped: drawn from [30 - 0.2 x 30, 30], never above the cap.
    assert all(24.0 <= remaining <= 30.0 for remaining in capped)
    assert len({round(remaining, 3) for remaining in capped}) > 1


def test_classification_of_exceptions_timeouts_and_slow_calls() -> None:
    config = BreakerConfig(record_exceptions=(OSError,), ignore_exceptions=(FileNotFoundError,))
    assert classify(config, ConnectionError()) is Outcome.EXCEPTION
    assert classify(config, TimeoutError()) is Outcome.TIMEOUT  # an OSError, and a timeout
    assert classify(config, FileNotFoundError()) is Outcome.IGNORED
    assert classify(config, ValueError()) is Outcome.SUCCESS  # the dependency answered
    assert classify(config, asyncio.CancelledError()) is Outcome.IGNORED
    picky = BreakerConfig(failure_predicate=lambda e: "503" in str(e))
    assert classify(picky, RuntimeError("HTTP 503")) is Outcome.EXCEPTION
    assert classify(picky, RuntimeError("HTTP 404")) is Outcome.SUCCESS

    clock = FakeClock()
    b, changes = make(clock, consecutive_failures=1, ignore_exceptions=(KeyError,),
                      slow_call_duration=1.0, call_timeout=2.0, minimum_calls=1,
                      slow_call_rate_threshold=1.0)
    empty: dict[str, int] = {}
    for _ in range(3):
        with pytest.raises(KeyError):
            b.call(empty.__getitem__, "x")
    assert b.snapshot().calls_in_window == 0  # ignored: neither success nor failure
    assert b.call(taking(clock, 1.5)) == 1.5  # a slow success: 1 slow of 1 call reaches 1.0
    assert b.state is State.OPEN and changes[-1].reason.startswith("slow-call rate 1/1")
    b.reset()
    assert b.call(taking(clock, 2.5)) == 2.5  # past the deadline: the result, but a timeout failure
    assert b.state is State.OPEN
    assert changes[-1].reason == "1 consecutive failures (last: timeout)"


async def test_async_call_timeout_cancels_and_counts_as_timeout() -> None:
    b = CircuitBreaker("slow-async", BreakerConfig(call_timeout=0.05, consecutive_failures=2))
    cancelled: list[bool] = []

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    decorated = b(hangs)
    with pytest.raises(TimeoutError):
        await b.call_async(hangs)
    with pytest.raises(TimeoutError):
        await decorated()
    assert cancelled == [True, True]
    assert b.state is State.OPEN


async def test_its_own_deadline_is_a_timeout_even_when_timeouts_are_ignored() -> None:
    """TimeoutError is an OSError: ignoring OSError must not hide calls the breaker itself
    cancelled at `call_timeout`."""
    b = CircuitBreaker("deadline", BreakerConfig(call_timeout=0.05, consecutive_failures=3,
                                                 ignore_exceptions=(OSError,)))

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def refused() -> None:
        raise ConnectionRefusedError("an OSError the caller chose to ignore")

    with pytest.raises(ConnectionRefusedError):
        await b.call_async(refused)
    assert b.snapshot().calls_in_window == 0
    for _ in range(3):
        with pytest.raises(TimeoutError):
            await b.call_async(hangs)
    assert b.state is State.OPEN


def test_adaptive_slow_threshold_follows_normal_latency_and_ignores_slow_calls() -> None:
    clock = FakeClock()
    b, changes = make(clock, slow_call_duration=None, latency_sample_every=1, latency_samples=16,
                      latency_warmup=16, adaptive_slow_quantile=0.9, adaptive_slow_multiplier=3.0,
                      adaptive_slow_floor=0.001, adaptive_slow_ceiling=5.0, window_size=20,
                      minimum_calls=10, slow_call_rate_threshold=0.5, consecutive_failures=0)
    assert b.snapshot().slow_threshold_s == 5.0  # the ceiling until enough latencies are known
    for _ in range(16):
        b.call(taking(clock, 0.010))
    assert b.snapshot().slow_threshold_s == pytest.approx(0.030)
    for _ in range(16):
        b.call(taking(clock, 0.020))  # twice as slow: not slow yet, and the baseline follows
    assert b.snapshot().slow_rate == 0.0
    assert b.snapshot().slow_threshold_s == pytest.approx(0.060)
    for _ in range(9):
        b.call(taking(clock, 0.500))  # 25x: slow; the threshold must not chase them
    assert b.snapshot().slow_threshold_s == pytest.approx(0.060)
    assert b.state is State.CLOSED  # 9/20 slow
    b.call(taking(clock, 0.500))
    assert b.state is State.OPEN
    assert changes[-1].reason == "slow-call rate 10/20 timed calls above 60.0 ms"


def test_sampled_timing_reads_the_clock_for_one_call_in_n_and_still_catches_slow_calls() -> None:
    clock = FakeClock()
    reads = 0

    def counting_clock() -> int:
        nonlocal reads
        reads += 1
        return clock.now

    changes: list[StateChange] = []
    b = CircuitBreaker("sampled", BreakerConfig(timing_sample_every=4, slow_call_duration=1.0, window_size=40,
                                                minimum_calls=20, slow_call_rate_threshold=0.5,
                                                consecutive_failures=3),
                       clock=counting_clock, listeners=[changes.append])
    for _ in range(100):
        b.call(ok)
    assert reads == 2 * 25  # start and end of every fourth call
    for _ in range(19):
        b.call(taking(clock, 2.0))  # every call slow; only the timed ones are known to be
    assert b.state is State.CLOSED
    snapshot = b.snapshot()
    assert snapshot.slow_rate == pytest.approx(4 / 10)  # 4 slow of the window's 10 timed calls
    b.call(taking(clock, 2.0))
    assert b.state is State.OPEN
    assert changes[-1].reason == "slow-call rate 5/10 timed calls above 1000.0 ms"

    b.reset()
    failures(b, 3)  # failures are recorded whether or not their call was timed
    assert b.state is State.OPEN
    assert changes[-1].reason == "3 consecutive failures (last: exception)"


def test_config_errors_name_the_option() -> None:
    with pytest.raises(BreakerConfigError, match=r"^window_size: must be 1\.\.65536 \(got 0\)"):
        BreakerConfig(window_size=0)
    with pytest.raises(BreakerConfigError, match=r"^minimum_calls:"):
        BreakerConfig(window_size=5, minimum_calls=6)
    with pytest.raises(BreakerConfigError, match=r"^latency_sample_every: must be a power of two"):
        BreakerConfig(latency_sample_every=6)
    with pytest.raises(BreakerConfigError, match=r"^open_jitter:"):
        BreakerConfig(open_jitter=1.0)


@pytest.mark.parametrize(("option", "value", "message"), [
    ("window_size", "100", "must be an integer"),
    ("window_size", 50.5, "must be an integer"),
    ("half_open_successes", 2.5, "must be an integer"),
    ("consecutive_failures", True, "must be an integer"),
    ("call_timeout", float("inf"), "must be a finite number or None"),
    ("slow_call_duration", float("nan"), "must be a finite number or None"),
    ("ramp_duration", float("inf"), "must be a finite number"),
    ("adaptive_slow_ceiling", float("inf"), "must be a finite number"),
    ("failure_rate_threshold", "0.5", "must be a finite number"),
    ("record_exceptions", (Boom, "ValueError"), "must be a tuple of exception classes"),
    ("ignore_exceptions", KeyError(), "must be a tuple of exception classes"),
    ("failure_predicate", "503", "must be a function of the exception, or None"),
    ("labels", None, "must be a dict of strings to strings"),
    ("labels", {"team": 7}, "must be a dict of strings to strings"),
])
def test_config_refuses_wrong_types_naming_the_option(option: str, value: Any, message: str) -> None:
    """A wrong type fails when the config is built, naming the option, not later inside a call
    (an infinite duration used to overflow when the breaker was built, a list of exceptions to
    make every failing call raise TypeError instead of the real error)."""
    with pytest.raises(BreakerConfigError, match=f"^{option}: {message} \\(got "):
        BreakerConfig(**{option: value})


def test_exception_options_take_one_class_or_any_collection_of_classes() -> None:
    config = BreakerConfig(record_exceptions=[Boom], ignore_exceptions=KeyError)
    assert config.record_exceptions == (Boom,) and config.ignore_exceptions == (KeyError,)
    b = CircuitBreaker("listed", config)
    with pytest.raises(Boom):  # the real error, not a TypeError from isinstance
        b.call(fail)
    assert b.snapshot().failure_rate == 1.0


def test_registry_shares_breakers_by_name_and_reaches_later_ones_with_listeners() -> None:
    clock = FakeClock()
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=1, open_jitter=0.0), clock=clock)
    seen: list[str] = []
    registry.add_listener(lambda change: seen.append(f"{change.breaker}:{change.to_state}"))
    payments = registry.get("payments")
    assert registry.get("payments") is payments
    with pytest.raises(BreakerConfigError, match="already exists with other options"):
        registry.get("payments", BreakerConfig(window_size=30))
    search = registry.get("search", BreakerConfig(consecutive_failures=2))
    failures(payments, 1)
    failures(search, 2)
    assert seen == ["payments:open", "search:open"]
    assert "search" in registry and registry.names() == ["payments", "search"]
    assert [s.state for s in registry.snapshots()] == [State.OPEN, State.OPEN]
    name = f"process-wide-{uuid.uuid4().hex[:6]}"
    assert breaker(name) is breaker(name)


def test_decorator_and_guard_sync() -> None:
    b = CircuitBreaker("styles", BreakerConfig(consecutive_failures=2, open_duration=60))
    calls: list[int] = []

    @b
    def double(x: int) -> int:
        """Doubles."""
        calls.append(x)
        if x < 0:
            raise Boom(str(x))
        return 2 * x

    assert double(3) == 6 and double.__name__ == "double" and double.__doc__ == "Doubles."
    with pytest.raises(Boom):
        double(-1)
    with pytest.raises(Boom), b.guard():
        raise Boom("in the block")
    assert b.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        double(4)
    with pytest.raises(CircuitOpenError), b.guard():
        calls.append(99)
    assert calls == [3, -1]
    b.reset()
    with b.guard():
        calls.append(5)
    assert b.snapshot().calls_in_window == 1 and b.state is State.CLOSED


async def test_decorator_and_guard_async() -> None:
    b = CircuitBreaker("styles-async", BreakerConfig(consecutive_failures=2, open_duration=60))

    @b
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        if x < 0:
            raise Boom(str(x))
        return x + 1

    assert await fetch(1) == 2 and fetch.__name__ == "fetch"
    with pytest.raises(Boom):
        await fetch(-1)
    with pytest.raises(Boom):
        async with b.guard():
            raise Boom("in the block")
    assert b.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        await fetch(1)
    with pytest.raises(CircuitOpenError):
        async with b.guard():
            pytest.fail("the body must not run while open")
    b.reset()
    async with b.guard():
        await asyncio.sleep(0)
    assert b.snapshot().calls_in_window == 1


def test_threads_hammering_a_failing_dependency_stop_reaching_it() -> None:
    b = CircuitBreaker("threads", BreakerConfig(consecutive_failures=5, window_size=50, minimum_calls=10,
                                                open_duration=300))
    reached = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    @b
    def dependency(fails: bool) -> None:
        nonlocal reached
        with lock:
            reached += 1
        if fails:
            raise Boom("down")

    start = threading.Barrier(8)

    def worker(fails: bool) -> None:
        start.wait()
        for _ in range(500):
            try:
                dependency(fails)
            except (Boom, CircuitOpenError):
                pass
            except BaseException as err:
                errors.append(err)

    def run(fails: bool) -> None:
        threads = [threading.Thread(target=worker, args=(fails,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    run(False)
    assert errors == [] and reached == 4000 and b.state is State.CLOSED
    snapshot = b.snapshot()
    assert snapshot.calls_in_window == 50 and snapshot.failure_rate == 0.0
    reached = 0
    run(True)
    assert errors == [] and b.state is State.OPEN
    # Sequential failures would open it after 5 in a row, but threads preempted mid-call leave
    # gaps in the numbers that break runs. The bound that holds however they interleave: the
    # call that finishes as the m-th of this phase sees at most the 7 other threads' unfinished
    # calls among the 50 in its window, so once m >= 32 at least 25 of them failed (rate 0.5)
    # and it opens; by then the threads can have taken at most 7 more numbers.
    assert reached <= 32 + 7
    assert b.snapshot().rejected == 4000 - reached


def test_trials_still_running_when_it_reopens_keep_their_slots() -> None:
    """A trial that fails reopens the breaker while another trial is still running; when that
    one finishes it gives its slot back once, so the next half-open phase admits the limit,
    not one more."""
    clock = FakeClock()
    b, _ = make(clock, consecutive_failures=1, open_duration=1.0, open_backoff=1.0,
                half_open_max_concurrent=2, half_open_successes=10)
    failures(b, 1)
    clock.advance(1.0)
    failing, slow = b.guard(), b.guard()
    failing.__enter__()
    slow.__enter__()
    failing.__exit__(Boom, Boom("down"), None)  # reopens; the other trial is still running
    assert b.state is State.OPEN
    clock.advance(1.0)
    admitted = [b.guard()]
    admitted[0].__enter__()  # one slot is free: the running trial holds the other
    with pytest.raises(CircuitOpenError):
        b.guard().__enter__()
    slow.__exit__(None, None, None)  # the old trial ends and gives its slot back
    admitted.append(b.guard())
    admitted[1].__enter__()
    with pytest.raises(CircuitOpenError):
        b.guard().__enter__()  # two trials running: the limit
    for trial in admitted:
        trial.__exit__(None, None, None)
    trip_guard = b.guard()
    trip_guard.__enter__()
    b.trip("by hand during a trial")
    trip_guard.__exit__(KeyError, KeyError("ignored"), None)  # an ignored outcome gives it back too
    clock.advance(60.0)
    running = [b.guard(), b.guard()]
    for trial in running:
        trial.__enter__()
    with pytest.raises(CircuitOpenError):
        b.guard().__enter__()


def test_threads_never_exceed_the_half_open_trial_limit() -> None:
    clock = FakeClock()
    b, _ = make(clock, consecutive_failures=1, open_duration=1.0, half_open_max_concurrent=2,
                half_open_successes=100)
    failures(b, 1)
    clock.advance(1.0)
    inside = 0
    most_inside = 0
    lock = threading.Lock()
    release = threading.Event()

    def trial() -> None:
        nonlocal inside, most_inside
        with lock:
            inside += 1
            most_inside = max(most_inside, inside)
        release.wait(10)
        with lock:
            inside -= 1

    outcomes: list[str] = []

    def worker() -> None:
        try:
            b.call(trial)
            outcomes.append("ran")
        except CircuitOpenError:
            outcomes.append("refused")

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    waited = 0
    while outcomes.count("refused") < 10 and waited < 3000:  # 30 s at most, then the asserts say why
        threading.Event().wait(0.01)
        waited += 1
    release.set()
    for t in threads:
        t.join()
    assert most_inside == 2
    assert sorted(outcomes) == ["ran"] * 2 + ["refused"] * 10
    assert b.state is State.HALF_OPEN


class StatusServer:
    """A local stand-in for the gateway's breaker status route that answers whatever body the
    test sets (the follower's side of the contract is under test, not the gateway's)."""

    def __init__(self) -> None:
        self.body: bytes = b"{}"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def answer(self, status: object) -> None:
        self.body = json.dumps(status).encode() if not isinstance(status, bytes) else status


def test_a_follower_survives_bodies_that_are_not_a_status_and_lets_go_when_stale() -> None:
    """A 200 whose body is not a breaker status is a failed read: the thread keeps polling, the
    breaker keeps the entity's last state, and after `stale_after` the local logic decides."""
    server = StatusServer()
    server.answer({"state": "open", "transitions": [{"reason": "tripped by an operator"}]})
    b = CircuitBreaker("followed", BreakerConfig())
    follower = EntityFollower(b, server.url, "token", interval=0.02, stale_after=0.5, report_outcomes=False)
    try:
        assert follower.wait_for_poll(2)
        assert b.state is State.OPEN and b.held_fraction == 0.0
        for odd in ({"status": "open"}, {"state": "ramping"}, {"state": "ramping", "traffic_fraction": 7},
                    {"state": "open", "transitions": "x"}, [1, 2], b"not json"):
            server.answer(odd)
            errors = follower.poll_errors
            assert follower.wait_for_poll(follower.polls + 2)
            assert follower.poll_errors > errors, odd
            assert b.state is State.OPEN or b.held_fraction is None
        assert follower.wait_for_poll(follower.polls + 40)  # about 0.8 s of bad bodies, past stale_after
        assert b.held_fraction is None and b.state is State.CLOSED
        server.answer({"state": "half_open", "traffic_fraction": 0.25})
        assert follower.wait_for_poll(follower.polls + 2)
        assert b.state is State.HALF_OPEN and b.held_fraction == 0.25  # the thread is still alive
    finally:
        follower.close()
        server.http.shutdown()


@pytest.fixture
def hanging_gateway() -> Iterator[str]:
    """A port that accepts connections and never answers: the slowest gateway there is."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_reporting_never_blocks_the_breaker_even_when_the_gateway_hangs(hanging_gateway: str) -> None:
    reporter = GatewayReporter(hanging_gateway, DETECTOR_TOKEN, "svc", queue_size=2, timeout=30, attempts=1)
    b = CircuitBreaker("hung", BreakerConfig(consecutive_failures=1), listeners=[reporter])
    for _ in range(10):
        failures(b, 1)  # each failure opens ...
        b.reset()  # ... and this closes: 20 reported changes against a queue of 2
    assert b.state is State.CLOSED
    assert reporter.sent == 0
    assert reporter.dropped >= 20 - 2 - 1  # one may already be in the sender's hands


def test_a_report_the_gateway_refuses_is_logged_without_the_urls_credentials(
        webhook_receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture) -> None:
    """The warning for a detection that could not be reported names the endpoint, never a
    credential written into the gateway URL."""
    webhook_receiver.status = 403
    url = f"http://ops:s3cret@127.0.0.1:{webhook_receiver.port}"
    reporter = GatewayReporter(url, DETECTOR_TOKEN, "svc", attempts=1)
    b = CircuitBreaker("refused", BreakerConfig(consecutive_failures=1), listeners=[reporter])
    try:
        with caplog.at_level("WARNING", logger="medkit.breakers"):
            failures(b, 1)
            assert reporter.flush(30)
        assert reporter.failed == 1
        # (another test's reporter thread may still log here: only this breaker's lines count)
        [line] = [r.getMessage() for r in caplog.records
                  if r.getMessage().startswith("breaker refused: could not report")]
        assert f"to http://127.0.0.1:{webhook_receiver.port}/v1/detections (HTTP 403" in line
        assert "s3cret" not in line and "ops" not in line
    finally:
        reporter.close()


def test_changes_an_entity_imposed_are_not_reported_back(webhook_receiver: WebhookReceiver) -> None:
    """A hold and release (the fleet entity's doing) reach no reporter; a local opening does."""
    reporter = GatewayReporter(f"http://127.0.0.1:{webhook_receiver.port}", DETECTOR_TOKEN, "svc")
    b = CircuitBreaker("fleet-held", BreakerConfig(consecutive_failures=1), listeners=[reporter])
    try:
        b.hold(State.OPEN, 0.0, "fleet breaker fleet-held is open", retry_after=30)
        assert b.state is State.OPEN
        b.release("fleet breaker fleet-held is closed")
        assert b.state is State.CLOSED
        failures(b, 1)  # the local logic opens it: news for the fleet
        assert reporter.flush(30)
        assert reporter.sent == 1 and len(webhook_receiver.received) == 1
        assert webhook_receiver.received[0]["labels"]["breaker_state"] == "open"
        assert "1 consecutive failure" in webhook_receiver.received[0]["summary"]
    finally:
        reporter.close()
    loud = GatewayReporter(f"http://127.0.0.1:{webhook_receiver.port}", DETECTOR_TOKEN, "svc",
                           report_imposed=True)
    held = CircuitBreaker("fleet-held-loud", BreakerConfig(), listeners=[loud])
    try:
        held.hold(State.OPEN, 0.0, "fleet breaker is open")
        assert loud.flush(30) and loud.sent == 1
    finally:
        loud.close()


async def test_state_changes_reach_a_real_gateway_as_detections(
        dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    service = f"brk-{uuid.uuid4().hex[:6]}"
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "services": [service_policy(service, free_port())]}))
    address = dev_env.client.service_client.config.target_host
    workflow_id = f"recovery:{service}:breaker-payments"
    with running_gateway(tmp_path, policy, address, f"brk-{uuid.uuid4().hex[:8]}") as gateway:
        reporter = GatewayReporter(gateway.url, DETECTOR_TOKEN, service)
        b = CircuitBreaker("payments", BreakerConfig(consecutive_failures=2, labels={"team": "core"}),
                           listeners=[reporter])
        try:
            failures(b, 2)
            assert await asyncio.to_thread(reporter.flush, 30), gateway.log_tail()
            assert (reporter.sent, reporter.failed) == (1, 0), gateway.log_tail()
            history = await dev_env.client.get_workflow_handle(workflow_id).fetch_history()
            started = history.events[0].workflow_execution_started_event_attributes
            payload = started.input.payloads[0].data.decode()
            for fragment in ('"source":"http"', '"severity":"major"', '"status":"firing"',
                             '"breaker":"payments"', '"breaker_state":"open"', '"team":"core"',
                             '"category":"circuit_breaker"', "2 consecutive failures"):
                assert fragment in payload, payload

            b.reset("dependency healthy again")
            assert await asyncio.to_thread(reporter.flush, 30)
            assert (reporter.sent, reporter.failed) == (2, 0), gateway.log_tail()

            async def resolved_reported() -> bool:
                events = (await dev_env.client.get_workflow_handle(workflow_id).fetch_history()).events
                signals = [e.workflow_execution_signaled_event_attributes for e in events
                           if e.HasField("workflow_execution_signaled_event_attributes")]
                return any('"status":"resolved"' in p.data.decode()
                           for signal in signals for p in signal.input.payloads)
            await eventually(resolved_reported)
        finally:
            reporter.close()
            with contextlib.suppress(RPCError):
                await dev_env.client.get_workflow_handle(workflow_id).terminate("test cleanup")


def test_the_decorator_takes_the_functions_own_parameters_on_every_path() -> None:
    clock = FakeClock()
    b, _ = make(clock, consecutive_failures=2, open_duration=1.0)
    shared: list[int] = []
    seen: list[tuple[Any, ...]] = []

    def plain(first: int, /, second: int, third: int = 3, bucket: list[int] = shared) -> int:
        seen.append((first, second, third, bucket is shared))
        return first + second + third

    guarded = b(plain)
    assert inspect.signature(guarded, follow_wrapped=False) == inspect.signature(plain)
    # Parameters named like the builtins the wrapper itself calls do not shadow them.
    assert b(lambda next, BaseException: next + BaseException)(1, BaseException=2) == 3
    assert guarded(1, 2) == 6 and guarded(1, second=2, third=4) == 7 and guarded(1, third=0, second=1) == 2
    with pytest.raises(TypeError, match="plain"):
        guarded(first=1, second=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="plain"):
        guarded(1)  # type: ignore[call-arg]
    assert b.snapshot().calls_in_window == 4  # a wrong call never reached the breaker
    b.trip()
    with pytest.raises(CircuitOpenError):
        guarded(1, 2)
    clock.advance(2)  # past the open time: the next call is a half-open trial, admitted
    assert guarded(5, 5, 5) == 15 and b.state is not State.OPEN
    assert seen == [(1, 2, 3, True), (1, 2, 4, True), (1, 1, 0, True), (5, 5, 5, True)]


async def test_the_async_decorator_takes_the_functions_own_parameters_on_every_path() -> None:
    clock = FakeClock()
    b, _ = make(clock, consecutive_failures=2, open_duration=1.0)

    async def plain(first: int, second: int = 10) -> int:
        await asyncio.sleep(0)
        return first + second

    guarded = b(plain)
    assert inspect.signature(guarded, follow_wrapped=False) == inspect.signature(plain)
    assert await guarded(1) == 11 and await guarded(second=2, first=1) == 3
    b.trip()
    with pytest.raises(CircuitOpenError):
        await guarded(1)
    clock.advance(2)
    assert await guarded(2, second=3) == 5 and b.state is not State.OPEN


def test_other_signatures_and_callables_get_a_generic_wrapper_that_forwards_everything() -> None:
    b = CircuitBreaker("generic", BreakerConfig())

    def variadic(*args: int, scale: int = 1, **extra: int) -> int:
        return scale * sum(args) + sum(extra.values())

    def clashing(_mk_fn: int) -> int:
        return _mk_fn

    class Doubler:
        def __call__(self, x: int) -> int:
            return 2 * x

    assert b(variadic)(1, 2, scale=3, more=4) == 13
    assert b(clashing)(_mk_fn=7) == 7
    assert b(Doubler())(4) == 8
    assert b(lambda: 9)() == 9
    assert b.snapshot().calls_in_window == 4
