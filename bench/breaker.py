"""The breaker library against pybreaker, circuitbreaker, aiobreaker and purgatory, in one run.

Part 1, decision overhead: the cost a breaker adds to an allowed call in the closed state, as
(time per call through the breaker) - (time per bare call), both measured here, interleaved
round by round, best round kept. Printed in ns and as a ratio to medkit's own overhead, and
over two wrappers that only call the function: a `*args, **kwargs` one (what any generic
decorator pays) and one with the function's own parameters (what medkit's decorator generates;
the difference is the breaker's own decision).

Part 2, a flapping dependency: a real HTTP server on 127.0.0.1 (a subprocess) answers 200 for
`healthy` seconds, then 503 for `failing` seconds, over and over. Each breaker, configured alike
(open after 5 failures in a row, open for 1 s), protects a GET sent every `interval`. Reported:
calls wasted (reached the server while it failed), calls refused while it was healthy, time to
detect (burst start to first refusal) and time to recover (burst end to the last refusal of
that healthy phase). Never asserts anything.

    .venv/bin/python -m bench.breaker [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiobreaker
import circuitbreaker
import httpx
import purgatory
import pybreaker

from breakers import BreakerConfig, CircuitBreaker
from tests.conftest import free_port, wait_for_port

GOAL_NS = 200

# --- part 1: decision overhead ---------------------------------------------------------------


def noop(x: int) -> int:
    """The protected call: as cheap as a call gets, so the breaker's cost is all that differs."""
    return x


async def anoop(x: int) -> int:
    """The async protected call."""
    return x


def pass_through(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What a generic decorator costs at least: a `*args, **kwargs` wrapper that only calls fn
    (every other library's decorator is one)."""
    if asyncio.iscoroutinefunction(fn):
        async def forward_async(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)
        return forward_async

    def forward(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return forward


def forward_own_arguments(fn: Callable[[int], Any]) -> Callable[[int], Any]:
    """The least any decorator costs: a wrapper with fn's own parameter that only calls fn (what
    medkit's decorator generates). A breaker's own decision cost is its time minus this one's."""
    if asyncio.iscoroutinefunction(fn):
        async def forward_async(x: int) -> Any:
            return await fn(x)
        return forward_async

    def forward(x: int) -> Any:
        return fn(x)
    return forward


def sync_candidates() -> dict[str, Callable[[int], int]]:
    """Each library's decorator around noop, in the closed state."""
    purgatory_factory = purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
    return {
        "bare call": noop,
        "pass-through": pass_through(noop),
        "forward own args": forward_own_arguments(noop),
        "medkit breakers": CircuitBreaker("bench")(noop),
        "pybreaker": pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)(noop),
        "circuitbreaker": circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30)(noop),
        "purgatory (sync)": purgatory_factory(circuit="bench")(noop),
    }


def async_candidates() -> dict[str, Callable[[int], Awaitable[int]]]:
    """Each library's async decorator around anoop, in the closed state."""
    purgatory_factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
    return {
        "bare await": anoop,
        "pass-through": pass_through(anoop),
        "forward own args": forward_own_arguments(anoop),
        "medkit breakers": CircuitBreaker("bench-async")(anoop),
        "aiobreaker": aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=30))(anoop),
        "circuitbreaker": circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30)(anoop),
        "purgatory": purgatory_factory(circuit="bench")(anoop),
    }


def time_sync(fn: Callable[[int], int], calls: int) -> float:
    """Nanoseconds per call of fn over `calls` calls."""
    start = time.perf_counter_ns()
    for i in range(calls):
        fn(i)
    return (time.perf_counter_ns() - start) / calls


async def time_async(fn: Callable[[int], Awaitable[int]], calls: int) -> float:
    """Nanoseconds per awaited call of fn over `calls` calls."""
    start = time.perf_counter_ns()
    for i in range(calls):
        await fn(i)
    return (time.perf_counter_ns() - start) / calls


def best_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each candidate's fastest round: the one least disturbed by the rest of the host."""
    return {name: min(r[name] for r in rounds) for name in rounds[0]}


def report_overhead(title: str, per_call: dict[str, float], baseline: str) -> dict[str, Any]:
    """Print ns per call, overhead over the bare call and over the cheapest wrapper (the
    breaker's own decision), and the overhead's ratio to medkit's."""
    bare, wrapper = per_call[baseline], per_call["forward own args"]
    medkit = per_call["medkit breakers"] - bare
    decision = per_call["medkit breakers"] - wrapper
    print(f"\n{title} (ns per allowed call, closed state; best of the rounds)")
    print(f"{'':<18} {'ns/call':>9} {'overhead':>9} {'decision':>9} {'x bare':>7} {'overhead / medkit':>18}")
    rows: dict[str, Any] = {}
    for name, ns in per_call.items():
        overhead = ns - bare
        rows[name] = {"ns_per_call": round(ns, 1), "overhead_ns": round(overhead, 1),
                      "over_forwarding_ns": round(ns - wrapper, 1)}
        ratio = f"{overhead / medkit:17.2f}x" if name != baseline and medkit > 0 else f"{'':>18}"
        print(f"{name:<18} {ns:9.1f} {overhead:9.1f} {ns - wrapper:9.1f} {ns / bare:6.2f}x {ratio}")
    print(f"goal: medkit overhead <= {GOAL_NS} ns: {medkit:.1f} ns over the bare call "
          f"({'meets' if medkit <= GOAL_NS else 'misses'}), {decision:.1f} ns over a wrapper "
          f"that only forwards ({'meets' if decision <= GOAL_NS else 'misses'}); "
          f"one bare call here costs {bare:.1f} ns")
    return rows


def bench_overhead(calls: int, rounds: int) -> dict[str, Any]:
    """Part 1, sync then async, rounds interleaved across candidates."""
    sync = sync_candidates()
    sync_rounds = [{name: time_sync(fn, calls) for name, fn in sync.items()} for _ in range(rounds)]
    figures = {"sync": report_overhead("sync decision overhead", best_of(sync_rounds), "bare call")}

    async def async_rounds() -> list[dict[str, float]]:
        candidates = async_candidates()
        return [{name: await time_async(fn, calls) for name, fn in candidates.items()}
                for _ in range(rounds)]
    figures["async"] = report_overhead("async decision overhead", best_of(asyncio.run(async_rounds())),
                                       "bare await")
    return figures


# --- part 2: a flapping dependency ------------------------------------------------------------


class FlappingHandler(http.server.BaseHTTPRequestHandler):
    """200 while the schedule says healthy, 503 while it says failing (keep-alive, no logging).

    The schedule starts when the bench POSTs its t0 (wall-clock seconds): healthy until then."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm the body waited for the
    # client's delayed ACK, about 40 ms a GET, far longer than the bench's 5 ms interval.
    disable_nagle_algorithm = True
    t0 = math.inf
    healthy = 1.0
    failing = 1.0

    def do_GET(self) -> None:
        failing = is_failing(time.time() - self.t0, self.healthy, self.failing)
        body = b"failing" if failing else b"ok"
        self.send_response(503 if failing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        FlappingHandler.t0 = float(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the bench prints its own figures."""


def is_failing(t: float, healthy: float, failing: float) -> bool:
    """Whether the dependency fails at t seconds after t0: healthy first, then failing, repeated."""
    return t >= 0 and t % (healthy + failing) >= healthy


def serve(port: int, healthy: float, failing: float) -> None:
    """Run the flapping server until killed (the subprocess side of part 2)."""
    FlappingHandler.healthy, FlappingHandler.failing = healthy, failing
    http.server.ThreadingHTTPServer(("127.0.0.1", port), FlappingHandler).serve_forever()


@dataclass
class Schedule:
    """The server's timeline, shared through the wall clock with the server process."""

    healthy: float
    failing: float
    cycles: int
    interval: float
    t0: float = math.inf

    @property
    def duration(self) -> float:
        """The cycles, then one more healthy phase to see the last recovery."""
        return self.cycles * (self.healthy + self.failing) + self.healthy

    def start(self, url: str) -> None:
        """Start the server's timeline (again) 0.2 s from now."""
        self.t0 = time.time() + 0.2
        httpx.post(url, content=repr(self.t0)).raise_for_status()

    def bursts(self) -> list[tuple[float, float]]:
        """(start, end) of every failing burst, seconds after t0."""
        period = self.healthy + self.failing
        return [(k * period + self.healthy, (k + 1) * period) for k in range(self.cycles)]


@dataclass
class Trace:
    """What happened to every call: (seconds after t0, reached the server, succeeded)."""

    calls: list[tuple[float, bool, bool]] = field(default_factory=list)


@contextlib.contextmanager
def flapping_server(schedule: Schedule) -> Any:
    """The flapping server as a subprocess on a free loopback port; yields its URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.breaker", "--serve", str(port),
                                "--healthy", str(schedule.healthy), "--failing", str(schedule.failing)],
                               cwd=Path(__file__).resolve().parent.parent)
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(10)


def run_sync(schedule: Schedule, protect: Callable[[Callable[[], None]], Callable[[], None]],
             url: str) -> Trace:
    """Call the server through a sync breaker every interval for the whole schedule."""
    trace = Trace()
    with httpx.Client(timeout=2) as http:
        reached = False

        def get() -> None:
            nonlocal reached
            reached = True
            http.get(url).raise_for_status()
        guarded = protect(get)
        next_at = 0.0
        while (now := time.time() - schedule.t0) < schedule.duration:
            if now < next_at:
                time.sleep(next_at - now)
                continue
            next_at = now + schedule.interval
            reached, ok = False, True
            try:
                guarded()
            except Exception:
                ok = False
            trace.calls.append((now, reached, ok))
    return trace


async def run_async(schedule: Schedule,
                    protect: Callable[[Callable[[], Awaitable[None]]], Callable[[], Awaitable[None]]],
                    url: str) -> Trace:
    """Call the server through an async breaker every interval for the whole schedule."""
    trace = Trace()
    async with httpx.AsyncClient(timeout=2) as http:
        reached = False

        async def get() -> None:
            nonlocal reached
            reached = True
            (await http.get(url)).raise_for_status()
        guarded = protect(get)
        next_at = 0.0
        while (now := time.time() - schedule.t0) < schedule.duration:
            if now < next_at:
                await asyncio.sleep(next_at - now)
                continue
            next_at = now + schedule.interval
            reached, ok = False, True
            try:
                await guarded()
            except Exception:
                ok = False
            trace.calls.append((now, reached, ok))
    return trace


def summarize(trace: Trace, schedule: Schedule) -> dict[str, Any]:
    """Wasted and wrongly refused calls, and per-burst detection and recovery times (ms)."""
    failing_at = [is_failing(t, schedule.healthy, schedule.failing) for t, _, _ in trace.calls]
    wasted = sum(1 for (_, reached, ok), bad in zip(trace.calls, failing_at, strict=True)
                 if bad and reached and not ok)
    refused_healthy = sum(1 for (_, reached, _), bad in zip(trace.calls, failing_at, strict=True)
                          if not bad and not reached)
    detect, recover = [], []
    for start, end in schedule.bursts():
        refusals = [t for t, reached, _ in trace.calls if start <= t < end and not reached]
        if refusals:
            detect.append((refusals[0] - start) * 1000)
        after = [t for t, reached, _ in trace.calls if end <= t < end + schedule.healthy and not reached]
        recover.append(((after[-1] + schedule.interval - end) * 1000) if after else 0.0)
    return {
        "calls": len(trace.calls),
        "calls_while_failing": sum(failing_at),
        "wasted": wasted,
        "refused_while_healthy": refused_healthy,
        "detected_bursts": f"{len(detect)}/{schedule.cycles}",
        "detect_ms": round(statistics.mean(detect), 1) if detect else None,
        "recover_ms": round(statistics.mean(recover), 1),
    }


def flapping_contenders() -> dict[str, tuple[str, Any]]:
    """Every breaker opens after 5 failures in a row, for 1 s. "medkit like the others" also
    closes like them (one successful trial, no jitter, backoff or ramp); "medkit defaults" keeps
    the library's recovery defaults (open time ± 20 %, doubled after a failed trial, 3 trials,
    a ramp, here 0.5 s from 10 %), which trade refused calls for fewer wasted ones."""
    purgatory_sync = purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=1.0)
    purgatory_async = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=1.0)
    alike = BreakerConfig(consecutive_failures=5, open_duration=1.0, open_jitter=0.0, open_backoff=1.0,
                          half_open_successes=1, ramp_duration=0.0)
    defaults = BreakerConfig(consecutive_failures=5, open_duration=1.0, ramp_duration=0.5)
    return {
        "medkit like others": ("sync", CircuitBreaker("flap", alike)),
        "medkit defaults": ("sync", CircuitBreaker("flap-defaults", defaults)),
        "medkit async alike": ("async", CircuitBreaker("flap-async", alike)),
        "pybreaker": ("sync", pybreaker.CircuitBreaker(fail_max=5, reset_timeout=1.0)),
        "circuitbreaker": ("sync", circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=1)),
        "purgatory (sync)": ("sync", purgatory_sync(circuit="flap")),
        "aiobreaker": ("async", aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=1))),
        "purgatory": ("async", purgatory_async(circuit="flap")),
    }


def bench_flapping(healthy: float, failing: float, cycles: int, interval: float) -> dict[str, Any]:
    """Part 2: each contender in turn against its own run of the flapping server."""
    print(f"\nflapping dependency: {healthy} s healthy / {failing} s failing (503), {cycles} cycles, "
          f"a GET every {interval * 1000:.0f} ms; all open after 5 failures in a row for 1 s")
    print(f"{'':<20} {'calls':>6} {'failing':>8} {'wasted':>7} {'refused ok':>11} {'detected':>9} "
          f"{'detect ms':>10} {'recover ms':>11}")
    figures: dict[str, Any] = {}
    schedule = Schedule(healthy=healthy, failing=failing, cycles=cycles, interval=interval)
    with flapping_server(schedule) as url:
        for name, (kind, guard) in flapping_contenders().items():
            schedule.start(url)
            trace = (run_sync(schedule, guard, url) if kind == "sync"
                     else asyncio.run(run_async(schedule, guard, url)))
            row = figures[name] = summarize(trace, schedule)
            detect = "-" if row["detect_ms"] is None else f"{row['detect_ms']:.0f}"
            print(f"{name:<20} {row['calls']:6d} {row['calls_while_failing']:8d} {row['wasted']:7d} "
                  f"{row['refused_while_healthy']:11d} {row['detected_bursts']:>9} {detect:>10} "
                  f"{row['recover_ms']:11.0f}")
    base = figures["pybreaker"]
    print("ratios against pybreaker (same run): "
          + ", ".join(f"{name} wasted {row['wasted'] / max(base['wasted'], 1):.2f}x"
                      for name, row in figures.items()))
    return figures


def main() -> None:
    """Run both parts (or serve the flapping dependency, when started as its subprocess)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny numbers, for the smoke test")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--healthy", type=float, default=2.0, help="seconds healthy per cycle")
    parser.add_argument("--failing", type=float, default=1.5, help="seconds failing per cycle")
    parser.add_argument("--cycles", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.healthy, args.failing)
        return
    if args.quick:
        calls, rounds, healthy, failing, cycles, interval = 2_000, 2, 0.6, 0.5, 1, 0.01
    else:
        calls, rounds, healthy, failing, cycles, interval = 200_000, 7, args.healthy, args.failing, \
            args.cycles, 0.005
    figures = {"overhead": bench_overhead(calls, rounds),
               "flapping": bench_flapping(healthy, failing, cycles, interval)}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
