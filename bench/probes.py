"""Added latency of a probe round and of a notification over the raw operation each wraps.

Probes and notifications run on every recovery (a probe round before acting and after each
validation interval; a notification per page, escalation and outcome), so what medkit adds
around the network call is paid many times per incident. Each pair runs medkit's activity and
the bare operation against the same real local target on 127.0.0.1, in the same run:

- `probe_service` (activities/probes.py) with one HTTP probe of the demo service's /healthz
  against one GET through the same httpx client (the worker's: `ActivityDeps.create`, no
  keep-alive); one TCP probe of its port against a bare `asyncio.open_connection` and close;
  one process probe of its pid file against `psutil.Process(pid)` status and RSS on the event
  loop; and a round of all three against the three bare operations under one `gather`.
- `notify` (activities/notify.py) to a webhook route, with its two ledger writes, against one
  POST of the same body and headers through the same client, to the receiver the tests use.

Activities run as bench/actions.py runs them: through a fresh `ActivityEnvironment` per call
(no Temporal server), each notification a new step so the ledger does real work. Unlike
bench/actions.py the two sides alternate call by call (which one goes first alternating too),
so a load change on a shared host hits both alike. Prints p50/p95 in milliseconds, the p50
ratio and the p50 difference, plus what the harness and the ledger take of it. Never asserts
timings.

    .venv/bin/python -m bench.probes [--runs 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import psutil
from sqlalchemy import URL
from temporalio import activity
from temporalio.testing import ActivityEnvironment

from activities.deps import ActivityDeps
from activities.notify import NotifyActivities
from activities.probes import ProbeActivities
from bench.actions import p95
from models.notifications import Notification, NotifyRequest, WebhookRoute
from models.phases import Phase, Severity
from models.probes import HttpProbe, ProbeRound, ProbeRoundRequest, ProbeSpec, ProcessProbe, TcpProbe
from store.ledger import ActionLedger, ActionRecord, sqlite_url
from tests.conftest import WebhookReceiver, free_port, serving_webhook, wait_for_port

A = TypeVar("A")
R = TypeVar("R")
Call = Callable[[int], Awaitable[object]]

PAUSE = 0.002
"""Seconds between calls, untimed. The demo service accepts on a thread of a single accept loop
with a listen backlog of 5: back-to-back TCP probes (connect, close, next) outrun it, the queue
fills and the kernel drops the next SYN, whose retransmission comes a second later (p95 of both
sides was 1021 ms without it). Probes are never back to back in a recovery either."""

WARMUP = 5
"""Untimed calls of each side first: the thread pool, the SQLite connection and pydantic's
validators are built on first use, which no later call pays."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """One activity and the raw operation it wraps, each called with the run's index."""

    name: str
    activity: Call
    raw: Call


@dataclasses.dataclass(frozen=True)
class Row:
    """The measured samples of one pair, in milliseconds."""

    name: str
    activity: list[float]
    raw: list[float]

    def figures(self) -> dict[str, Any]:
        """p50/p95 of both sides, the p50 ratio and the p50 difference."""
        a50, r50 = statistics.median(self.activity), statistics.median(self.raw)
        return {"activity_ms": {"p50": a50, "p95": p95(self.activity)},
                "raw_ms": {"p50": r50, "p95": p95(self.raw)},
                "ratio_p50": a50 / r50, "added_ms_p50": a50 - r50}


async def timed(call: Call, i: int) -> float:
    """Milliseconds of one call."""
    started = time.perf_counter()
    await call(i)
    return (time.perf_counter() - started) * 1000


async def measure(pair: Pair, runs: int) -> Row:
    """Both sides of the pair, alternating call by call and which side goes first."""
    for i in range(WARMUP):
        await pair.activity(-1 - i)
        await pair.raw(-1 - i)
    activity_ms: list[float] = []
    raw_ms: list[float] = []
    step = max(1, runs // 4)
    for i in range(runs):
        first, second = (pair.activity, pair.raw) if i % 2 else (pair.raw, pair.activity)
        times = [await timed(first, i)]
        await asyncio.sleep(PAUSE)
        times.append(await timed(second, i))
        await asyncio.sleep(PAUSE)
        activity_ms.append(times[i % 2 == 0])
        raw_ms.append(times[i % 2 == 1])
        if (i + 1) % step == 0 or i + 1 == runs:
            print(f"  {pair.name}: {i + 1}/{runs}", file=sys.stderr, flush=True)
    return Row(pair.name, activity_ms, raw_ms)


async def in_activity(fn: Callable[[A], Awaitable[R]], arg: A, step: str, kind: str) -> R:
    """Run an activity as its own step, in a fresh ActivityEnvironment (as bench/actions.py does)."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_id=step, activity_type=kind)
    return await env.run(fn, arg)


def healthy(round_: ProbeRound) -> ProbeRound:
    """The round, or an exit naming the failing probes: a failing probe is not what is measured."""
    failing = [f"{r.probe}: {r.detail}" for r in round_.results if not r.healthy]
    if failing:
        raise SystemExit(f"probe failed during the bench: {failing}")
    return round_


def probe_call(acts: ProbeActivities, probes: Sequence[ProbeSpec]) -> Call:
    """A `probe_service` round of these probes, as the workflow's local activity runs it."""
    request = ProbeRoundRequest(service="bench", probes=list(probes))

    async def call(i: int) -> None:
        healthy(await in_activity(acts.probe_service, request, f"probe-{i}", "probe_service"))

    return call


def notification(i: int) -> Notification:
    """A notification as RecoveryWorkflow sends one when it pages for a critical incident."""
    return Notification(
        workflow_id="recovery:bench:inc-1", service="bench", event="emergency",
        phase=Phase.EMERGENCY_RECOVERY, severity=Severity.CRITICAL,
        title="bench: critical incident", text="health probe healthz failing since 10:02",
        evidence=["http probe healthz: HTTP 503, expected [200]", "process probe process: pid 4242 running"],
        command="medkit approve recovery:bench:inc-1 --operator NAME --reason TEXT",
        dedup_key="recovery:bench:inc-1/run", notification_id=f"recovery:bench:inc-1/run/{i}",
    )


@activity.defn(name="noop")
async def noop(_: int) -> None:
    """Nothing: run through the harness, it measures what the harness adds to every activity."""


class MeteredLedger(ActionLedger):
    """The ledger, adding up the milliseconds its begin and finish calls take (in their threads),
    so the notify figure can say how much of it is the ledger record."""

    def __init__(self, url: URL) -> None:
        super().__init__(url)
        self.spent_ms = 0.0

    def begin(self, key: str, *, workflow_id: str, service: str, activity: str,
              deadline: float | None = None) -> ActionRecord:
        """ActionLedger.begin, timed."""
        started = time.perf_counter()
        try:
            return super().begin(key, workflow_id=workflow_id, service=service, activity=activity,
                                 deadline=deadline)
        finally:
            self.spent_ms += (time.perf_counter() - started) * 1000

    def finish(self, key: str, result_json: str, *, deadline: float | None = None) -> None:
        """ActionLedger.finish, timed."""
        started = time.perf_counter()
        try:
            super().finish(key, result_json, deadline=deadline)
        finally:
            self.spent_ms += (time.perf_counter() - started) * 1000


async def probe_pairs(deps: ActivityDeps, port: int, pid_file: Path) -> list[Pair]:
    """The four probe pairs against the demo service on `port` (pid in `pid_file`)."""
    acts = ProbeActivities(deps.http)
    url = f"http://127.0.0.1:{port}/healthz"
    http_probe = HttpProbe(name="healthz", url=url, timeout=timedelta(seconds=1))  # as the demo policy's
    tcp_probe = TcpProbe(name="port", port=port)
    process_probe = ProcessProbe(name="process", pid_file=str(pid_file))
    pid = int(pid_file.read_text())

    async def raw_http(_: int) -> None:
        (await deps.http.get(url, timeout=1.0)).raise_for_status()

    async def raw_tcp(_: int) -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()

    async def raw_process(_: int) -> None:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or proc.memory_info().rss <= 0:
            raise SystemExit(f"demo service pid {pid} is not running")

    async def raw_round(i: int) -> None:
        await asyncio.gather(raw_http(i), raw_tcp(i), raw_process(i))

    return [
        Pair("http probe", probe_call(acts, [http_probe]), raw_http),
        Pair("tcp probe", probe_call(acts, [tcp_probe]), raw_tcp),
        Pair("process probe", probe_call(acts, [process_probe]), raw_process),
        Pair("round of all three", probe_call(acts, [http_probe, tcp_probe, process_probe]), raw_round),
    ]


def notify_pair(deps: ActivityDeps, receiver: WebhookReceiver, ledger_ms: list[float]) -> Pair:
    """The notify activity against one POST of the same body and headers; appends the time each
    timed notification spent in its ledger calls to `ledger_ms` (deps.ledger: a MeteredLedger)."""
    acts = NotifyActivities(deps)
    route = WebhookRoute(url=receiver.url)
    run = uuid.uuid4().hex[:8]  # a fresh ledger key per step, whatever ran before in this state dir
    ledger = deps.ledger

    async def call(i: int) -> None:
        request = NotifyRequest(route_name="hook", route=route, notification=notification(i))
        before = ledger.spent_ms if isinstance(ledger, MeteredLedger) else 0.0
        result = await in_activity(acts.notify, request, f"notify-{run}-{i}", "notify")
        if not result.delivered or result.duplicate:
            raise SystemExit(f"notification {i} not delivered afresh: {result}")
        if i >= 0 and isinstance(ledger, MeteredLedger):
            ledger_ms.append(ledger.spent_ms - before)

    async def raw(i: int) -> None:
        note = notification(i)
        response = await deps.http.post(
            receiver.url, content=note.model_dump_json().encode(), timeout=5.0,
            headers={"Content-Type": "application/json", "Idempotency-Key": note.notification_id})
        response.raise_for_status()

    return Pair("notify (webhook)", call, raw)


def harness_pair() -> Pair:
    """A no-op activity through the harness against a direct call: what the harness adds."""
    return Pair("harness (no-op)", lambda i: in_activity(noop, i, f"noop-{i}", "noop"), noop)


def print_table(rows: list[Row], harness: Row, ledger_ms: list[float]) -> None:
    """The results table: one line per pair, then the harness's and the ledger's shares."""
    print()
    print(f"{'ms':<20} {'activity p50':>12} {'p95':>8} {'raw p50':>9} {'p95':>8} "
          f"{'ratio p50':>10} {'added p50':>10}")
    for row in rows:
        f = row.figures()
        print(f"{row.name:<20} {f['activity_ms']['p50']:>12.3f} {f['activity_ms']['p95']:>8.3f} "
              f"{f['raw_ms']['p50']:>9.3f} {f['raw_ms']['p95']:>8.3f} {f['ratio_p50']:>9.2f}x "
              f"{f['added_ms_p50']:>+10.3f}")
    h = harness.figures()
    print(f"of which: ActivityEnvironment harness (no-op activity) +{h['added_ms_p50']:.3f} ms p50, "
          "in every activity figure;")
    print(f"          notify's ledger begin + finish (time inside the two calls) "
          f"p50 {statistics.median(ledger_ms):.3f} p95 {p95(ledger_ms):.3f}")


async def main(runs: int, json_path: Path | None) -> None:
    """Start the demo service and the webhook receiver, measure every pair, print the table."""
    load_start = os.getloadavg()
    print(f"probes and notifications: added latency over the raw operation, {runs} runs per pair, "
          f"sides interleaved (ms); load average {load_start[0]:.2f}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        state = tmp / "state"
        deps = ActivityDeps.create(state)  # the worker's HTTP client and settings
        deps = dataclasses.replace(deps, ledger=MeteredLedger(sqlite_url(state / "medkit.db")))
        ledger_ms: list[float] = []
        port, pid_file = free_port(), tmp / "demo.pid"
        demo = subprocess.Popen([sys.executable, "-m", "demo.service", "--port", str(port),
                                 "--pid-file", str(pid_file)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            with serving_webhook(WebhookReceiver(port=free_port())) as receiver:
                pairs = [*await probe_pairs(deps, port, pid_file),
                         notify_pair(deps, receiver, ledger_ms)]
                rows = [await measure(pair, runs) for pair in pairs]
                harness = await measure(harness_pair(), runs)
        finally:
            demo.terminate()
            demo.wait()
            await deps.http.aclose()
    print_table(rows, harness, ledger_ms)
    load_end = os.getloadavg()
    print(f"load average at the end {load_end[0]:.2f}")
    if json_path is not None:
        figures = {
            "runs": runs, "load_average": {"start": load_start[0], "end": load_end[0]},
            "rows": {row.name: row.figures() for row in rows},
            "harness_added_ms_p50": harness.figures()["added_ms_p50"],
            "notify_ledger_ms": {"p50": statistics.median(ledger_ms), "p95": p95(ledger_ms)},
        }
        json_path.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=500, help="timed calls of each side per pair")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2 (p95 needs two samples)")
    asyncio.run(main(args.runs, args.json))
