"""Notifiers against real local receivers: Slack, PagerDuty, signed webhooks and SMTP (with STARTTLS).

The HTTP receivers check each body against the vendor's documented fields and answer like the
vendor does (400 for an invalid body); retry behaviour runs through a real Temporal worker on
the time-skipping server with the real `notify` activity and the workflow's retry policy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import ssl
import subprocess
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import BaseModel, TypeAdapter, ValidationError
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deps import ActivityDeps
from activities.notify import NotifyActivities
from activities.notify_delivery import MAX_RETRY_AFTER, retry_after
from activities.notify_email import send_email
from activities.notify_pagerduty import EVENT_ACTION, dedup_key, pagerduty_event
from activities.notify_slack import send_slack, slack_message
from activities.notify_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, send_webhook
from models.notifications import (
    EmailRoute,
    Notification,
    NotificationEvent,
    NotificationRoute,
    NotifyRequest,
    NotifyResult,
    PagerDutyRoute,
    SlackRoute,
    WebhookRoute,
)
from models.phases import Phase, Severity
from tests.conftest import WebhookReceiver, free_port
from workflows.recovery import NOTIFY_RETRY

ROUTING_KEY = "R0123456789abcdef0123456789abcde"
"""A 32-character integration key, the documented shape of a routing key."""


def notification(event: NotificationEvent = "emergency", **changes: Any) -> Notification:
    """A notification as RecoveryWorkflow would send it."""
    values: dict[str, Any] = dict(
        workflow_id="recovery:checkout:inc-1", service="checkout", event=event,
        phase=Phase.EMERGENCY_RECOVERY, severity=Severity.CRITICAL,
        title="checkout: critical incident", text="error rate 42% > 5% <b>since</b> 10:02 & rising",
        evidence=["http probe healthz: 503", "error_rate=0.42"],
        command="medkit approve recovery:checkout:inc-1 --operator NAME --reason TEXT",
        dedup_key="recovery:checkout:inc-1/5d1c1e4e-0000-4000-8000-000000000001",
        notification_id="recovery:checkout:inc-1/5d1c1e4e-0000-4000-8000-000000000001/1",
    )
    values.update(changes)
    return Notification(**values)


def request(route: NotificationRoute, note: Notification | None = None,
            name: str = "oncall") -> NotifyRequest:
    """The notify activity's argument."""
    return NotifyRequest(route_name=name, route=route, notification=note or notification())


# ----- vendor receivers -------------------------------------------------------------------------


@dataclass
class Reply:
    """One HTTP answer."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class VendorReceiver:
    """A real HTTP server that validates bodies like the vendor and answers as scripted."""

    port: int
    validate: Callable[[Any], list[str]]
    accept: Callable[[Any], Reply]
    invalid: Callable[[list[str]], Reply]
    script: deque[Reply] = field(default_factory=deque)
    bodies: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self.port}/services/T000/B000/secret-token"



def serve(receiver: VendorReceiver) -> Iterator[VendorReceiver]:
    """Run the receiver on its port until the test ends."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw)
            except ValueError:
                body, problems = None, ["body is not JSON"]
            else:
                problems = receiver.validate(body)
            receiver.bodies.append(body)
            receiver.problems.extend(problems)
            if problems:
                reply = receiver.invalid(problems)
            elif receiver.script:
                reply = receiver.script.popleft()
            else:
                reply = receiver.accept(body)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield receiver
    server.shutdown()
    server.server_close()


SLACK_BLOCK_TYPES = {"header", "section", "context", "divider"}


def _mrkdwn_problems(where: str, text: Any, limit: int) -> list[str]:
    if not isinstance(text, dict) or text.get("type") not in ("mrkdwn", "plain_text"):
        return [f"{where}: not a text object"]
    value = text.get("text")
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        return [f"{where}: text must be 1..{limit} characters"]
    if text["type"] == "mrkdwn" and ("<" in value or ">" in value):
        return [f"{where}: unescaped < or > in mrkdwn"]
    return []


def validate_slack(body: Any) -> list[str]:
    """Incoming-webhook body rules from Slack's Block Kit reference (header, section, context)."""
    if not isinstance(body, dict):
        return ["body must be an object"]
    problems: list[str] = []
    if not isinstance(body.get("text"), str) or not body["text"]:
        problems.append("text fallback is required with blocks")
    blocks = body.get("blocks")
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
        return [*problems, "blocks must be a list of 1..50 blocks"]
    for index, block in enumerate(blocks):
        where = f"blocks[{index}]"
        kind = block.get("type")
        if kind not in SLACK_BLOCK_TYPES:
            problems.append(f"{where}: unknown block type {kind!r}")
        elif kind == "header":
            if block["text"].get("type") != "plain_text":
                problems.append(f"{where}: header text must be plain_text")
            problems += _mrkdwn_problems(where, block["text"], 150)
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                problems.append(f"{where}: section needs text or fields")
            if "text" in block:
                problems += _mrkdwn_problems(where, block["text"], 3000)
            fields = block.get("fields", [])
            if len(fields) > 10:
                problems.append(f"{where}: at most 10 fields")
            for number, item in enumerate(fields):
                problems += _mrkdwn_problems(f"{where}.fields[{number}]", item, 2000)
        elif kind == "context":
            elements = block.get("elements", [])
            if not 0 < len(elements) <= 10:
                problems.append(f"{where}: context needs 1..10 elements")
            for number, item in enumerate(elements):
                problems += _mrkdwn_problems(f"{where}.elements[{number}]", item, 3000)
    return problems


PD_TOP_LEVEL = {"routing_key", "event_action", "dedup_key", "payload", "images", "links", "client",
                "client_url"}
PD_PAYLOAD = {"summary", "source", "severity", "timestamp", "component", "group", "class",
              "custom_details"}


def validate_pagerduty(body: Any) -> list[str]:
    """Events API v2 alert-event rules from PagerDuty's developer documentation."""
    if not isinstance(body, dict):
        return ["body must be an object"]
    problems = [f"unknown field {key!r}" for key in body if key not in PD_TOP_LEVEL]
    if not isinstance(body.get("routing_key"), str) or len(body["routing_key"]) != 32:
        problems.append("routing_key must be the 32-character integration key")
    action = body.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        problems.append("event_action must be trigger, acknowledge or resolve")
    key = body.get("dedup_key")
    if key is not None and (not isinstance(key, str) or len(key) > 255):
        problems.append("dedup_key must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not key:
        problems.append(f"{action} needs the dedup_key of the alert")
    if action == "trigger":
        payload = body.get("payload")
        if not isinstance(payload, dict):
            return [*problems, "trigger needs a payload"]
        problems += [f"unknown payload field {key!r}" for key in payload if key not in PD_PAYLOAD]
        summary = payload.get("summary")
        if not isinstance(summary, str) or not 0 < len(summary) <= 1024:
            problems.append("payload.summary must be 1..1024 characters")
        if not isinstance(payload.get("source"), str) or not payload["source"]:
            problems.append("payload.source is required")
        if payload.get("severity") not in ("critical", "error", "warning", "info"):
            problems.append("payload.severity must be critical, error, warning or info")
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
            problems.append("payload.custom_details must be an object")
    return problems


def _json_reply(status: int, body: dict[str, Any], **headers: str) -> Reply:
    return Reply(status, json.dumps(body).encode(), {"Content-Type": "application/json", **headers})


def pagerduty_busy(retry_after: str | None = None) -> Reply:
    """PagerDuty's 429 answer."""
    headers = {"Retry-After": retry_after} if retry_after else {}
    return _json_reply(429, {"status": "throttle event", "message": "Requests for this service are "
                             "arriving too quickly"}, **headers)


@pytest.fixture
def slack() -> Iterator[VendorReceiver]:
    """A Slack incoming-webhook stand-in: 200 `ok`, or 400 `invalid_blocks`."""
    yield from serve(VendorReceiver(
        port=free_port(), validate=validate_slack,
        accept=lambda body: Reply(200, b"ok", {"Content-Type": "text/html"}),
        invalid=lambda problems: Reply(400, b"invalid_blocks", {"Content-Type": "text/html"}),
    ))


@pytest.fixture
def pagerduty() -> Iterator[VendorReceiver]:
    """A PagerDuty Events API v2 stand-in: 202 `success`, or 400 `invalid event`."""
    yield from serve(VendorReceiver(
        port=free_port(), validate=validate_pagerduty,
        accept=lambda body: _json_reply(202, {"status": "success", "message": "Event processed",
                                              "dedup_key": body.get("dedup_key")}),
        invalid=lambda problems: _json_reply(400, {"status": "invalid event", "message":
                                                   "Event object is invalid", "errors": problems}),
    ))


@pytest.fixture
async def http() -> Any:
    """A real HTTP client, as the worker's ActivityDeps holds one."""
    async with httpx.AsyncClient() as client:
        yield client


# ----- a tiny workflow that runs the real notify activity ----------------------------------------


class NotifyPlan(BaseModel):
    """Notify requests to run in order; `same_step` reuses one activity id, as a retry would."""

    requests: list[NotifyRequest]
    same_step: bool = False


class Outcome(BaseModel):
    """What one notify activity ended with."""

    result: NotifyResult | None = None
    error_type: str | None = None
    message: str | None = None


@workflow.defn(sandboxed=False)
class NotifyWorkflow:
    """Calls `notify` with RecoveryWorkflow's retry policy and reports each outcome."""

    @workflow.run
    async def run(self, plan: NotifyPlan) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for index, item in enumerate(plan.requests):
            try:
                result = await workflow.execute_activity(
                    "notify", item, result_type=NotifyResult,
                    activity_id="notify" if plan.same_step else f"notify-{index}",
                    start_to_close_timeout=timedelta(seconds=30), retry_policy=NOTIFY_RETRY,
                )
                outcomes.append(Outcome(result=result))
            except ActivityError as err:
                cause = err.cause
                assert isinstance(cause, ApplicationError)
                outcomes.append(Outcome(error_type=cause.type, message=cause.message))
        return outcomes


async def run_plan(env: WorkflowEnvironment, tmp_path: Path, plan: NotifyPlan) -> tuple[list[Outcome], Any]:
    """Run the plan on a worker with the real notify activity; the outcomes and the history."""
    queue = f"notify-{uuid.uuid4()}"
    deps = ActivityDeps.create(tmp_path / "state")
    try:
        async with Worker(env.client, task_queue=queue, workflows=[NotifyWorkflow],
                          activities=[NotifyActivities(deps).notify]):
            handle = await env.client.start_workflow(
                NotifyWorkflow.run, plan, id=f"notify-test-{uuid.uuid4()}", task_queue=queue,
            )
            outcomes = await handle.result()
            history = await handle.fetch_history()
    finally:
        await deps.http.aclose()
    return outcomes, history


def retry_delays(history: Any) -> list[timedelta]:
    """The next_retry_delay of every failed attempt that a later attempt followed."""
    delays = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            failure = event.activity_task_started_event_attributes.last_failure
            if failure.HasField("application_failure_info"):
                info = failure.application_failure_info
                delays.append(info.next_retry_delay.ToTimedelta())
    return delays


# ----- Slack ------------------------------------------------------------------------------------


async def test_slack_posts_valid_block_kit_with_facts_evidence_and_command(
    slack: VendorReceiver, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_ONCALL_URL", slack.url)
    result = await send_slack(http, request(SlackRoute(webhook_url_env="SLACK_ONCALL_URL")),
                              SlackRoute(webhook_url_env="SLACK_ONCALL_URL"))
    assert result.delivered and result.status_code == 200
    assert slack.problems == []
    (body,) = slack.bodies
    header, facts, evidence, command, context = body["blocks"]
    assert header["text"]["text"] == "checkout: critical incident"
    fields = [item["text"] for item in facts["fields"]]
    assert fields == ["*Service*\ncheckout", "*Severity*\ncritical", "*Phase*\nEmergencyRecovery",
                      "*Event*\nemergency"]
    assert facts["text"]["text"] == "error rate 42% &gt; 5% &lt;b&gt;since&lt;/b&gt; 10:02 &amp; rising"
    assert "• http probe healthz: 503" in evidence["text"]["text"]
    assert "medkit approve recovery:checkout:inc-1" in command["text"]["text"]
    assert "recovery:checkout:inc-1" in context["elements"][0]["text"]
    assert body["text"].startswith("checkout: critical incident: error rate 42% &gt; 5%")


def test_slack_message_fits_block_kit_limits_and_omits_absent_parts() -> None:
    long = notification(title="t" * 400, text="&" * 5000, evidence=[], command=None, severity=None)
    message = slack_message(long)
    assert validate_slack(message) == []
    assert [block["type"] for block in message["blocks"]] == ["header", "section", "context"]
    assert message["blocks"][1]["fields"][1]["text"] == "*Severity*\nunknown"
    assert message["blocks"][1]["text"]["text"].endswith("&amp;…")


async def test_slack_429_is_retried_after_retry_after(
    dev_env: WorkflowEnvironment, tmp_path: Path, slack: VendorReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the real dev server, whose history records the delay the failed attempt asked for."""
    monkeypatch.setenv("SLACK_ONCALL_URL", slack.url)
    slack.script.append(Reply(429, b"rate_limited", {"Retry-After": "2"}))
    outcomes, history = await run_plan(dev_env, tmp_path, NotifyPlan(
        requests=[request(SlackRoute(webhook_url_env="SLACK_ONCALL_URL"))]))
    (outcome,) = outcomes
    assert outcome.result is not None and outcome.result.delivered
    assert len(slack.bodies) == 2 and slack.bodies[0] == slack.bodies[1]
    assert retry_delays(history) == [timedelta(seconds=2)]


async def test_slack_4xx_is_not_retried_and_hides_the_url(
    ts_env: WorkflowEnvironment, tmp_path: Path, slack: VendorReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_ONCALL_URL", slack.url)
    slack.script.append(Reply(404, b"channel_not_found"))
    outcomes, _ = await run_plan(ts_env, tmp_path, NotifyPlan(
        requests=[request(SlackRoute(webhook_url_env="SLACK_ONCALL_URL"))]))
    assert outcomes == [Outcome(error_type="DeliveryRejected",
                                message="route 'oncall' answered HTTP 404")]
    assert len(slack.bodies) == 1


async def test_unreachable_slack_is_retryable_without_echoing_the_secret_url(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_ONCALL_URL", f"http://127.0.0.1:{free_port()}/services/secret-token")
    route = SlackRoute(webhook_url_env="SLACK_ONCALL_URL")
    with pytest.raises(ApplicationError) as caught:
        await send_slack(http, request(route), route)
    assert caught.value.type == "DeliveryRetryable" and not caught.value.non_retryable
    assert "secret-token" not in str(caught.value) and caught.value.__cause__ is None


@pytest.mark.parametrize(("url", "reason"), [
    # a value pasted with its quotes: httpx sees no http(s) scheme
    ('"https://hooks.example/services/T0/B0/secret-token"', "it is not an http:// or https:// URL"),
    # a "/" in the password ends the authority early: httpx's message quotes the password
    ("http://medkit:secret-token/x@127.0.0.1:1/services/T0", "Invalid port"),
    ("http://127.0.0.1:99999/services/secret-token", "its port is not in 1-65535"),
])
async def test_a_webhook_url_that_cannot_be_requested_is_rejected_without_echoing_it(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, url: str, reason: str
) -> None:
    """A URL from the environment is not validated. One httpx refuses before sending cannot
    work on any retry: it was retried (DeliveryRetryable, or a plain InvalidURL whose message
    quoted the password), holding back the page for six attempts."""
    monkeypatch.setenv("SLACK_ONCALL_URL", url)
    route = SlackRoute(webhook_url_env="SLACK_ONCALL_URL")
    with pytest.raises(ApplicationError) as caught:
        await send_slack(http, request(route), route)
    assert (caught.value.type, caught.value.non_retryable) == ("DeliveryRejected", True)
    assert caught.value.message == f"route 'oncall' URL cannot be requested: {reason}"
    assert caught.value.__cause__ is None


async def test_missing_secret_names_the_variable(ts_env: WorkflowEnvironment, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDKIT_TEST_UNSET", raising=False)
    outcomes, _ = await run_plan(ts_env, tmp_path, NotifyPlan(
        requests=[request(SlackRoute(webhook_url_env="MEDKIT_TEST_UNSET"))]))
    (outcome,) = outcomes
    assert outcome.error_type == "MissingSecret"
    assert "env var MEDKIT_TEST_UNSET" in (outcome.message or "")


@pytest.mark.parametrize(("header", "expected"), [
    ("7", timedelta(seconds=7)),
    ("Wed, 21 Oct 2015 07:28:30 GMT", timedelta(seconds=30)),
    ("86400", MAX_RETRY_AFTER),
    ("0", None), ("soon", None), (None, None),
])
def test_retry_after_accepts_seconds_and_dates_and_is_capped(
    header: str | None, expected: timedelta | None
) -> None:
    response = httpx.Response(429, headers={"Retry-After": header} if header else {})
    assert retry_after(response, now=datetime(2015, 10, 21, 7, 28, tzinfo=UTC)) == expected


# ----- PagerDuty --------------------------------------------------------------------------------


def pd_route(receiver: VendorReceiver) -> PagerDutyRoute:
    """A PagerDuty route aimed at the local receiver."""
    return PagerDutyRoute(routing_key_env="PD_ROUTING_KEY", events_url=f"http://127.0.0.1:{receiver.port}/v2/enqueue")


async def test_pagerduty_triggers_acknowledges_and_resolves_one_alert(
    ts_env: WorkflowEnvironment, tmp_path: Path, pagerduty: VendorReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PD_ROUTING_KEY", ROUTING_KEY)
    route = pd_route(pagerduty)
    events: list[NotificationEvent] = ["emergency", "acknowledged", "recovered"]
    outcomes, _ = await run_plan(ts_env, tmp_path, NotifyPlan(
        requests=[request(route, notification(event)) for event in events]))
    assert all(o.result is not None and o.result.status_code == 202 for o in outcomes)
    assert pagerduty.problems == []
    trigger, ack, resolve = pagerduty.bodies
    assert [b["event_action"] for b in pagerduty.bodies] == ["trigger", "acknowledge", "resolve"]
    assert {b["dedup_key"] for b in pagerduty.bodies} == {notification().dedup_key}
    assert {b["routing_key"] for b in pagerduty.bodies} == {ROUTING_KEY}
    payload = trigger["payload"]
    assert payload["severity"] == "critical" and payload["component"] == "checkout"
    assert payload["source"] == "checkout"
    assert payload["summary"].startswith("checkout: critical incident: error rate 42%")
    details = payload["custom_details"]
    assert details["evidence"] == ["http probe healthz: 503", "error_rate=0.42"]
    assert details["phase"] == "EmergencyRecovery"
    assert details["workflow_id"] == "recovery:checkout:inc-1"
    assert "payload" not in ack and "payload" not in resolve


async def test_pagerduty_retries_429_and_5xx_then_delivers(
    ts_env: WorkflowEnvironment, tmp_path: Path, pagerduty: VendorReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PD_ROUTING_KEY", ROUTING_KEY)
    pagerduty.script.extend([pagerduty_busy("30"), pagerduty_busy(),
                             _json_reply(502, {"status": "error"})])
    outcomes, _ = await run_plan(ts_env, tmp_path, NotifyPlan(requests=[request(pd_route(pagerduty))]))
    (outcome,) = outcomes
    assert outcome.result is not None and outcome.result.status_code == 202
    assert len(pagerduty.bodies) == 4 and pagerduty.problems == []
    assert all(body == pagerduty.bodies[0] for body in pagerduty.bodies)


async def test_pagerduty_400_is_not_retried(
    ts_env: WorkflowEnvironment, tmp_path: Path, pagerduty: VendorReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PD_ROUTING_KEY", "too-short")
    outcomes, _ = await run_plan(ts_env, tmp_path, NotifyPlan(requests=[request(pd_route(pagerduty))]))
    assert outcomes == [Outcome(error_type="DeliveryRejected", message="route 'oncall' answered HTTP 400")]
    assert len(pagerduty.bodies) == 1
    assert pagerduty.problems == ["routing_key must be the 32-character integration key"]


def test_pagerduty_event_mapping_covers_every_event() -> None:
    events = TypeAdapter(NotificationEvent).json_schema()["enum"]
    assert set(EVENT_ACTION) == set(events)
    assert {e for e, a in EVENT_ACTION.items() if a == "trigger"} == {
        "emergency", "escalation", "manual_intervention", "approval_needed", "action"}
    assert EVENT_ACTION["acknowledged"] == EVENT_ACTION["aborted"] == "acknowledge"
    assert {e for e, a in EVENT_ACTION.items() if a == "resolve"} == {"recovered", "resolved", "dismissed"}


@pytest.mark.parametrize(("severity", "expected"), [
    (Severity.MINOR, "warning"), (Severity.MAJOR, "error"), (Severity.CRITICAL, "critical"),
    (None, "info"),
])
def test_pagerduty_severity_mapping(severity: Severity | None, expected: str) -> None:
    route = PagerDutyRoute(routing_key_env="PD_ROUTING_KEY", source="host-1.example")
    event = pagerduty_event(notification(severity=severity), route, ROUTING_KEY)
    assert event["payload"]["severity"] == expected
    assert event["payload"]["source"] == "host-1.example"
    assert validate_pagerduty(event) == []


def test_pagerduty_bounds_summary_and_dedup_key() -> None:
    long = notification(text="x" * 5000, dedup_key="k" * 300)
    event = pagerduty_event(long, PagerDutyRoute(routing_key_env="X"), ROUTING_KEY)
    assert validate_pagerduty(event) == []
    assert len(event["payload"]["summary"]) == 1024
    assert event["dedup_key"] == dedup_key(long) and len(event["dedup_key"]) <= 255


# ----- idempotency ------------------------------------------------------------------------------


async def test_a_repeated_step_does_not_post_twice(
    ts_env: WorkflowEnvironment, tmp_path: Path, pagerduty: VendorReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same step (workflow, run, activity id) run again, as after a lost completion."""
    monkeypatch.setenv("PD_ROUTING_KEY", ROUTING_KEY)
    same = request(pd_route(pagerduty))
    outcomes, _ = await run_plan(ts_env, tmp_path, NotifyPlan(requests=[same, same], same_step=True))
    first, second = (o.result for o in outcomes)
    assert first is not None and second is not None
    assert not first.duplicate and second.duplicate and second.status_code == 202
    assert len(pagerduty.bodies) == 1


# ----- signed webhook ---------------------------------------------------------------------------


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check of the documented scheme, written independently of medkit's signer."""
    timestamp = headers[TIMESTAMP_HEADER]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers[SIGNATURE_HEADER], f"sha256={expected}")


async def test_webhook_is_signed_over_timestamp_and_raw_body(
    webhook_receiver: WebhookReceiver, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cr3t")
    route = WebhookRoute(url=webhook_receiver.url, hmac_secret_env="HOOK_SECRET")
    result = await send_webhook(http, request(route), route)
    assert result.delivered
    (headers,) = webhook_receiver.headers
    body = json.dumps(webhook_receiver.received[0]).encode()
    raw = notification().model_dump_json().encode()
    assert json.loads(raw) == json.loads(body)
    assert verify("s3cr3t", headers, raw)
    assert not verify("wrong", headers, raw)
    assert not verify("s3cr3t", headers, raw.replace(b"checkout", b"checkovt"))
    assert headers["Idempotency-Key"] == notification().notification_id
    assert "s3cr3t" not in json.dumps(headers)


async def test_unsigned_webhook_has_no_signature(
    webhook_receiver: WebhookReceiver, http: httpx.AsyncClient
) -> None:
    route = WebhookRoute(url=webhook_receiver.url)
    await send_webhook(http, request(route), route)
    assert SIGNATURE_HEADER not in webhook_receiver.headers[0]


# ----- email ------------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """What a local SMTP server received, and who logged in."""

    port: int
    messages: list[tuple[Envelope, Message]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    tls_sessions: int = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append((envelope, message_from_bytes(envelope.content, policy=policy.default)))
        self.tls_sessions += session.ssl is not None
        return "250 Message accepted"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data == (b"medkit", b"hunter2")
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """A plain SMTP server on loopback."""
    box = Mailbox(port=free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a certificate (scripts/system-deps.sh installs it)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_mailbox(self_signed: tuple[Path, Path]) -> Iterator[Mailbox]:
    """An SMTP server that requires STARTTLS and accepts medkit/hunter2."""
    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    box = Mailbox(port=free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port, tls_context=context,
                            require_starttls=True, authenticator=box.authenticate,
                            auth_require_tls=True)
    controller.start()
    yield box
    controller.stop()


def email_route(box: Mailbox, **changes: Any) -> EmailRoute:
    """An email route to the local server."""
    values: dict[str, Any] = {"host": "127.0.0.1", "port": box.port, "from": "medkit@example.org",
                              "to": ["oncall@example.org", "sre@example.org"]}
    return EmailRoute.model_validate({**values, **changes})


async def test_email_is_delivered_with_facts_and_stable_ids(mailbox: Mailbox) -> None:
    route = email_route(mailbox)
    result = await send_email(request(route), route)
    assert result.delivered and result.detail == ""
    ((envelope, message),) = mailbox.messages
    assert envelope.mail_from == "medkit@example.org"
    assert envelope.rcpt_tos == ["oncall@example.org", "sre@example.org"]
    assert message["Subject"] == "[medkit] checkout: critical incident"
    assert message["X-Medkit-Dedup-Key"] == notification().dedup_key
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    text = body.decode()
    for expected in ("Severity: critical", "Phase:    EmergencyRecovery", "  - error_rate=0.42",
                     "medkit approve recovery:checkout:inc-1"):
        assert expected in text
    again = await send_email(request(route), route)
    assert again.delivered
    assert mailbox.messages[1][1]["Message-ID"] == message["Message-ID"]


async def test_email_reports_a_refused_recipient_and_rejects_when_all_are(mailbox: Mailbox) -> None:
    some = email_route(mailbox, to=["oncall@example.org", "nobody@example.org"])
    result = await send_email(request(some), some)
    assert result.detail == "refused: nobody@example.org"
    everyone = email_route(mailbox, to=["nobody@example.org"])
    with pytest.raises(ApplicationError) as caught:
        await send_email(request(everyone), everyone)
    assert caught.value.type == "DeliveryRejected" and caught.value.non_retryable


async def test_email_over_starttls_with_login_through_temporal(
    ts_env: WorkflowEnvironment, tmp_path: Path, tls_mailbox: Mailbox,
    self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMTP_USER", "medkit")
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2")
    route = email_route(tls_mailbox, starttls=True, ca_file=str(self_signed[0]),
                        username_env="SMTP_USER", password_env="SMTP_PASSWORD")
    outcomes, _ = await run_plan(ts_env, tmp_path, NotifyPlan(requests=[request(route)]))
    (outcome,) = outcomes
    assert outcome.result is not None and outcome.result.delivered
    assert tls_mailbox.logins == ["medkit"] and tls_mailbox.tls_sessions == 1


async def test_email_to_an_untrusted_certificate_is_not_retried(tls_mailbox: Mailbox) -> None:
    route = email_route(tls_mailbox, starttls=True)
    with pytest.raises(ApplicationError) as caught:
        await send_email(request(route), route)
    assert caught.value.type == "DeliveryRejected" and "not trusted" in caught.value.message
    assert tls_mailbox.messages == []


@pytest.mark.parametrize("ca", ["missing", "not-pem"])
async def test_email_with_an_unreadable_ca_file_is_not_retried(
    tls_mailbox: Mailbox, tmp_path: Path, ca: str
) -> None:
    """The CA file was loaded in the middle of the SMTP conversation, and its error counted as a
    network failure: DeliveryRetryable, six attempts for a file that does not change."""
    path = tmp_path / "ca.pem"
    if ca == "not-pem":
        path.write_text("not a certificate\n")
    route = email_route(tls_mailbox, starttls=True, ca_file=str(path))
    with pytest.raises(ApplicationError) as caught:
        await send_email(request(route), route)
    assert (caught.value.type, caught.value.non_retryable) == ("DeliveryRejected", True)
    assert caught.value.message.startswith(f"route 'oncall': cannot load ca_file {path}: ")
    assert tls_mailbox.messages == [] and tls_mailbox.tls_sessions == 0


async def test_email_wrong_password_is_not_retried(
    tls_mailbox: Mailbox, self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_USER", "medkit")
    monkeypatch.setenv("SMTP_PASSWORD", "wrong-password")
    route = email_route(tls_mailbox, starttls=True, ca_file=str(self_signed[0]),
                        username_env="SMTP_USER", password_env="SMTP_PASSWORD")
    with pytest.raises(ApplicationError) as caught:
        await send_email(request(route), route)
    assert caught.value.type == "DeliveryRejected"
    assert "wrong-password" not in str(caught.value)


# ----- route models -----------------------------------------------------------------------------


def test_routes_parse_by_kind_and_reject_unsafe_email_credentials() -> None:
    routes = TypeAdapter(dict[str, NotificationRoute])
    parsed = routes.validate_python({
        "chat": {"kind": "slack", "webhook_url_env": "SLACK_URL"},
        "pager": {"kind": "pagerduty", "routing_key_env": "PD_KEY"},
        "hook": {"kind": "webhook", "url": "https://example.org/x", "hmac_secret_env": "HOOK_SECRET"},
        "mail": {"kind": "email", "host": "smtp.example.org", "port": 587, "starttls": True,
                 "username_env": "U", "password_env": "P", "from": "a@example.org",
                 "to": ["b@example.org"]},
    })
    assert [type(r).__name__ for r in parsed.values()] == [
        "SlackRoute", "PagerDutyRoute", "WebhookRoute", "EmailRoute"]
    assert isinstance(parsed["pager"], PagerDutyRoute)
    assert parsed["pager"].events_url == "https://events.pagerduty.com/v2/enqueue"
    assert routes.validate_json(routes.dump_json(parsed)) == parsed
    with pytest.raises(ValidationError, match="never sends a password in clear"):
        TypeAdapter(NotificationRoute).validate_python({
            "kind": "email", "host": "h", "username_env": "U", "password_env": "P",
            "from": "a@example.org", "to": ["b@example.org"]})
    with pytest.raises(ValidationError, match="both username_env and password_env"):
        TypeAdapter(NotificationRoute).validate_python({
            "kind": "email", "host": "h", "starttls": True, "username_env": "U",
            "from": "a@example.org", "to": ["b@example.org"]})
    with pytest.raises(ValidationError):
        TypeAdapter(NotificationRoute).validate_python({"kind": "slack", "webhook_url_env": "https://x"})
    for route in ({"kind": "webhook", "url": "https://example.org/x"},
                  {"kind": "slack", "webhook_url_env": "SLACK_URL"},
                  {"kind": "pagerduty", "routing_key_env": "PD_KEY"}):
        with pytest.raises(ValidationError, match="timeout must be greater than zero"):
            TypeAdapter(NotificationRoute).validate_python({**route, "timeout": "0s"})


def test_documented_example_routes_parse() -> None:
    """docs/notifications.md's example policy fragment stays valid."""
    doc = (Path(__file__).parent.parent / "docs" / "notifications.md").read_text()
    example = doc.split("```yaml\n")[-1].split("```")[0]
    routes = TypeAdapter(dict[str, NotificationRoute]).validate_python(yaml.safe_load(example)["routes"])
    assert {name: route.kind for name, route in routes.items()} == {
        "chat": "slack", "pager": "pagerduty", "audit": "webhook", "mail": "email"}
