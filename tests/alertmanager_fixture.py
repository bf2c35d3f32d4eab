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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
DETECTOR_TOKEN = "detector-token-for-tests-0123456789"
OPERATOR_TOKEN = "operator-token-for-tests-9876543210"


@dataclass
class Process:
    """A started server process: its port, log file and Popen."""

    port: int
    log_file: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        """The end of its log, for failure messages."""
        return self.log_file.read_text(errors="replace")[-chars:]


def _wait_http(server: Process, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"exited {server.process.returncode}: {server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}{path}", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{server.url}{path} not ready within {timeout}s: {server.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


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
                    extra_args: list[str] | None = None) -> Iterator[Process]:
    """`medkit serve` on a free port against the given Temporal address and task queue."""
    port = free_port()
    log_file = tmp_path / f"gateway-{port}.log"
    argv = [str(Path(sys.executable).parent / "medkit"), "serve", "--port", str(port),
            "--config", str(policy_file),
            "--address", address, "--namespace", "default", "--task-queue", task_queue,
            "--temporal-timeout", "5", *(extra_args or [])]
    with log_file.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=serve_env(),
                                   cwd=Path(__file__).resolve().parent.parent, start_new_session=True)
    server = Process(port=port, log_file=log_file, process=process)
    try:
        _wait_http(server, "/healthz", 30)
        yield server
    finally:
        _stop(process)


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
def running_alertmanager(tmp_path: Path, webhook_url: str, token: str = DETECTOR_TOKEN) -> Iterator[Process]:
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
    server = Process(port=port, log_file=log_file, process=process)
    try:
        _wait_http(server, "/-/ready", 30)
        yield server
    finally:
        _stop(process)
