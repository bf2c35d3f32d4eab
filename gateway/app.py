"""The FastAPI application behind `medkit serve`: ingest, operator API, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from detectors.health_poller import HealthBoard, HealthPoller
from gateway.alertmanager import AlertmanagerPayload
from gateway.ingest import Ingestor
from gateway.mapping import (
    BatchRejected,
    PlannedReport,
    known_services,
    lookup_service,
    plan_alertmanager_batch,
)
from gateway.metrics import GatewayMetrics
from gateway.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    LatencyMiddleware,
    required_role,
)
from gateway.overview import DashboardSnapshot, IncidentSource, Overview
from gateway.schemas import (
    WORKFLOW_ID_PATTERN,
    BatchResult,
    BreakerReportResult,
    DecisionIn,
    DetectionIn,
    ErrorBody,
    IngestResult,
    PointsIn,
    RecoveryListItem,
    SeriesResult,
)
from gateway.series import PushedSeries, UnknownSeries
from gateway.settings import GatewaySettings
from gateway.temporal import (
    TemporalFailed,
    TemporalGateway,
    TemporalPayloadTooLarge,
    TemporalUnavailable,
)
from models.base import NAME_PATTERN
from models.breaker_entity import BreakerCommand, BreakerEntityState, OutcomeReport
from models.decisions import DecisionVerdict, OperatorDecision
from models.detection import Detection, incident_key_from
from models.health import FleetHealth
from models.phases import DecisionKind, Outcome, Phase
from models.status import RecoveryStatus
from workers.breaker_entities import BreakerEntityNotFound
from workers.client import DecisionRejected, RecoveryNotFound

DASHBOARD_DIR = FilePath(__file__).parent / "dashboard"
"""The operator dashboard's static files (HTML, JS, CSS; no build step), served at /dashboard."""

_bearer = HTTPBearer(auto_error=False, description="MEDKIT_DETECTOR_TOKEN or MEDKIT_OPERATOR_TOKEN")
"""Declares the bearer scheme in the OpenAPI spec; AuthMiddleware enforces it before the body is read."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid bearer token"},
    403: {"model": ErrorBody, "description": "a token of the other role"},
    413: {"model": ErrorBody, "description": "body larger than the limit (1 MiB), or reports "
                                              "Temporal refused as too large"},
    422: {"model": ErrorBody, "description": "malformed request or unknown service"},
    502: {"model": ErrorBody, "description": "Temporal answered with an unexpected error"},
    503: {"model": ErrorBody, "description": "Temporal unreachable: retry later"},
}

WorkflowId = Annotated[str, Path(pattern=WORKFLOW_ID_PATTERN, max_length=200,
                                 description="e.g. recovery:demo:health")]
BreakerName = Annotated[str, Path(pattern=NAME_PATTERN, description="the breaker entity's name, "
                                  "e.g. payments (its workflow id is breaker:payments)")]


RETRY_AFTER_SECONDS = 5
"""The `Retry-After` of every 503: Temporal being unreachable is usually brief (a restart)."""


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _unavailable(detail: str) -> JSONResponse:
    """A 503 with its `Retry-After`, so clients and load balancers know when to ask again."""
    response = _error(503, detail)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _clip(part: object) -> object:
    """A location part as shown: a label name in the location can be as long as the body."""
    if isinstance(part, str) and len(part) > 64:
        return part[:61] + "..."
    return part


def _field_errors(err: RequestValidationError | ValidationError) -> list[dict[str, Any]]:
    """Each error's location, message and type; the offending input is not echoed back (nor a
    long label name in the location, beyond its first characters)."""
    return [{"loc": [_clip(part) for part in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in err.errors()]


def _summary(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def unparsable_body(err: StarletteHTTPException) -> str | None:
    """Why the body could not be parsed as JSON, when `err` is FastAPI's own 400 for that (bytes
    that are not UTF-8, nesting deeper than the parser goes); None for any other HTTPException.
    The caller answers it as the 422 of every other malformed body."""
    if err.status_code != 400:
        return None
    cause = err.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 text (byte {cause.start} cannot be decoded)"
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    if isinstance(cause, ValueError):
        return type(cause).__name__
    return None


def create_app(settings: GatewaySettings, temporal: TemporalGateway,
               metrics: GatewayMetrics | None = None, *, poller: HealthPoller | None = None,
               board: HealthBoard | None = None, incidents: IncidentSource | None = None,
               temporal_ui: str | None = None) -> FastAPI:
    """The gateway app for one policy and one Temporal target.

    Health scores come from `poller` (run for the app's lifetime; `medkit serve` gives it a
    score-only one) or from a `board` another poller keeps (`medkit dev`); with neither, every
    service shows as unknown. `incidents` (the store, or its opener) feeds the dashboard's incident
    list and MTTR, and `temporal_ui` (the Temporal UI's base URL) its links.
    """
    metrics = metrics or GatewayMetrics()
    ingestor = Ingestor(temporal, metrics, settings.dry_run, settings.send_concurrency)
    pushed = PushedSeries(settings.policy, ingestor, metrics)
    health = poller.board if poller is not None else board or HealthBoard(settings.policy.services)
    overview = Overview(health, temporal, pushed, incidents, temporal_ui)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        """Run the score-keeping poller, if any, while the app serves."""
        task = asyncio.create_task(poller.run()) if poller is not None else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="medkit gateway",
        version="1",
        summary="Alertmanager and detector ingest, and the operator API of medkit recoveries.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.temporal = temporal
    app.state.pushed_series = pushed
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, auth=settings.auth, metrics=metrics)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    secured = [Depends(_bearer)]

    def reject(request: Request, reason: str) -> None:
        role = required_role(request.url.path)
        metrics.rejected.labels(role.value if role else "open", reason).inc()

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, err: RequestValidationError) -> JSONResponse:
        reject(request, "malformed")
        errors = _field_errors(err)
        return _error(422, _summary(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        why = unparsable_body(err)
        if why is None:
            return await http_exception_handler(request, err)
        reject(request, "malformed")
        message = f"not valid JSON: {why}"
        return _error(422, f"body: {message}",
                      errors=[{"loc": ["body"], "msg": message, "type": "json_invalid"}])

    @app.exception_handler(BatchRejected)
    async def batch_rejected(request: Request, err: BatchRejected) -> JSONResponse:
        reject(request, err.reason)
        return _error(422, f"nothing was accepted: {err.problems[0]}"
                      + (f" (and {len(err.problems) - 1} more)" if len(err.problems) > 1 else ""),
                      errors=[{"msg": p} for p in err.problems])

    @app.exception_handler(TemporalUnavailable)
    async def unavailable(request: Request, err: TemporalUnavailable) -> JSONResponse:
        metrics.temporal_errors.labels("unavailable").inc()
        return _unavailable(str(err))

    @app.exception_handler(TemporalPayloadTooLarge)
    async def too_large(request: Request, err: TemporalPayloadTooLarge) -> JSONResponse:
        """Not 503: Alertmanager retries 5xx forever, and the same request can never succeed."""
        metrics.temporal_errors.labels("too_large").inc()
        return _error(413, str(err))

    @app.exception_handler(TemporalFailed)
    async def failed(request: Request, err: TemporalFailed) -> JSONResponse:
        metrics.temporal_errors.labels("failed").inc()
        return _error(502, str(err))

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up (it does not check Temporal: see /readyz)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
    async def readyz() -> Response:
        """Ready when Temporal has the gateway's namespace and answers a health check."""
        reason = await temporal.unready_reason()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return _unavailable(reason)

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus exposition format."""
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/health", response_model=FleetHealth, tags=["health"])
    async def health_scores() -> FleetHealth:
        """Each polled service's 0-100 health score and status, and the fleet's (its worst
        status, its lowest score); see docs/dashboard.md for the formula."""
        return health.fleet()

    @app.get("/v1/dashboard", response_model=DashboardSnapshot, responses=_ERRORS,
             dependencies=secured, tags=["operator"])
    async def dashboard_snapshot() -> DashboardSnapshot:
        """Everything the dashboard shows in one read: health, open recoveries with their pending
        decisions, recent incidents, MTTR per service, pushed series. A source that is down
        leaves its part empty with the reason (`recoveries_error`, `incidents_error`)."""
        return await overview.snapshot()

    app.mount("/dashboard", StaticFiles(directory=DASHBOARD_DIR, html=True), name="dashboard")

    @app.post("/v1/alerts/alertmanager", status_code=202, response_model=BatchResult,
              responses=_ERRORS, dependencies=secured, tags=["ingest"])
    async def alertmanager(payload: AlertmanagerPayload) -> BatchResult:
        """Alertmanager webhook receiver (payload version 4).

        The whole batch is validated first: one alert naming an unknown service rejects the
        batch (422) and nothing is sent. Firing alerts start or join `recovery:<service>:
        <alertname>`; resolved alerts are reported to the running recovery only.
        """
        planned = plan_alertmanager_batch(payload, settings.policy, settings.service_labels)
        results = await ingestor.deliver(planned, "alertmanager")
        return BatchResult(accepted=len(results), results=results)

    @app.post("/v1/detections", status_code=202, response_model=IngestResult,
              responses=_ERRORS, dependencies=secured, tags=["ingest"])
    async def detections(body: DetectionIn) -> IngestResult:
        """A detection from any detector or script; starts or joins the recovery (its id is returned)."""
        service = lookup_service(settings.policy, body.service)
        if service is None:
            raise BatchRejected("unknown_service", [f"unknown service {body.service!r}; the policy "
                                                    f"defines: {known_services(settings.policy)}"])
        try:
            detection = Detection(
                detection_id=body.detection_id or f"http-{uuid.uuid4()}", service=service.name,
                incident_key=incident_key_from(body.incident_key), source="http",
                severity=body.severity, summary=body.summary, labels=body.labels, status=body.status,
                detected_at=body.detected_at or datetime.now(UTC),
            )
        except ValidationError as err:
            raise BatchRejected("malformed", [_summary(_field_errors(err))]) from None
        [result] = await ingestor.deliver([PlannedReport(detection=detection, policy=service)], "http")
        return result

    @app.post("/v1/series/{name}/points", response_model=SeriesResult,
              responses={**_ERRORS, 404: {"model": ErrorBody,
                                          "description": "no pushed series of that name"}},
              dependencies=secured, tags=["ingest"])
    async def series_points(request: Request, name: Annotated[str, Path(max_length=200)],
                            body: PointsIn) -> SeriesResult:
        """Points of a pushed (`source: push`) anomaly series, scored in order by its detector.

        The body is one point `{timestamp, value}` or a list of them in strictly increasing time
        order, each after the series' last point. The whole batch is checked first (422, nothing
        scored); a detection starts or joins `recovery:<service>:anomaly-<series>`. On 503/502
        nothing of the batch is kept: re-send the same batch.
        """
        try:
            return await pushed.push(name, body.root)
        except UnknownSeries as err:
            reject(request, "unknown_series")
            raise HTTPException(404, str(err)) from None

    @app.get("/v1/recoveries", response_model=list[RecoveryListItem], responses=_ERRORS,
             dependencies=secured, tags=["operator"])
    async def list_recoveries(
        service: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
        phase: Phase | None = None,
        outcome: Outcome | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[RecoveryListItem]:
        """Recoveries filtered through the search attributes; filter values are validated,
        so nothing but a service name or a known phase/outcome reaches the query."""
        clauses = ["WorkflowType = 'RecoveryWorkflow'"]
        if service is not None:
            clauses.append(f"MedkitService = '{service}'")
        if phase is not None:
            clauses.append(f"MedkitPhase = '{phase.value}'")
        if outcome is not None:
            clauses.append(f"MedkitOutcome = '{outcome.value}'")
        rows = await temporal.list_recoveries(" AND ".join(clauses), limit)
        return [RecoveryListItem(**vars(row)) for row in rows]

    @app.get("/v1/recoveries/{workflow_id}", response_model=RecoveryStatus,
             responses={**_ERRORS, 404: {"model": ErrorBody}}, dependencies=secured, tags=["operator"])
    async def recovery_status(workflow_id: WorkflowId) -> RecoveryStatus:
        """The recovery's status query: phase, pending decision, timeline."""
        try:
            return await temporal.status(workflow_id)
        except RecoveryNotFound as err:
            raise HTTPException(404, str(err)) from None

    @app.post("/v1/recoveries/{workflow_id}/{decision}", response_model=DecisionVerdict,
              responses={**_ERRORS, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
              dependencies=secured, tags=["operator"])
    async def decide(workflow_id: WorkflowId, decision: DecisionKind, body: DecisionIn) -> DecisionVerdict:
        """approve | abort | resolve | retry. 409 with the reason when the recovery refuses it."""
        stamped = OperatorDecision(operator=body.operator, reason=body.reason, at=datetime.now(UTC))
        try:
            return await temporal.decide(workflow_id, decision, stamped)
        except DecisionRejected as err:
            raise HTTPException(409, str(err)) from None
        except RecoveryNotFound:
            pass
        try:
            ended = await temporal.status(workflow_id)
        except RecoveryNotFound as err:
            raise HTTPException(404, str(err)) from None
        raise HTTPException(409, f"{decision.value} rejected: the recovery already ended as "
                            f"{ended.phase.value}")

    @app.get("/v1/breakers/{name}", response_model=BreakerEntityState,
             responses={**_ERRORS, 404: {"model": ErrorBody, "description": "no such breaker entity"}},
             dependencies=secured, tags=["breakers"])
    async def breaker_status(name: BreakerName) -> BreakerEntityState:
        """The durable breaker entity's status: state, `traffic_fraction`, counters, transitions.
        Detector (the library's follower) or operator token."""
        try:
            return await temporal.breaker_status(name)
        except BreakerEntityNotFound as err:
            raise HTTPException(404, str(err)) from None

    @app.post("/v1/breakers/{name}/report", status_code=202, response_model=BreakerReportResult,
              responses=_ERRORS, dependencies=secured, tags=["breakers"])
    async def breaker_report(name: BreakerName, body: OutcomeReport) -> BreakerReportResult:
        """One call outcome (or a process's aggregate) for the entity; starts the entity with the
        default settings if none is running. Detector token."""
        workflow_id, started = await temporal.breaker_report(name, body)
        return BreakerReportResult(workflow_id=workflow_id, started=started)

    @app.post("/v1/breakers/{name}/command", response_model=BreakerEntityState,
              responses={**_ERRORS, 404: {"model": ErrorBody, "description": "no such breaker entity"}},
              dependencies=secured, tags=["breakers"])
    async def breaker_command(name: BreakerName, body: BreakerCommand) -> BreakerEntityState:
        """Trip (open for `open_for`) or reset (close) the entity now; answers its new status.
        Operator token."""
        try:
            return await temporal.breaker_command(name, body)
        except BreakerEntityNotFound as err:
            raise HTTPException(404, str(err)) from None

    return app
