"""Operator commands: trigger, status, list, and the decisions approve / abort / resolve / retry."""

from __future__ import annotations

import argparse
import re
import uuid
from datetime import UTC, datetime

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from cli.common import (
    CommandError,
    SubParsers,
    add_config_arg,
    add_output_arg,
    add_temporal_args,
    connect_or_fail,
    emit,
    guarded,
    load_policy,
    policy_path,
    printable,
    run,
    target_from,
)
from models import search_attributes as sa
from models.base import NAME_PATTERN
from models.decisions import DecisionVerdict, OperatorDecision
from models.detection import Detection, incident_key_from
from models.phases import DecisionKind, Phase, Severity
from models.status import RecoveryStatus
from workers.client import (
    DecisionRejected,
    RecoveryNotFound,
    fetch_status,
    send_decision,
    start_or_join_recovery,
)
from workflows.fleet import FleetCoordinatorWorkflow
from workflows.recovery import RecoveryWorkflow


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


async def require_recovery(client: Client, workflow_id: str) -> None:
    """Fail with one line unless `workflow_id` names a recovery (running or ended).

    The status query and the decision updates exist only on RecoveryWorkflow. Sent to another
    workflow, the fleet coordinator above all (its id sits next to the recoveries in the UI and
    in `temporal workflow list`), the query fails deep in the SDK, an update is refused with a
    message about missing handlers, and a closed one has them wait for a worker to replay it;
    its type, from describe(), tells at once."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CommandError(f"no recovery with id {workflow_id!r}") from None
        raise CommandError(f"cannot look up {workflow_id!r}: {err.message}") from None
    kind = description.workflow_type
    if kind == FleetCoordinatorWorkflow.__name__:
        raise CommandError(f"{workflow_id} is the fleet coordinator, not a recovery (`medkit "
                           "list` shows the recoveries)")
    if kind != RecoveryWorkflow.__name__:
        raise CommandError(f"{workflow_id} is a {kind} workflow, not a recovery")


@guarded
def trigger(args: argparse.Namespace) -> int:
    """Start or join a recovery as a detector would; print the workflow id."""
    policy_file = load_policy(policy_path(args))
    try:
        policy = policy_file.service(args.service)
    except KeyError as err:
        raise CommandError(str(err.args[0])) from None
    detection = Detection(
        detection_id=str(uuid.uuid4()), service=args.service,
        incident_key=incident_key_from(args.key), source="cli",
        severity=Severity(args.severity) if args.severity else None,
        summary=args.summary, detected_at=datetime.now(UTC),
    )

    async def go() -> str:
        target = target_from(args)
        client = await connect_or_fail(target)
        handle = await start_or_join_recovery(client, detection, policy, target.task_queue,
                                              dry_run=args.dry_run)
        return handle.id

    workflow_id = run(go())
    emit(args, {"workflow_id": workflow_id}, workflow_id)
    return 0


@guarded
def status(args: argparse.Namespace) -> int:
    """Print one recovery's status and timeline."""
    async def go() -> RecoveryStatus:
        client = await connect_or_fail(target_from(args))
        await require_recovery(client, args.id)
        try:
            return await fetch_status(client, args.id)
        except RecoveryNotFound as err:
            raise CommandError(str(err)) from None
        except RPCError as err:
            raise CommandError(f"cannot query {args.id!r}: {err.message}") from None

    result = run(go())
    emit(args, result, format_status(result))
    return 0


def service_name(text: str) -> str:
    """A --service value: a policy name, so it cannot change the meaning of the list query."""
    if re.fullmatch(NAME_PATTERN, text) is None:
        raise argparse.ArgumentTypeError(
            f"{printable(text)!r} is not a service name (letters, digits, '_', '.', '-'; at most 63)")
    return text


@guarded
def list_recoveries(args: argparse.Namespace) -> int:
    """List recoveries, filtered by service and phase through the search attributes."""
    clauses = ["WorkflowType = 'RecoveryWorkflow'"]
    if args.service:
        clauses.append(f"MedkitService = '{args.service}'")
    if args.phase:
        clauses.append(f"MedkitPhase = '{args.phase}'")
    query = " AND ".join(clauses)

    async def go() -> list[dict[str, object]]:
        client = await connect_or_fail(target_from(args))
        rows: list[dict[str, object]] = []
        async for execution in client.list_workflows(query, limit=args.limit):
            attrs = execution.typed_search_attributes
            rows.append({
                "workflow_id": execution.id,
                "service": attrs.get(sa.SERVICE),
                "phase": attrs.get(sa.PHASE),
                "severity": attrs.get(sa.SEVERITY),
                "outcome": attrs.get(sa.OUTCOME),
                "running": execution.status == WorkflowExecutionStatus.RUNNING,
                "started_at": execution.start_time.isoformat(),
            })
        return rows

    rows = run(go())
    p = printable  # search attributes are whatever whoever started the workflow set
    text = "\n".join(
        f"{p(str(r['workflow_id'])):<45} {p(str(r['phase'] or '-')):<18} "
        f"{p(str(r['severity'] or '-')):<9} {p(str(r['outcome'] or 'running')):<10} "
        f"{r['started_at']}" for r in rows
    ) or "no recoveries match"
    emit(args, rows, text)
    return 0


def decide(kind: DecisionKind) -> object:
    """A command sending one decision as an update, so the verdict (or rejection) is printed."""
    @guarded
    def command(args: argparse.Namespace) -> int:
        decision = OperatorDecision(operator=args.operator, reason=args.reason or "",
                                    at=datetime.now(UTC))

        async def go() -> DecisionVerdict:
            client = await connect_or_fail(target_from(args))
            await require_recovery(client, args.id)
            try:
                return await send_decision(client, args.id, kind, decision)
            except (DecisionRejected, RecoveryNotFound) as err:
                raise CommandError(str(err)) from None
            except RPCError as err:
                raise CommandError(f"{kind.value} failed: {err.message}") from None

        verdict = run(go())
        emit(args, verdict, printable(verdict.message))
        return 0
    return command


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
    parser.add_argument("--key", default="health",
                        help="incident key: reports with the same key join one recovery")
    parser.add_argument("--dry-run", action="store_true", help="simulate every action")
    add_config_arg(parser)
    add_temporal_args(parser)
    add_output_arg(parser)
    parser.set_defaults(func=trigger)

    parser = subparsers.add_parser("status", help="show a recovery's phase and timeline")
    parser.add_argument("id", help="workflow id, e.g. recovery:demo:health")
    add_temporal_args(parser)
    add_output_arg(parser)
    parser.set_defaults(func=status)

    parser = subparsers.add_parser("list", help="list recoveries")
    parser.add_argument("--service", type=service_name, help="only this service")
    parser.add_argument("--phase", choices=[p.value for p in Phase], help="only this phase")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
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
        parser.add_argument("--operator", required=True, help="who decides (recorded)")
        parser.add_argument("--reason", help="why (recorded)")
        add_temporal_args(parser)
        add_output_arg(parser)
        parser.set_defaults(func=decide(kind))
