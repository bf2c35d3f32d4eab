"""The demo service's policy, written for the ports and state directory `medkit dev` uses."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

DEMO_SERVICE = "demo"


def demo_policy(port: int, state_dir: Path, webhook_url: str | None = None) -> dict[str, object]:
    """The demo policy as plain data (it is written out as YAML for people to read and edit)."""
    base = f"http://127.0.0.1:{port}"
    pid_file = str((state_dir / "demo.pid").resolve())
    routes: dict[str, object] = {}
    if webhook_url:
        routes["oncall"] = {"kind": "webhook", "url": webhook_url}
    restart = {
        "kind": "restart_process",
        "argv": [sys.executable, "-m", "demo.service", "--port", str(port)],
        "pid_file": pid_file,
        "log_file": str((state_dir / "demo.log").resolve()),
        "grace": "3s",
        "ready_probe": {"kind": "http", "url": f"{base}/healthz"},
        "ready_timeout": "15s",
    }
    breaker = f"{base}/admin/breaker"
    actions = {
        "restart": restart,
        # Staged recovery: shed traffic while restarting, then let a few trial requests through.
        "breaker-open": {"kind": "breaker", "url": breaker, "state": "open", "timeout": "2s",
                         "if_unreachable": "skip"},
        "breaker-trial": {"kind": "breaker", "url": breaker, "state": "half_open", "timeout": "2s",
                          "trial_probe": {"kind": "http", "name": "trial", "url": f"{base}/",
                                          "timeout": "1s"},
                          "trials": 3, "trial_interval": "250ms"},
    }
    return {
        "version": 1,
        "routes": routes,
        "services": [{
            "name": DEMO_SERVICE,
            "description": "medkit's bundled fault-injectable demo service",
            "probes": [
                {"kind": "http", "name": "healthz", "url": f"{base}/healthz", "timeout": "1s"},
                {"kind": "http", "name": "serving", "url": f"{base}/", "timeout": "1s"},
                {"kind": "process", "name": "process", "pid_file": pid_file},
            ],
            "actions": actions,
            "ladders": {
                "minor": [{"name": "restart", "steps": [{"action": "restart"}]}],
                "major": [
                    {"name": "restart-and-check", "steps": [
                        {"action": "breaker-open"}, {"action": "restart"}, {"action": "breaker-trial"},
                        {"check": True}]},
                    {"name": "settle-then-restart", "steps": [
                        {"action": "breaker-open"}, {"wait": "2s"}, {"action": "restart"},
                        {"action": "breaker-trial"}]},
                ],
                # A newcomer's first approval: the critical ladder asks before it restarts
                # (`medkit trigger --service demo --severity critical`, then `medkit approve`).
                "critical": [{"name": "emergency-restart", "steps": [
                    {"action": "restart", "requires_approval": True, "approval_timeout": "10m"}]}],
            },
            "validation": {"samples": 3, "interval": "1s"},
            "retry": {"max_attempts": 2, "initial_backoff": "1s", "max_backoff": "10s"},
            "escalation": {"after": "5m", "max_escalations": 3,
                           "routes": ["oncall"] if webhook_url else []},
            "health_poll": {"interval": "1s", "failure_threshold": 3, "recovery_threshold": 2,
                            "cooldown": "10s"},
        }],
    }


def write_demo_policy(path: Path, port: int, state_dir: Path, webhook_url: str | None = None) -> None:
    """Write the demo policy YAML to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(demo_policy(port, state_dir, webhook_url), sort_keys=False)
    path.write_text("# Written by `medkit dev` for the bundled demo service.\n" + text)
