"""A real Prometheus server for tests: Debian's `prometheus` binary on a free loopback port.

`running_prometheus(tmp_path, targets=[...])` writes a config that scrapes the targets every
second (rule files and Alertmanager targets optional), starts Prometheus with its TSDB in
`tmp_path`, waits until it is ready, and stops it on exit. Import it from any test module.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.server_process import ServerProcess

PROMETHEUS = "/usr/bin/prometheus"
"""Where Debian's package installs it (scripts/system-deps.sh installs the package)."""


@dataclass
class PrometheusServer(ServerProcess):
    """A running Prometheus: its URL, files and an instant-query helper."""

    config_file: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result list of an instant query (raises on any error)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, expr: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Block until the query returns at least one series (e.g. until the first scrape landed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.2)
        raise TimeoutError(f"{expr!r} returned nothing within {timeout}s; log: {self.log_tail()}")


def prometheus_config(targets: list[str], scrape_interval: str = "1s",
                      rule_files: list[Path] | None = None,
                      alertmanagers: list[str] | None = None) -> dict[str, Any]:
    """The config: one `targets` job scraped every `scrape_interval`, rules evaluated as often."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "scrape_configs": [{"job_name": "targets", "static_configs": [{"targets": targets}]}],
    }
    if rule_files:
        config["rule_files"] = [str(path) for path in rule_files]
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": alertmanagers}]}]}
    return config


@contextlib.contextmanager
def running_prometheus(tmp_path: Path, targets: list[str], scrape_interval: str = "1s",
                       rule_files: list[Path] | None = None, alertmanagers: list[str] | None = None,
                       ready_timeout: float = 30.0) -> Iterator[PrometheusServer]:
    """Start Prometheus scraping `targets` (host:port), yield it once ready, then stop it.

    Fails the test when the binary is missing (scripts/system-deps.sh installs it for `make test`).
    """
    if shutil.which(PROMETHEUS) is None:
        pytest.fail(f"{PROMETHEUS} missing: run scripts/system-deps.sh (Debian package prometheus)")
    home = tmp_path / "prometheus"
    home.mkdir(parents=True, exist_ok=True)
    config_file = home / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(
        prometheus_config(targets, scrape_interval, rule_files, alertmanagers)
    ))
    port = free_port()
    log_file = home / "prometheus.log"
    argv = [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with log_file.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=home,
                                   start_new_session=True)
    server = PrometheusServer(port=port, config_file=config_file, log_file=log_file, process=process)
    try:
        server.wait_http("/-/ready", ready_timeout)
        yield server
    finally:
        server.stop()
