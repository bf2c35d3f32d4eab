"""Operator commands: trigger, status, list, and the decisions approve / abort / resolve / retry."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta

from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from cli.common import (
    LIST_LIMIT,
    TEMPORAL_ERROR,
    UNREACHABLE,
    CommandError,
    SubParsers,
    add_config_arg,
    add_output_arg,
    add_temporal_args,
    connect_or_fail,
    emit,
    guarded,
    int_between,
    load_policy,
    policy_path,
    positive_seconds,
    printable,
    run,
    target_from,
    warn,
)
from gateway.temporal import TemporalFailed, started_new
from models import search_attributes as sa
from models.base import NAME_PATTERN
from models.decisions import DecisionVerdict, OperatorDecision
from models.detection import Detection, incident_key_from
from models.phases import DecisionKind, Phase, Severity
from models.status import RecoveryStatus
from workers.client import (
    ANSWER_TIMEOUT_SECONDS,
    DecisionRejected,
    NoWorkerAnswered,
    RecoveryNotFound,
    TemporalNotAnswering,
    fetch_status,
    send_decision,
    start_or_join_recovery,
    workflow_pollers,
)
from workflows.fleet import FleetCoordinatorWorkflow
from workflows.recovery import RecoveryWorkflow


def ended_at(status: RecoveryStatus) -> datetime | None:
    """When a run medkit ended did so (its terminal transition, the last timeline entry), in UTC;
    None while it runs, and for a run ended in Temporal (its timeline stops where medkit was)."""
    if not status.phase.terminal or not status.timeline:
        return None
    return status.timeline[-1].at.astimezone(UTC)


def format_status(status: RecoveryStatus) -> str:
    """A recovery's status as a person reads it at three in the morning.

    Every field from outside (service, step, reasons, actors) is made printable on its line."""
    p = printable
    lines = [
        f"{p(status.workflow_id)}  {status.phase.value}"
        f"{'  (dry-run)' if status.dry_run else ''}",
        f"  service {p(status.service)}, severity {status.severity or '?'}, category "
        f"{p(status.category or '?')}, attempt {status.attempts}/{status.max_attempts}"
        f"{f' (operator retry {status.operator_retries})' if status.operator_retries else ''}, "
        f"{status.reports} report(s), {status.escalations} escalation(s)",
    ]
    ended = ended_at(status)
    lines.append(f"  started {status.started_at:%Y-%m-%d %H:%M:%SZ}"
                 f"{f', ended {ended:%Y-%m-%d %H:%M:%SZ}' if ended else ''}")
    if status.closed_by_temporal:
        lines.append(f"  ended in Temporal: {status.closed_by_temporal} there (not by medkit) "
                     f"while {status.phase.value}; it takes no decisions (the Temporal UI shows "
                     "who ended it and why)")
    if status.current_step:
        lines.append(f"  step: {p(status.current_step)}")
    if status.pending_decision:
        pending = status.pending_decision
        lines.append(f"  WAITING FOR: {', '.join(pending.allowed)}: {p(pending.command)}")
    if status.outcome:
        lines.append(f"  outcome: {status.outcome.value}")
    lines.append("  timeline:")
    for entry in status.timeline:
        move = (f"{entry.from_phase.value} -> {entry.to_phase.value}"
                if entry.from_phase != entry.to_phase else f"[{entry.kind}]")
        lines.append(f"    {entry.at:%H:%M:%S} {move}  {p(entry.reason)}  ({p(entry.actor)})")
    return "\n".join(lines)


NOT_FOUND = "RecoveryNotFound"
"""The error type (`-o json`) when no recovery (or no run of it) has the id given."""


async def require_recovery(client: Client, workflow_id: str,
                           run_id: str | None = None) -> WorkflowExecutionDescription:
    """The description of the recovery `workflow_id` (its latest run, or run `run_id`), or a
    one-line failure when there is none or it is another kind of workflow.

    The status query and the decision updates exist only on RecoveryWorkflow. Sent to another
    workflow, the fleet coordinator above all (its id sits next to the recoveries in the UI and
    in `temporal workflow list`), the query fails deep in the SDK, an update is refused with a
    message about missing handlers, and a closed one has them wait for a worker to replay it;
    its type, from describe(), tells at once."""
    try:
        description = await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            which = f" and run id {run_id!r}" if run_id else ""
            raise CommandError(f"no recovery with id {workflow_id!r}{which}", NOT_FOUND) from None
        raise CommandError(f"cannot look up {workflow_id!r}: {err.message}",
                           TEMPORAL_ERROR) from None
    kind = description.workflow_type
    if kind == FleetCoordinatorWorkflow.__name__:
        raise CommandError(f"{workflow_id} is the fleet coordinator, not a recovery (`medkit "
                           "list` shows the recoveries)", "NotARecovery")
    if kind != RecoveryWorkflow.__name__:
        raise CommandError(f"{workflow_id} is a {kind} workflow, not a recovery", "NotARecovery")
    return description


@guarded
def trigger(args: argparse.Namespace) -> int:
    """Start or join a recovery as a detector would; print the workflow id."""
    policy_file = load_policy(policy_path(args))
    try:
        policy = policy_file.service(args.service)
    except KeyError as err:
        raise CommandError(str(err.args[0]), "UnknownService") from None
    detection = Detection(
        detection_id=str(uuid.uuid4()), service=args.service,
        incident_key=incident_key_from(args.key), source="cli",
        severity=Severity(args.severity) if args.severity else None,
        summary=args.summary, detected_at=datetime.now(UTC),
    )

    async def go() -> tuple[str, bool | None]:
        target = target_from(args)
        client = await connect_or_fail(target)
        handle = await start_or_join_recovery(client, detection, policy, target.task_queue,
                                              dry_run=args.dry_run)
        if await workflow_pollers(client, target.task_queue) == 0:
            warn(f"no worker polls task queue {target.task_queue!r}: the recovery waits until "
                 "`medkit worker` runs there (or pass the workers' --task-queue)", args, NO_WORKER)
        try:
            return handle.id, started_new(handle)
        except TemporalFailed:  # the SDK no longer tells: the recovery is there all the same
            return handle.id, None

    workflow_id, started = run(go())
    outcome = None if started is None else "started" if started else "joined"
    emit(args, {"workflow_id": workflow_id, "outcome": outcome}, workflow_id)
    if started is False and args.output == "text":
        # stdout stays the id alone (scripts take it with $(...)); the news goes to stderr
        print(f"medkit: joined the running recovery {printable(workflow_id)}: it counts this "
              "report; no second recovery started", file=sys.stderr)
    return 0


NO_WORKER = "NoWorkerAnswered"
"""The error type (`-o json`) when no worker answered a query or decision in time, and the
warning type of `trigger` when no worker polls the task queue."""


def temporal_stopped(err: TemporalNotAnswering) -> CommandError:
    """The one-line error for Temporal ceasing to answer after the command connected: typed as
    an unreachable Temporal (not NoWorkerAnswered), since starting a worker would not help."""
    return CommandError(f"{err}: run the command again once Temporal answers", UNREACHABLE)


async def query_status(client: Client, workflow_id: str, run_id: str | None,
                       timeout: float) -> RecoveryStatus:
    """The status query, bounded by `timeout` seconds, with its failures as one-line
    CommandErrors."""
    try:
        return await fetch_status(client, workflow_id, run_id, timeout)
    except RecoveryNotFound as err:
        raise CommandError(str(err), NOT_FOUND) from None
    except NoWorkerAnswered as err:
        raise CommandError(str(err), NO_WORKER) from None
    except TemporalNotAnswering as err:
        raise temporal_stopped(err) from None
    except RPCError as err:
        raise CommandError(f"cannot query {workflow_id!r}: {err.message}", TEMPORAL_ERROR) from None


ALREADY_ENDED = "RunAlreadyEnded"
"""The warning type (`-o json`) of `status --watch` started on a run that had already ended."""


CLEAR_SCREEN = "\x1b[H\x1b[2J"
"""Home the cursor and clear the screen: each refresh of `status --watch` on a terminal
replaces the last one."""


def show_status(args: argparse.Namespace, result: RecoveryStatus, *, refresh: bool) -> None:
    """Print a status; a refresh on a terminal clears the screen first (text output only)."""
    if refresh and args.output == "text" and sys.stdout.isatty():
        sys.stdout.write(CLEAR_SCREEN)
    emit(args, result, format_status(result))
    sys.stdout.flush()


async def watch(args: argparse.Namespace, client: Client, run_id: str) -> None:
    """Print the status of one run whenever it changes, until the run has ended (by itself, or
    in Temporal: terminated there, it stays in the phase it was in).

    The run is pinned when the watch starts, so a later recovery with the same id is not
    mistaken for this one. With `-o json` every change is one JSON line."""
    shown: str | None = None
    while True:
        result = await query_status(client, args.id, run_id, args.timeout)
        if shown is None and (ended := ended_at(result)) is not None:
            # The latest run with a business-keyed id may be a past incident's (a fault injected
            # moments ago is not reported yet): say so, or its outcome reads as today's.
            warn(f"this run of {args.id} had already ended ({result.phase.value} at "
                 f"{ended:%Y-%m-%d %H:%M:%SZ}); --watch follows one run and does not wait for a "
                 "new one: `medkit list --open` shows the running recoveries", args, ALREADY_ENDED)
        seen = result.model_dump_json(exclude={"timeline"}) + str(len(result.timeline))
        if seen != shown:
            show_status(args, result, refresh=shown is not None)
            shown = seen
        if result.phase.terminal or result.closed_by_temporal:
            return
        await asyncio.sleep(args.interval)


@guarded
def status(args: argparse.Namespace) -> int:
    """Print one recovery's status and timeline; with --watch, again at each change until it
    ends (Ctrl-C stops watching and exits 0)."""
    async def go() -> RecoveryStatus | None:
        client = await connect_or_fail(target_from(args))
        description = await require_recovery(client, args.id, args.run_id)
        if args.watch:
            await watch(args, client, description.run_id)
            return None
        return await query_status(client, args.id, args.run_id, args.timeout)

    try:
        result = run(go())
    except KeyboardInterrupt:
        if not args.watch:
            raise
        return 0
    if result is not None:
        emit(args, result, format_status(result))
    return 0


def incident_key_arg(text: str) -> str:
    """A --key value: one with something of a key in it, since an empty or all-symbol key would
    silently become `health` and join the health recovery."""
    if incident_key_from(text + "x") == "x":  # nothing left once unsafe characters go
        raise argparse.ArgumentTypeError(
            f"{printable(text)[:40]!r} has no letter, digit, '_' or '.' to make an incident key of")
    return text


def service_name(text: str) -> str:
    """A --service value: a policy name, so it cannot change the meaning of the list query."""
    if re.fullmatch(NAME_PATTERN, text) is None:
        raise argparse.ArgumentTypeError(
            f"{printable(text)!r} is not a service name (letters, digits, '_', '.', '-'; at most 63)")
    return text


PENDING_IN_PHASE: dict[str, list[DecisionKind]] = {
    Phase.AWAITING_APPROVAL.value: [DecisionKind.APPROVE, DecisionKind.ABORT],
    Phase.MANUAL_INTERVENTION.value: [DecisionKind.RESOLVE, DecisionKind.RETRY, DecisionKind.ABORT],
}
"""The decisions a recovery waits for in each phase that waits for one, read from MedkitPhase
so listing needs no query (and no worker) per row."""


def relative_age(delta: timedelta) -> str:
    """A duration as a person glances at it: 42s, 12m, 5h, 3d."""
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


LIST_HEADER = f"{'WORKFLOW ID':<45} {'PHASE':<18} {'SEVERITY':<9} {'OUTCOME':<10} {'AGE':>4}  PENDING"


def format_list(rows: list[dict[str, object]]) -> str:
    """The recoveries as a table with a header; fields from outside are made printable."""
    if not rows:
        return "no recoveries match"
    p = printable  # search attributes are whatever whoever started the workflow set
    lines = [LIST_HEADER]
    for r in rows:
        pending = r["pending_decision"]
        wanted = "/".join(str(kind) for kind in pending) if isinstance(pending, list) else "-"
        lines.append(
            f"{p(str(r['workflow_id'])):<45} {p(str(r['phase'] or '-')):<18} "
            f"{p(str(r['severity'] or '-')):<9} {p(str(r['outcome'] or r['status'])):<10} "
            f"{r['age']:>4}  {wanted}")
    return "\n".join(lines)


@guarded
def list_recoveries(args: argparse.Namespace) -> int:
    """List recoveries, newest first, filtered by service and phase through the search
    attributes (and, with --open, to the running ones)."""
    clauses = ["WorkflowType = 'RecoveryWorkflow'"]
    if args.open:
        clauses.append("ExecutionStatus = 'Running'")
    if args.service:
        clauses.append(f"MedkitService = '{args.service}'")
    if args.phase:
        clauses.append(f"MedkitPhase = '{args.phase}'")
    query = " AND ".join(clauses)

    async def go() -> list[dict[str, object]]:
        client = await connect_or_fail(target_from(args))
        rows: list[dict[str, object]] = []
        now = datetime.now(UTC)
        async for execution in client.list_workflows(query, limit=args.limit):
            attrs = execution.typed_search_attributes
            running = execution.status == WorkflowExecutionStatus.RUNNING
            phase = attrs.get(sa.PHASE)
            pending = PENDING_IN_PHASE.get(phase or "") if running else None
            state = execution.status.name.lower() if execution.status else "unknown"
            rows.append({
                "workflow_id": execution.id,
                "run_id": execution.run_id,
                "service": attrs.get(sa.SERVICE),
                "phase": phase,
                "severity": attrs.get(sa.SEVERITY),
                "outcome": attrs.get(sa.OUTCOME),
                "running": running,
                "status": state,
                "started_at": execution.start_time.isoformat(),
                "age": relative_age(now - execution.start_time),
                "pending_decision": [kind.value for kind in pending] if pending else None,
            })
        return rows

    rows = run(go())
    emit(args, rows, format_list(rows))
    return 0


def decide(kind: DecisionKind) -> object:
    """A command sending one decision as an update, so the verdict (or rejection) is printed."""
    @guarded
    def command(args: argparse.Namespace) -> int:
        decision = OperatorDecision(operator=args.operator, reason=args.reason or "",
                                    at=datetime.now(UTC))

        async def go() -> DecisionVerdict:
            client = await connect_or_fail(target_from(args))
            await require_recovery(client, args.id, args.run_id)
            try:
                return await send_decision(client, args.id, kind, decision, args.run_id,
                                           args.timeout)
            except NoWorkerAnswered as err:
                raise CommandError(str(err), NO_WORKER) from None
            except TemporalNotAnswering as err:
                raise temporal_stopped(err) from None
            except DecisionRejected as err:
                raise CommandError(str(err), "DecisionRejected") from None
            except RecoveryNotFound as err:
                raise CommandError(str(err), NOT_FOUND) from None
            except RPCError as err:
                raise CommandError(f"{kind.value} failed: {err.message}", TEMPORAL_ERROR) from None

        verdict = run(go())
        emit(args, verdict, printable(verdict.message))
        return 0
    return command


def add_run_id_arg(parser: argparse.ArgumentParser) -> None:
    """--run-id: one run of the recovery rather than the latest with that workflow id."""
    parser.add_argument("--run-id", help="this run of the recovery (default: the latest run "
                        "with the id; `medkit list -o json` shows run ids)")


def add_timeout_arg(parser: argparse.ArgumentParser) -> None:
    """--timeout: how long to wait for a worker to answer, so a recovery no worker runs gives a
    one-line error instead of a wait without end."""
    parser.add_argument("--timeout", type=positive_seconds, default=ANSWER_TIMEOUT_SECONDS,
                        metavar="SECONDS", help="how long to wait for a worker to answer "
                        f"(default {ANSWER_TIMEOUT_SECONDS:g})")


def register(subparsers: SubParsers) -> None:
    """Add trigger, status, list, approve, abort, resolve and retry."""
    parser = subparsers.add_parser(
        "trigger", help="start or join a recovery, as a detector would",
        description="Report a problem with SERVICE. A recovery already running for the same "
        "service and key is joined, never duplicated. Prints the workflow id.")
    parser.add_argument("--service", required=True, help="service name from the policy file")
    parser.add_argument("--severity", choices=[s.value for s in Severity],
                        help="severity floor (assessment may raise it)")
    parser.add_argument("--summary", default="reported by an operator", help="what is wrong")
    parser.add_argument("--key", default="health", type=incident_key_arg,
                        help="incident key: reports with the same key join one recovery "
                        "(letters, digits, '_', '.', '-'; others become '-'; default health)")
    parser.add_argument("--dry-run", action="store_true", help="simulate every action")
    add_config_arg(parser)
    add_temporal_args(parser)
    add_output_arg(parser)
    parser.set_defaults(func=trigger)

    parser = subparsers.add_parser(
        "status", help="show a recovery's phase and timeline",
        description="Print one recovery's phase, severity and attempts, when it started and "
        "ended (UTC), the decision it waits for with the command to give it, and its timeline. "
        "An id alone means the latest run with that id, which may be a past incident's until a "
        "detector reports the new one (`medkit list --open` shows the running ones).")
    parser.add_argument("id", help="workflow id, e.g. recovery:demo:health")
    add_run_id_arg(parser)
    parser.add_argument("--watch", action="store_true",
                        help="print again at each change until the recovery ends (Ctrl-C stops)")
    parser.add_argument("--interval", type=positive_seconds, default=1.0,
                        help="with --watch, seconds between checks (default 1)")
    add_timeout_arg(parser)
    add_temporal_args(parser)
    add_output_arg(parser)
    parser.set_defaults(func=status)

    parser = subparsers.add_parser(
        "list", help="list recoveries, newest first",
        description="List recoveries, newest first, from Temporal's search attributes: phase, "
        "severity, outcome, age and the decisions each waits for. A workflow id appears once "
        "per run.")
    parser.add_argument("--open", action="store_true",
                        help="only recoveries still running (and what they wait for)")
    parser.add_argument("--service", type=service_name, help="only this service")
    parser.add_argument("--phase", choices=[p.value for p in Phase], help="only this phase")
    parser.add_argument("--limit", type=int_between(1, LIST_LIMIT), default=50,
                        help=f"at most this many, 1 to {LIST_LIMIT} (default 50)")
    add_temporal_args(parser)
    add_output_arg(parser)
    parser.set_defaults(func=list_recoveries)

    helps = {
        DecisionKind.APPROVE: "approve the step awaiting approval",
        DecisionKind.ABORT: "abort a recovery (running work is cancelled)",
        DecisionKind.RESOLVE: "mark a recovery in ManualIntervention as resolved by a human",
        DecisionKind.RETRY: "run the remediation ladder again from ManualIntervention",
    }
    for kind, text in helps.items():
        parser = subparsers.add_parser(kind.value, help=text, description=text + ". Rejected, "
                                       "with the reason, when it does not fit the current phase.")
        parser.add_argument("id", help="workflow id")
        add_run_id_arg(parser)
        parser.add_argument("--operator", required=True, help="who decides (recorded)")
        parser.add_argument("--reason", help="why (recorded)")
        add_timeout_arg(parser)
        add_temporal_args(parser)
        add_output_arg(parser)
        parser.set_defaults(func=decide(kind))
