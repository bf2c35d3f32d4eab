"""Real receiving side for gateway tests: `medkit serve` as a subprocess, and Alertmanager.

`running_gateway(...)` starts the real CLI (`medkit serve`) with a policy file and
tokens in its environment and waits for /healthz. `running_alertmanager(...)` starts Debian's
`prometheus-alertmanager` on a loopback port with a webhook receiver pointing at a URL, with
the bearer token read from a file, and small group_wait/group_interval so tests are quick.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.server_process import ServerProcess

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
DETECTOR_TOKEN = "detector-token-for-tests-0123456789"
OPERATOR_TOKEN = "operator-token-for-tests-9876543210"


def serve_env(detector: str | None = DETECTOR_TOKEN, operator: str | None = OPERATOR_TOKEN) -> dict[str, str]:
    """The environment for `medkit serve`: the tokens, nothing inherited that could leak in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MEDKIT_DETECTOR_TOKEN", "MEDKIT_OPERATOR_TOKEN", "MEDKIT_CONFIG")}
    if detector:
        env["MEDKIT_DETECTOR_TOKEN"] = detector
    if operator:
        env["MEDKIT_OPERATOR_TOKEN"] = operator
    return env


@contextlib.contextmanager
def running_gateway(tmp_path: Path, policy_file: Path, address: str, task_queue: str,
                    extra_args: list[str] | None = None,
                    env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """`medkit serve` on a free port against the given Temporal address and task queue, with
    `env` (default: serve_env(), the test tokens)."""
    port = free_port()
    log_file = tmp_path / f"gateway-{port}.log"
    argv = [str(Path(sys.executable).parent / "medkit"), "serve", "--port", str(port),
            "--config", str(policy_file),
            "--address", address, "--namespace", "default", "--task-queue", task_queue,
            "--temporal-timeout", "5", *(extra_args or [])]
    with log_file.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   env=serve_env() if env is None else env,
                                   cwd=Path(__file__).resolve().parent.parent, start_new_session=True)
    server = ServerProcess(port=port, log_file=log_file, process=process)
    try:
        server.wait_http("/healthz", 30)
        yield server
    finally:
        server.stop()


def alertmanager_config(webhook_url: str, token_file: Path) -> dict[str, object]:
    """One route to one webhook receiver, grouped per alert, flushed every second."""
    return {
        "route": {"receiver": "medkit", "group_by": ["alertname", "service"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "medkit", "webhook_configs": [{
            "url": webhook_url, "send_resolved": True, "max_alerts": 100,
            "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}},
        }]}],
    }


@contextlib.contextmanager
def running_alertmanager(tmp_path: Path, webhook_url: str,
                         token: str = DETECTOR_TOKEN) -> Iterator[ServerProcess]:
    """Alertmanager (clustering off) delivering every notification to `webhook_url`."""
    if shutil.which(ALERTMANAGER) is None:
        pytest.fail(f"{ALERTMANAGER} missing: run scripts/system-deps.sh "
                    "(Debian package prometheus-alertmanager)")
    home = tmp_path / "alertmanager"
    home.mkdir(parents=True, exist_ok=True)
    token_file = home / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    config_file = home / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(alertmanager_config(webhook_url, token_file)))
    port = free_port()
    log_file = home / "alertmanager.log"
    argv = [ALERTMANAGER, f"--config.file={config_file}", f"--storage.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=info"]
    with log_file.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=home,
                                   start_new_session=True)
    server = ServerProcess(port=port, log_file=log_file, process=process)
    try:
        server.wait_http("/-/ready", 30)
        yield server
    finally:
        server.stop()
