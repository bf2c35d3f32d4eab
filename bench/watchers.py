"""Cost of the continuously running detectors over the bare operation each wraps, in the same run.

The health poller, the host forecaster and the anomaly watcher run for as long as `medkit watch`
(or `medkit serve`) runs, so what they add around their I/O is paid on every tick, forever. Each
figure is a ratio against a baseline measured in the same run, on the same real target:

- health poller: a round of N services (1, 20, 100; one HTTP probe each, of a real local HTTP
  server on 127.0.0.1 in its own process) through `HealthPoller.run` against a bare
  `asyncio.gather` of the same GETs through an httpx client configured like the poller's; both
  timed from the instant the round is due to its last result. The poller fires on its absolute
  ticks (start + k * interval) and the bare rounds half an interval later, in the same event
  loop, so they alternate tick by tick. Also how late each service's request starts against its
  tick (p50/p99), against the bare GETs' start against their due instant.
- host forecaster: one step (a `PsutilSampler` reading, then `HostForecaster.observe`: the
  sustain bookkeeping and the OLS trend fit of `trend_samples` readings of the disk) against the
  bare psutil calls of the reading; and the fit alone (`fit_disk_trend`) against a plain
  `numpy.polyfit` of the same points, and against the same slope and prediction intervals
  written out in numpy (what dropping statsmodels would cost in code, measured).
- anomaly watch: per point, the warm-up path (`query_range` of a 6 h answer from the local
  server, parsed, each point scored by `SeriesWatch.update`) against the bare
  `AnomalyDetector.update` of the same points, and against the bare GET + `json()` of the answer.

Sides alternate call by call (the order rotating), so a load change on a shared host hits both
alike. Logging is configured as `medkit watch` configures it (JSON to stderr at INFO). Prints p50
and p95 (p99 for lateness) and the p50 ratios. Never asserts timings. No Temporal server needed.

    .venv/bin/python -m bench.watchers [--rounds 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import psutil
from scipy import stats  # type: ignore[import-untyped]

from detectors.anomaly import AnomalyDetector
from detectors.anomaly_watch import SeriesWatch, query_range
from detectors.health_poller import HealthBoard, HealthPoller, Round
from detectors.host_forecaster import HostForecaster, PsutilSampler, fit_disk_trend
from models.health import ServiceHealth
from models.policy import AnomalySeriesSpec, HostWatchSpec, ServicePolicy
from models.probes import ProbeResult
from workers.logging import configure_logging

FLEETS = ((1, 0.05), (20, 0.2), (100, 1.0))
"""Services per round and the poll interval (seconds) each fleet runs at: far shorter than the
5 s default, so a run takes a minute, yet over twice a round of either side (a round of 100 GETs
through httpx, each on a new connection, takes about 230 ms on 2 shared cores), so the poller's
rounds and the bare rounds between them do not overlap (the bench counts any that did)."""

CALLS_PER_ROUND = 10
"""The host forecaster's pairs take this many calls per round: they are a millisecond or less."""

WARMUP = 3
"""Untimed rounds or calls of each side first: clients, pydantic validators and statsmodels'
import are built on first use, which no later call pays."""

LADDERS = {level: [{"name": "noop", "steps": [{"wait": "1s"}]}] for level in ("minor", "major", "critical")}


def p95(samples: list[float]) -> float:
    """The 95th percentile (as bench/actions.py's, which this does not import: it pulls in the
    test servers' module, which mypy --strict does not pass)."""
    return statistics.quantiles(samples, n=20)[-1] if len(samples) > 1 else samples[0]


def p99(samples: list[float]) -> float:
    """The 99th percentile."""
    return statistics.quantiles(samples, n=100)[-1] if len(samples) > 1 else samples[0]


# --- the target: a real HTTP server in its own process -------------------------------------------

RANGE_STEP = 15.0


def series_value(stamp: float) -> float:
    """A request-rate-like value: a daily cycle and noise, the same for a given timestamp."""
    noise = random.Random(int(stamp)).gauss(0.0, 3.0)
    return 100.0 + 20.0 * math.sin(2 * math.pi * stamp / 86_400) + noise


def range_answer(query: dict[str, list[str]]) -> bytes:
    """A Prometheus `query_range` answer (a matrix of one series) for the asked start, end, step."""
    start, end = float(query["start"][0]), float(query["end"][0])
    step = float(query.get("step", [str(RANGE_STEP)])[0])
    values = []
    stamp = start
    while stamp <= end + 1e-9:
        values.append([round(stamp, 3), f"{series_value(stamp):.6g}"])
        stamp += step
    body = {"status": "success",
            "data": {"resultType": "matrix", "result": [{"metric": {"job": "bench"}, "values": values}]}}
    return json.dumps(body).encode()


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 cache: dict[str, bytes]) -> None:
    """Serve HTTP/1.1 requests on one connection: /healthz says ok, /api/v1/query_range answers a
    series (cached per query string); keep-alive unless the client closes or asks to."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode()
            parts = urlsplit(target)
            if parts.path == "/healthz":
                status, body, kind = "200 OK", b"ok", "text/plain"
            elif parts.path == "/api/v1/query_range":
                if parts.query not in cache:
                    cache[parts.query] = range_answer(parse_qs(parts.query))
                status, body, kind = "200 OK", cache[parts.query], "application/json"
            else:
                status, body, kind = "404 Not Found", b"not found", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            if b"connection: close" in head.lower():
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve() -> None:
    """Listen on a free loopback port (a deep backlog: 100 connects arrive at once), print it."""
    cache: dict[str, bytes] = {}
    server = await asyncio.start_server(lambda r, w: answer(r, w, cache), "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


@contextlib.contextmanager
def target() -> Iterator[str]:
    """The target server's base URL, the server running in a subprocess meanwhile."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.watchers", "--serve"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise SystemExit(f"the target server did not start (said {line!r})")
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        proc.terminate()
        proc.wait()


# --- health poller -------------------------------------------------------------------------------

class StartsBoard(HealthBoard):
    """The poller's board, also noting when each service's last request started, on the loop's
    clock: the probe's result time less its measured latency (the poller keeps no round start)."""

    def __init__(self, policies: list[ServicePolicy]) -> None:
        super().__init__(policies)
        self.loop = asyncio.get_running_loop()
        self.started: dict[str, float] = {}

    def record(self, service: str, results: list[ProbeResult], at: datetime) -> ServiceHealth:
        """HealthBoard.record, after noting the request's start (results carry wall-clock times:
        converted here, at the same instant, so the two clocks cannot drift apart)."""
        offset = time.time() - self.loop.time()
        self.started[service] = min(r.at.timestamp() - (r.latency_ms or 0.0) / 1000.0
                                    for r in results) - offset
        return super().record(service, results, at)


@dataclass
class FleetRow:
    """One fleet's samples: round times and per-request lateness, in milliseconds."""

    services: int
    interval: float
    poller_ms: list[float] = field(default_factory=list)
    bare_ms: list[float] = field(default_factory=list)
    poller_late_ms: list[float] = field(default_factory=list)
    bare_late_ms: list[float] = field(default_factory=list)
    skipped: int = 0
    """Service rounds skipped after the warm-up (a round before overran): their ticks are left out."""
    overlapping: int = 0

    def figures(self) -> dict[str, Any]:
        """p50/p95 of the round times and the p50 ratio; p50/p99 lateness of both sides."""
        m50, b50 = statistics.median(self.poller_ms), statistics.median(self.bare_ms)
        ml50, bl50 = statistics.median(self.poller_late_ms), statistics.median(self.bare_late_ms)
        return {"services": self.services, "interval_ms": self.interval * 1000,
                "round_ms": {"poller": {"p50": m50, "p95": p95(self.poller_ms)},
                             "bare": {"p50": b50, "p95": p95(self.bare_ms)},
                             "ratio_p50": m50 / b50, "added_ms_p50": m50 - b50},
                "late_ms": {"poller": {"p50": ml50, "p99": p99(self.poller_late_ms)},
                            "bare": {"p50": bl50, "p99": p99(self.bare_late_ms)},
                            "ratio_p50": ml50 / bl50 if bl50 > 0 else math.inf},
                "skipped_ticks": self.skipped, "overlapping_rounds": self.overlapping}


def fleet(url: str, services: int, interval: float) -> list[ServicePolicy]:
    """`services` services, each one HTTP probe of `url` polled every `interval` seconds."""
    return [ServicePolicy.model_validate({
        "name": f"svc-{i}", "ladders": LADDERS,
        "probes": [{"kind": "http", "name": "healthz", "url": url, "timeout": "2s"}],
        "health_poll": {"interval": f"{interval * 1000:g}ms"},
    }) for i in range(services)]


async def bare_round(http: httpx.AsyncClient, url: str, services: int) -> list[float]:
    """The same GETs under one gather; when each started, on the loop's clock."""
    loop = asyncio.get_running_loop()

    async def get() -> float:
        started = loop.time()
        response = await http.get(url, timeout=2.0)
        if response.status_code != 200:
            raise SystemExit(f"bare GET answered HTTP {response.status_code}")
        return started

    return list(await asyncio.gather(*(get() for _ in range(services))))


async def measure_fleet(url: str, services: int, interval: float, rounds: int) -> FleetRow:
    """The poller on its ticks and the bare rounds half an interval after each, same loop."""
    loop = asyncio.get_running_loop()
    row = FleetRow(services, interval)
    policies = fleet(url, services, interval)
    board = StartsBoard(policies)
    ends: dict[int, float] = {}
    late: dict[int, list[float]] = {}
    last_tick: dict[str, int] = {}
    origin = 0.0

    def on_round(done: Round) -> None:
        if not done.healthy:
            raise SystemExit(f"{done.service} failed its probe during the bench")
        ends[done.tick] = max(ends.get(done.tick, 0.0), loop.time())
        late.setdefault(done.tick, []).append(board.started[done.service] - (origin + done.tick * interval))
        last_tick[done.service] = done.tick

    total = WARMUP + rounds
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as http:
        poller = asyncio.create_task(HealthPoller(policies, None, on_round, board).run())
        # The poller's run() builds its client and creates one task per service, then yields;
        # the services take their start on their first step, which comes after this one: the
        # origin is early by the few microseconds each service's first step takes before its own.
        await asyncio.sleep(0)
        origin = loop.time()
        bare_ends: list[float] = []
        try:
            for k in range(total):
                due = origin + (k + 0.5) * interval
                await asyncio.sleep(max(0.0, due - loop.time()))
                starts = await bare_round(http, url, services)
                bare_ends.append(loop.time())
                if k >= WARMUP:
                    row.bare_ms.append((bare_ends[-1] - due) * 1000)
                    row.bare_late_ms.extend((s - due) * 1000 for s in starts)
            while len(last_tick) < services or min(last_tick.values()) < total - 1:
                await asyncio.sleep(interval / 4)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
    for k in range(WARMUP, total):
        if len(late.get(k, [])) < services:  # a round before it overran: some services skipped it
            row.skipped += services - len(late.get(k, []))
            continue
        tick = origin + k * interval
        row.poller_ms.append((ends[k] - tick) * 1000)
        row.poller_late_ms.extend(lateness * 1000 for lateness in late[k])
        if ends[k] > tick + interval / 2 or bare_ends[k] > tick + interval:
            row.overlapping += 1
    if not row.poller_ms:
        raise SystemExit(f"every timed tick of the {services}-service fleet was skipped (the host "
                         "stalled the poller's rounds past their interval): run with more --rounds")
    return row


# --- host forecaster -----------------------------------------------------------------------------

@dataclass
class Pair:
    """Samples of medkit's side and its baselines, in microseconds."""

    name: str
    medkit: list[float]
    baselines: dict[str, list[float]]

    def figures(self) -> dict[str, Any]:
        """p50/p95 of every side, and medkit's p50 ratio to each baseline."""
        m50 = statistics.median(self.medkit)
        return {"medkit_us": {"p50": m50, "p95": p95(self.medkit)},
                "baselines": {name: {"p50": statistics.median(s), "p95": p95(s),
                                     "ratio_p50": m50 / statistics.median(s)}
                              for name, s in self.baselines.items()}}


def alternate(sides: dict[str, Callable[[], object]], rounds: int, label: str) -> dict[str, list[float]]:
    """Microseconds per call of each side, the sides called in turn, the order rotating."""
    names = list(sides)
    for _ in range(WARMUP):
        for name in names:
            sides[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    step = max(1, rounds // 4)
    for i in range(rounds):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            started = time.perf_counter()
            sides[name]()
            samples[name].append((time.perf_counter() - started) * 1e6)
        if (i + 1) % step == 0 or i + 1 == rounds:
            print(f"  {label}: {i + 1}/{rounds}", file=sys.stderr, flush=True)
    return samples


def bare_reading(paths: list[str]) -> None:
    """What `PsutilSampler` reads, straight from psutil: CPU, memory, each disk's usage."""
    psutil.cpu_percent(interval=None)
    psutil.virtual_memory()
    for path in paths:
        psutil.disk_usage(path)


def disk_fill(samples: int, interval: float) -> tuple[list[float], list[float]]:
    """A disk filling at about 6 GiB/h with noise, sampled every `interval` seconds."""
    rng = random.Random(7)
    times = [i * interval for i in range(samples)]
    used = [40e9 + 1.7e6 * t + rng.gauss(0.0, 5e7) for t in times]
    return times, used


def numpy_trend(times: list[float], used: list[float], horizon: float,
                confidence: float) -> tuple[float, ...]:
    """`fit_disk_trend`'s figures written out in numpy: slope and its interval, fitted value now,
    forecast at the horizon and its prediction interval (scipy's t quantile)."""
    t = np.asarray(times, dtype=float) - times[-1]
    y = np.asarray(used, dtype=float)
    n = len(t)
    t_mean = t.mean()
    sxx = float(((t - t_mean) ** 2).sum())
    slope = float(((t - t_mean) * (y - y.mean())).sum()) / sxx
    intercept = float(y.mean()) - slope * t_mean
    residual = y - (intercept + slope * t)
    s2 = float((residual ** 2).sum()) / (n - 2)
    q = float(stats.t.ppf(0.5 + confidence / 2, n - 2))
    slope_half = q * math.sqrt(s2 / sxx)
    at_horizon = intercept + slope * horizon
    pred_half = q * math.sqrt(s2 * (1 + 1 / n + (horizon - t_mean) ** 2 / sxx))
    return (slope, slope - slope_half, slope + slope_half, intercept, at_horizon,
            at_horizon - pred_half, at_horizon + pred_half)


def forecaster_pairs(rounds: int) -> list[Pair]:
    """The forecaster's step against the bare reading, and the trend fit against numpy."""
    spec = HostWatchSpec(service="bench")  # the defaults: the root disk, 60 readings per fit
    paths = [disk.path for disk in spec.disks]
    sampler = PsutilSampler(spec)
    forecaster = HostForecaster(spec)
    for _ in range(spec.trend_samples):  # a full history, so every step fits the trend
        forecaster.observe(sampler())
    if any(forecaster.last_forecast[p].samples != spec.trend_samples for p in paths):
        raise SystemExit("the forecaster did not fit a full history: the step would not be measured whole")
    step = alternate({"step": lambda: forecaster.observe(sampler()),
                      "bare psutil reading": lambda: bare_reading(paths)}, rounds, "host step")

    horizon, confidence = spec.horizon.total_seconds(), spec.confidence
    times, used = disk_fill(spec.trend_samples, spec.interval.total_seconds())
    ours = fit_disk_trend(times, used, horizon, confidence)
    mine = numpy_trend(times, used, horizon, confidence)
    theirs = (ours.slope, ours.slope_low, ours.slope_high, ours.fitted_now, ours.at_horizon,
              ours.horizon_low, ours.horizon_high)
    if not np.allclose(mine, theirs, rtol=1e-6):  # the baseline must compute the same figures
        raise SystemExit(f"numpy trend {mine} differs from fit_disk_trend's {theirs}")
    t = np.asarray(times) - times[-1]
    y = np.asarray(used)
    fit = alternate({"fit": lambda: fit_disk_trend(times, used, horizon, confidence),
                     "numpy.polyfit": lambda: np.polyfit(t, y, 1),
                     "numpy, same intervals": lambda: numpy_trend(times, used, horizon, confidence)},
                    rounds, "trend fit")
    return [Pair("forecaster step vs psutil reading", step["step"],
                 {"bare psutil reading": step["bare psutil reading"]}),
            Pair("trend fit (statsmodels OLS)", fit["fit"],
                 {"numpy.polyfit": fit["numpy.polyfit"],
                  "numpy, same intervals": fit["numpy, same intervals"]})]


# --- anomaly watch -------------------------------------------------------------------------------

async def anomaly_pair(base: str, rounds: int) -> tuple[Pair, int, int]:
    """Per point: query_range + SeriesWatch.update against the bare detector and the bare fetch;
    also the points per answer and the detections the medkit side fired in total."""
    spec = AnomalySeriesSpec(name="bench", service="bench", prometheus=base,
                             query='sum(rate(http_requests_total{job="bench"}[1m]))')
    end = datetime(2026, 12, 1, 12, tzinfo=UTC)
    start = end - spec.warmup
    params = {"query": spec.query or "", "start": f"{start.timestamp():.3f}",
              "end": f"{end.timestamp():.3f}", "step": f"{spec.interval.total_seconds():g}"}
    fired = 0
    async with httpx.AsyncClient() as http:  # as AnomalyWatcher.run's: keep-alive
        points = await query_range(http, spec, start, end)
        count = len(points)

        async def medkit() -> None:
            nonlocal fired
            watch = SeriesWatch(spec)
            for at, value in await query_range(http, spec, start, end):
                fired += watch.update(at, value)[1] is not None

        async def detector() -> None:
            scorer = AnomalyDetector()
            for at, value in points:
                scorer.update(at, value)

        async def fetch() -> None:
            response = await http.get(base + "/api/v1/query_range", params=params, timeout=5.0)
            response.json()

        sides: dict[str, Callable[[], Awaitable[None]]] = {
            "medkit": medkit, "bare detector update": detector, "bare GET + json": fetch}
        names = list(sides)
        for _ in range(WARMUP):
            for name in names:
                await sides[name]()
        fired = 0
        samples: dict[str, list[float]] = {name: [] for name in names}
        step = max(1, rounds // 4)
        for i in range(rounds):
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                started = time.perf_counter()
                await sides[name]()
                samples[name].append((time.perf_counter() - started) * 1e6 / count)
            if (i + 1) % step == 0 or i + 1 == rounds:
                print(f"  anomaly watch: {i + 1}/{rounds}", file=sys.stderr, flush=True)
    medkit_us = samples.pop("medkit")
    both = [d + f for d, f in zip(samples["bare detector update"], samples["bare GET + json"], strict=True)]
    return Pair("anomaly watch, per point", medkit_us, {**samples, "sum of the two": both}), count, fired


# --- report --------------------------------------------------------------------------------------

def print_fleets(rows: list[FleetRow]) -> None:
    """The poller's table: round times, then lateness."""
    print()
    print("health poller: one round of N services (one HTTP GET each), due instant to last result, ms")
    print(f"{'services':>8} {'interval':>8} {'poller p50':>11} {'p95':>8} {'bare p50':>9} {'p95':>8} "
          f"{'ratio p50':>10} {'added p50':>10}")
    for row in rows:
        r = row.figures()["round_ms"]
        print(f"{row.services:>8} {row.interval * 1000:>6.0f}ms {r['poller']['p50']:>11.2f} "
              f"{r['poller']['p95']:>8.2f} {r['bare']['p50']:>9.2f} {r['bare']['p95']:>8.2f} "
              f"{r['ratio_p50']:>9.2f}x {r['added_ms_p50']:>+10.2f}")
    print("health poller: how late each request starts after its tick (poller) or its due instant "
          "(bare gather), ms")
    print(f"{'services':>8} {'interval':>8} {'poller p50':>11} {'p99':>8} {'bare p50':>9} {'p99':>8} "
          f"{'ratio p50':>10} {'skipped':>8} {'overlap':>8}")
    for row in rows:
        f = row.figures()
        late = f["late_ms"]
        print(f"{row.services:>8} {row.interval * 1000:>6.0f}ms {late['poller']['p50']:>11.3f} "
              f"{late['poller']['p99']:>8.3f} {late['bare']['p50']:>9.3f} {late['bare']['p99']:>8.3f} "
              f"{late['ratio_p50']:>9.2f}x {f['skipped_ticks']:>8} {f['overlapping_rounds']:>8}")


def print_pairs(pairs: list[Pair], points: int, fired: int) -> None:
    """One block per pair: medkit's p50/p95, then each baseline's and the ratio to it."""
    for pair in pairs:
        f = pair.figures()
        unit = "us per point" if "point" in pair.name else "us per call"
        print()
        print(f"{pair.name} ({unit}): medkit p50 {f['medkit_us']['p50']:.2f} p95 {f['medkit_us']['p95']:.2f}")
        for name, b in f["baselines"].items():
            print(f"  vs {name:<24} p50 {b['p50']:>9.2f} p95 {b['p95']:>9.2f}   "
                  f"ratio p50 {b['ratio_p50']:>6.2f}x")
    print(f"(anomaly answer: {points} points, 6 h at 15 s; the medkit side fired {fired} detections "
          "over all timed rounds)")


async def main(rounds: int, json_path: Path | None) -> None:
    """Start the target server, measure each watcher against its baselines, print the tables."""
    configure_logging("INFO")  # as `medkit watch`: the poller's per-round debug line is built, then dropped
    load_start = os.getloadavg()
    print(f"watchers: cost over the bare operation, {rounds} rounds per pair, sides interleaved; "
          f"load average {load_start[0]:.2f}, {os.cpu_count()} CPUs")
    with target() as base:
        rows = []
        for services, interval in FLEETS:
            print(f"  health poller: {services} services every {interval * 1000:g} ms", file=sys.stderr,
                  flush=True)
            rows.append(await measure_fleet(base + "/healthz", services, interval, rounds))
        host = forecaster_pairs(rounds * CALLS_PER_ROUND)
        watch, points, fired = await anomaly_pair(base, rounds)
    print_fleets(rows)
    print_pairs([*host, watch], points, fired)
    load_end = os.getloadavg()
    print(f"load average at the end {load_end[0]:.2f}")
    if json_path is not None:
        figures = {"rounds": rounds, "load_average": {"start": load_start[0], "end": load_end[0]},
                   "health_poller": [row.figures() for row in rows],
                   "pairs": {pair.name: pair.figures() for pair in [*host, watch]},
                   "anomaly_points": points}
        json_path.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=40,
                        help="timed rounds of each side per pair (poller ticks per fleet, anomaly answers; "
                             f"the host pairs make {CALLS_PER_ROUND}x as many calls)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the target server
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
    else:
        if args.rounds < 2:
            parser.error("--rounds must be at least 2 (percentiles need two samples)")
        asyncio.run(main(args.rounds, args.json))
