"""The operator dashboard in a real headless Chromium, against a real `medkit serve`, the Temporal
dev server, a real worker and a real demo service whose recovery waits for approval.

The page must show the service's score and status, the open recovery with its pending decision,
and approving it from the page (with the operator token typed in) must move the recovery on until
it recovers, after which the incident and its MTTR show. The screenshot taken while the approval
is pending is docs/img/dashboard.png, which the README shows: set MEDKIT_UPDATE_SCREENSHOT=1 to
rewrite it (otherwise it goes to the test's tmp dir, so a test run leaves the tree clean).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from playwright.async_api import Page, async_playwright
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from cli.dev_cmd import banner
from gateway.auth import AuthConfig
from gateway.embedded import dev_auth, serve_embedded
from models.detection import Detection
from models.phases import Phase, Severity
from models.policy import PolicyFile
from tests.alertmanager_fixture import OPERATOR_TOKEN, running_gateway
from tests.conftest import DemoService, eventually, free_port, running
from workers.client import TemporalTarget, fetch_status, start_or_join_recovery
from workers.worker import build_worker

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium (scripts/system-deps.sh); playwright drives it and never downloads one."""

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
"""Headless, and nothing that reaches out to the network on its own."""

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "dashboard.png"

TEMPORAL_UI = "http://127.0.0.1:8233"


def shop_policy(demo: DemoService) -> dict[str, Any]:
    """The demo service as `shop`: its critical ladder heals it through the demo's admin endpoint,
    but only once an operator approves."""
    rung = [{"name": "wait", "steps": [{"wait": "100ms"}]}]
    return {"version": 1, "services": [{
        "name": "shop",
        "probes": [{"kind": "http", "name": "healthz", "url": f"{demo.base}/healthz", "timeout": "1s"}],
        "actions": {"heal": {"kind": "http", "method": "POST", "url": f"{demo.base}/admin/fault",
                             "body": {"mode": "healthy"}, "timeout": "2s"}},
        "ladders": {"minor": rung, "major": rung, "critical": [{"name": "heal", "steps": [
            {"action": "heal", "requires_approval": True, "approval_timeout": "10m"}]}]},
        "validation": {"samples": 1, "interval": "200ms"},
        "retry": {"max_attempts": 1, "initial_backoff": "100ms"},
        "escalation": {"after": "1h", "max_escalations": 0},
        "health_poll": {"interval": "500ms", "failure_threshold": 2},
    }]}


async def text_of(page: Page, selector: str) -> str:
    """The element's visible text once it exists."""
    locator = page.locator(selector)
    await locator.first.wait_for()
    return await locator.first.inner_text()


@pytest.mark.timeout(180)
async def test_dashboard_shows_the_fleet_and_approves_a_recovery(
    dev_env: WorkflowEnvironment, tmp_path: Path, queue: str, demo_service: DemoService,
) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: run scripts/system-deps.sh (Debian package chromium)")
    client = dev_env.client
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(shop_policy(demo_service)))
    policy = PolicyFile.model_validate(shop_policy(demo_service))
    deps = ActivityDeps.create(tmp_path)  # creates the incident database the gateway reads
    demo_service.inject("unhealthy")
    address = client.service_client.config.target_host
    with running_gateway(tmp_path, policy_path, address, queue,
                         ["--state-dir", str(tmp_path), "--temporal-ui", TEMPORAL_UI]) as gateway:
        async with running(build_worker(client, queue, deps, policy)):
            detection = Detection(detection_id=str(uuid.uuid4()), service="shop", source="http",
                                  severity=Severity.CRITICAL, summary="healthz failing",
                                  detected_at=datetime.now(UTC))
            handle = await start_or_join_recovery(client, detection, policy.services[0], queue)

            async def awaiting() -> bool:
                status = await fetch_status(client, handle.id)
                return status.phase == Phase.AWAITING_APPROVAL

            await eventually(awaiting, timeout=60)

            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                           args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                    await page.goto(f"{gateway.url}/dashboard/?refresh=1")
                    service_row = '#services tr[data-service="shop"]'
                    await page.locator(f'{service_row} .badge[data-status="unhealthy"]').wait_for()
                    assert await text_of(page, f"{service_row} .score") == "0"  # no token needed
                    assert "enter the operator token" in await text_of(page, "#recoveries-error")

                    await page.fill("#token", OPERATOR_TOKEN)
                    await page.fill("#operator", "alice")
                    await page.click("#save-auth")
                    row = f'#recoveries tr[data-workflow-id="{handle.id}"]'
                    pending = await text_of(page, f"{row} .pending")
                    assert pending.startswith("approval of heal") and "approve" in pending
                    assert (await text_of(page, f"{row} .phase")).startswith("AwaitingApproval")
                    ui_link = await page.locator(f"{row} a").first.get_attribute("href")
                    assert ui_link == f"{TEMPORAL_UI}/namespaces/default/workflows/recovery%3Ashop%3Ahealth"
                    assert "unhealthy" in await text_of(page, "#fleet")
                    shot = SCREENSHOT if os.environ.get("MEDKIT_UPDATE_SCREENSHOT") else (
                        tmp_path / SCREENSHOT.name)
                    await page.screenshot(path=str(shot), full_page=True)
                    assert shot.stat().st_size > 10_000

                    await page.fill("#reason", "healing it from the dashboard")
                    await page.click(f'{row} button[data-decision="approve"]')
                    notice = await text_of(page, "#notice:not([hidden])")
                    assert "approve accepted" in notice, notice

                    async def recovered() -> bool:
                        status = await fetch_status(client, handle.id)
                        return status.phase == Phase.RECOVERED

                    await eventually(recovered, timeout=60)
                    await page.locator(row).wait_for(state="detached")  # no longer open
                    incident = f'#incidents a:text-is("{handle.id}")'
                    await page.locator(incident).wait_for()
                    assert await page.locator(incident).get_attribute("href") == (
                        f"{TEMPORAL_UI}/namespaces/default/workflows/recovery%3Ashop%3Ahealth/"
                        f"{handle.result_run_id}/history")  # the incident's own run
                    mttr = await text_of(page, "#mttr tbody tr")
                    assert mttr.startswith("shop") and "\t1\t" in mttr
                    await page.locator(f'{service_row} .badge:not([data-status="unhealthy"])').wait_for()
                finally:
                    await browser.close()

            status = await fetch_status(client, handle.id)  # a query needs the worker
        decisions = [e for e in status.timeline if e.kind == "decision"]
        assert decisions and decisions[0].actor == "alice"
        assert "healing it from the dashboard" in decisions[0].reason
        health = httpx.get(f"{gateway.url}/v1/health", timeout=5).json()
        assert health["services"][0]["service"] == "shop"


def test_dev_auth_generates_one_private_operator_token(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDKIT_DETECTOR_TOKEN", raising=False)
    monkeypatch.delenv("MEDKIT_OPERATOR_TOKEN", raising=False)
    auth, path = dev_auth(tmp_path)
    assert path == tmp_path / "operator-token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert auth.operator_token == path.read_text().strip() and len(auth.operator_token) >= 16
    again, _ = dev_auth(tmp_path)
    assert again.operator_token == auth.operator_token  # kept across restarts of medkit dev
    monkeypatch.setenv("MEDKIT_OPERATOR_TOKEN", OPERATOR_TOKEN)
    chosen, chosen_path = dev_auth(tmp_path)
    assert chosen.operator_token == OPERATOR_TOKEN and chosen_path is None


def test_dev_auth_replaces_the_empty_token_file_a_killed_medkit_dev_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`medkit dev` killed between creating the token file and writing it left it empty, and
    every later start failed validating an empty token."""
    monkeypatch.delenv("MEDKIT_DETECTOR_TOKEN", raising=False)
    monkeypatch.delenv("MEDKIT_OPERATOR_TOKEN", raising=False)
    (tmp_path / "operator-token").write_text("")
    auth, path = dev_auth(tmp_path)
    assert auth.operator_token == path.read_text().strip() and len(auth.operator_token) >= 16
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["operator-token"]  # no temporary file left


def test_dev_auth_keeps_the_operator_token_when_only_the_detector_token_is_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator who sets MEDKIT_DETECTOR_TOKEN for `medkit dev` to feed it detections (its
    ingest API answers 403 without one) lost the operator API and the dashboard's buttons: no
    operator token was generated, while the banner still pointed at $MEDKIT_OPERATOR_TOKEN."""
    monkeypatch.delenv("MEDKIT_OPERATOR_TOKEN", raising=False)
    monkeypatch.setenv("MEDKIT_DETECTOR_TOKEN", "detector-token-for-dev-tests-0123456789")
    auth, path = dev_auth(tmp_path)
    assert auth.detector_token == "detector-token-for-dev-tests-0123456789"
    assert path == tmp_path / "operator-token"
    assert auth.operator_token == path.read_text().strip() and len(auth.operator_token) >= 16


async def test_the_embedded_gateway_serves_the_dashboard_until_cancelled(
    dev_env: WorkflowEnvironment, tmp_path: Path, queue: str, demo_service: DemoService,
) -> None:
    policy = PolicyFile.model_validate(shop_policy(demo_service))
    await ActivityDeps.create(tmp_path).http.aclose()  # creates the incident database
    port = free_port()
    auth = AuthConfig(operator_token=OPERATOR_TOKEN)
    serving = asyncio.create_task(serve_embedded(
        dev_env.client, TemporalTarget(task_queue=queue), policy, tmp_path, port, auth, TEMPORAL_UI))
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            async def scored() -> dict[str, Any] | None:
                with contextlib.suppress(httpx.TransportError):
                    body: dict[str, Any] = (await http.get("/v1/health")).json()
                    return body if body["services"][0]["status"] == "healthy" else None
                return None

            await eventually(scored)
            assert "medkit dashboard" in (await http.get("/dashboard/")).text
            snapshot = await http.get("/v1/dashboard",
                                      headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
            assert snapshot.status_code == 200
            body = snapshot.json()
            assert body["temporal_ui"] == TEMPORAL_UI and body["recoveries_error"] is None
            assert body["incidents_error"] is None
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/healthz", timeout=2)


async def test_a_recovery_no_worker_answers_for_is_shown_from_its_search_attributes(
    dev_env: WorkflowEnvironment, tmp_path: Path, queue: str, demo_service: DemoService,
) -> None:
    """With the recovery's worker down, its status query would hang; the dashboard still lists it,
    from visibility, and says why the details are missing, instead of timing out or hiding it."""
    policy = PolicyFile.model_validate(shop_policy(demo_service))
    await ActivityDeps.create(tmp_path).http.aclose()
    detection = Detection(detection_id=str(uuid.uuid4()), service="shop", source="cli",
                          incident_key=f"orphan-{uuid.uuid4().hex[:8]}",
                          severity=Severity.CRITICAL, summary="nobody works this queue",
                          detected_at=datetime.now(UTC))
    handle = await start_or_join_recovery(dev_env.client, detection, policy.services[0],
                                          f"{queue}-no-worker")
    port = free_port()
    serving = asyncio.create_task(serve_embedded(
        dev_env.client, TemporalTarget(task_queue=queue), policy, tmp_path, port,
        AuthConfig(operator_token=OPERATOR_TOKEN), TEMPORAL_UI))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            async def listed() -> dict[str, Any] | None:
                with contextlib.suppress(httpx.TransportError):
                    body: dict[str, Any] = (await http.get(
                        "/v1/dashboard", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})).json()
                    rows = [r for r in body["recoveries"] if r["workflow_id"] == handle.id]
                    return rows[0] if rows else None
                return None

            row = await eventually(listed, timeout=60)
            assert row["service"] == "shop" and row["incident_key"] == detection.incident_key
            assert "no worker answered the status query" in row["status_error"]
            assert row["temporal_url"].endswith(handle.id.replace(":", "%3A"))
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await handle.terminate("test over")


def test_the_dev_banner_says_where_the_dashboard_and_its_token_are(tmp_path: Path) -> None:
    args = argparse.Namespace(ui_port=8233, temporal_port=7233, state_dir=tmp_path, demo_port=8099)
    shown = banner(args, tmp_path / "policy.yaml", demo=True,
                   dashboard=f"http://127.0.0.1:8780/dashboard/ (operator token in {tmp_path}/x)")
    line = next(line for line in shown.splitlines() if "Dashboard:" in line)
    assert "http://127.0.0.1:8780/dashboard/" in line and str(tmp_path) in line
    assert "Dashboard:" not in banner(args, tmp_path / "policy.yaml", demo=True)
