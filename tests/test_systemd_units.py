"""deploy/systemd: the units for running `medkit worker` and `medkit serve` on a host.

No systemd runs here, so the units are checked three ways without one: `systemd-analyze verify`
(which loads unit files offline and reports unknown keys, unparsable values and missing
executables), medkit's own argument parser on each ExecStart= (a renamed or removed flag fails
here, not in a unit that crash-loops), and the settings the worker's and gateway's behaviour
depends on (stop timeouts against their drains, kill mode, state dir, where secrets live).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli import serve_cmd, worker_cmd
from cli.main import build_parser
from gateway.auth import AuthConfig, AuthConfigError
from workers.worker import GRACEFUL_SHUTDOWN

REPO = Path(__file__).resolve().parents[1]
UNITS_DIR = REPO / "deploy" / "systemd"
WORKER_UNIT = UNITS_DIR / "medkit-worker.service"
SERVE_UNIT = UNITS_DIR / "medkit-serve.service"
MEDKIT = "/opt/medkit/bin/medkit"
"""Where the units expect the virtualenv's console script (docs/production.md installs it there)."""
STATE_DIR = Path("/var/lib/medkit")
POLICY = Path("/etc/medkit/policy.yaml")
SECRET_NAME = re.compile(r"TOKEN|API_KEY|PASSWORD|SECRET|ROUTING_KEY|WEBHOOK", re.IGNORECASE)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Sections of key -> every value assigned (systemd keys may repeat), comments dropped and
    backslash-continued lines joined, as systemd reads them."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not key=value"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span as these units write it: `45s`, `1min 30s`, or bare seconds."""
    units = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h)", value)
    assert parts and re.sub(r"\s", "", value) == "".join(n + u for n, u in parts), value
    return sum(float(number) * units[unit] for number, unit in parts)


def exec_start(unit: Unit) -> list[str]:
    """ExecStart= as argv. The units keep it literal (no %-specifiers, no $VARIABLES, no prefixes
    such as `-` or `!`), so what is parsed here is exactly what systemd runs."""
    line = one(unit, "Service", "ExecStart")
    assert not re.search(r"[%$]", line), f"ExecStart= must be literal: {line}"
    argv = shlex.split(line)
    assert argv[0] == MEDKIT, argv
    return argv


def parsed(unit: Unit) -> argparse.Namespace:
    args, extras = build_parser().parse_known_args(exec_start(unit)[1:])
    assert not extras, f"medkit does not know {extras}"
    return args


@pytest.fixture(scope="module")
def worker() -> Unit:
    return parse_unit(WORKER_UNIT)


@pytest.fixture(scope="module")
def serve() -> Unit:
    return parse_unit(SERVE_UNIT)


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is not installed; run scripts/system-deps.sh (as root) to install "
                    "Debian's systemd package, whose systemd-analyze verify checks the unit files")
    return found


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """verify needs no running systemd. It fails on a missing executable but only warns about an
    unknown key or a value it cannot parse, so any line naming a unit fails the test. ExecStart=
    points at this checkout's medkit, since /opt/medkit does not exist here."""
    medkit = Path(sys.executable).parent / "medkit"
    assert medkit.exists(), medkit
    copies = []
    for unit in (WORKER_UNIT, SERVE_UNIT):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(MEDKIT, str(medkit)))
        copies.append(str(copy))
    result = subprocess.run([_systemd_analyze(), "verify", "--man=no", *copies],
                            capture_output=True, text=True, timeout=60, check=False)
    complaints = [line for line in result.stderr.splitlines()
                  if WORKER_UNIT.name in line or SERVE_UNIT.name in line]
    assert result.returncode == 0 and not complaints, result.stderr

    broken = tmp_path / "broken" / WORKER_UNIT.name  # the check above can fail: a typo is caught
    broken.parent.mkdir()
    broken.write_text(Path(copies[0]).read_text().replace("KillMode=mixed", "KillMode=mixd"))
    result = subprocess.run([_systemd_analyze(), "verify", "--man=no", str(broken)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert "kill mode" in result.stderr


def test_exec_start_parses_with_medkits_own_parser(worker: Unit, serve: Unit) -> None:
    worker_args = parsed(worker)
    assert worker_args.func is worker_cmd.worker
    assert worker_args.config == POLICY
    assert worker_args.state_dir == STATE_DIR
    serve_args = parsed(serve)
    assert serve_args.func is serve_cmd.serve
    assert serve_args.config == POLICY, "the gateway reads the workers' policy file"
    assert serve_args.state_dir == STATE_DIR, "the dashboard reads the store the worker writes"
    assert serve_args.host == "127.0.0.1", "plain HTTP: loopback only, behind a TLS proxy"
    assert not serve_args.insecure_no_auth and not serve_args.dry_run


def test_exec_start_check_catches_a_renamed_flag(worker: Unit) -> None:
    line = one(worker, "Service", "ExecStart").replace("--state-dir", "--state-directory")
    _, extras = build_parser().parse_known_args(shlex.split(line)[1:])
    assert extras == ["--state-directory", str(STATE_DIR)]


@pytest.mark.parametrize(("unit_path", "drain"), [
    (WORKER_UNIT, GRACEFUL_SHUTDOWN.total_seconds()),
    (SERVE_UNIT, float(serve_cmd.GRACEFUL_SHUTDOWN_SECONDS)),
])
def test_stop_gives_the_drain_its_time(unit_path: Path, drain: float) -> None:
    unit = parse_unit(unit_path)
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert seconds(one(unit, "Service", "TimeoutStopSec")) > drain
    # SIGTERM to the medkit process alone, SIGKILL to what is left once it exited (the unit
    # files say why control-group would signal running actions' programs mid-drain).
    assert one(unit, "Service", "KillMode") == "mixed"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert "SendSIGKILL" not in unit["Service"] or one(unit, "Service", "SendSIGKILL") == "yes"


def test_worker_state_dir_is_its_state_directory(worker: Unit) -> None:
    state = Path("/var/lib") / one(worker, "Service", "StateDirectory")
    assert state == STATE_DIR == Path(one(worker, "Service", "WorkingDirectory"))
    assert one(worker, "Service", "StateDirectoryMode") == "0750"


def test_gateway_reads_the_state_dir_without_owning_it(serve: Unit) -> None:
    """No StateDirectory= (it would make the directory writable to the gateway and create it on a
    host without a worker); ProtectSystem=strict leaves it readable only."""
    assert "StateDirectory" not in serve["Service"]
    assert one(serve, "Service", "ProtectSystem") == "strict"
    assert one(serve, "Service", "WorkingDirectory") == f"-{STATE_DIR}"
    assert "medkit-worker.service" in one(serve, "Unit", "After").split()


def test_dedicated_user_and_secrets_only_in_environment_files(worker: Unit, serve: Unit) -> None:
    for unit in (worker, serve):
        assert one(unit, "Service", "User") == one(unit, "Service", "Group") == "medkit"
        for assignment in unit["Service"].get("Environment", []):
            assert not SECRET_NAME.search(assignment), f"a secret in the unit: {assignment}"
        files = unit["Service"]["EnvironmentFile"]
        assert files[0] == "/etc/medkit/medkit.env", "TEMPORAL_* come from the shared file"
        assert all(f.lstrip("-").startswith("/etc/medkit/") for f in files)
    assert worker["Service"]["EnvironmentFile"][1:] == ["-/etc/medkit/medkit-worker.env"]
    # Required (no `-`): a gateway without its token file does not start at all.
    assert serve["Service"]["EnvironmentFile"][1:] == ["/etc/medkit/medkit-serve.env"]


def _env_example(name: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (UNITS_DIR / name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), line
            values[key] = value
    return values


def test_environment_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    shared = _env_example("medkit.env.example")
    assert set(shared) == {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "MEDKIT_TASK_QUEUE"}
    assert not any(SECRET_NAME.search(key) and value for key, value in shared.items())
    tokens = _env_example("medkit-serve.env.example")
    assert set(tokens) == {"MEDKIT_DETECTOR_TOKEN", "MEDKIT_OPERATOR_TOKEN"}
    # Copied unedited, the example must not run a gateway with tokens anyone could read here.
    for name, value in tokens.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(AuthConfigError, match="--insecure-no-auth"):
        AuthConfig.from_env()
    assert _env_example("medkit-worker.env.example") == {}
    documented = (REPO / "docs" / "production.md").read_text()
    for name in (UNITS_DIR / "medkit.env.example").read_text().split():
        variable = name.lstrip("#").partition("=")[0]
        if re.fullmatch(r"(TEMPORAL|MEDKIT)_[A-Z_]+", variable):
            assert f"`{variable}`" in documented, f"{variable} is not in docs/production.md"


def test_hardening_keeps_what_probes_and_actions_need(worker: Unit, serve: Unit) -> None:
    """Options that would break medkit, kept out: hiding other processes or the host's /tmp
    blinds process probes and pid files; the worker's network families carry Temporal, probes,
    notifiers and systemctl's D-Bus."""
    for unit in (worker, serve):
        service = unit["Service"]
        assert one(unit, "Service", "NoNewPrivileges") == "yes"
        assert service.get("ProtectProc", ["default"]) == ["default"]
        assert service.get("PrivateTmp", ["no"]) == ["no"]
        assert "PrivateNetwork" not in service and "PrivateUsers" not in service
        families = set(one(unit, "Service", "RestrictAddressFamilies").split())
        assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= families
    # Everything the worker runs inherits its sandbox: nothing that would bind those programs.
    for option in ("SystemCallFilter", "MemoryDenyWriteExecute", "RestrictNamespaces",
                   "PrivateDevices"):
        assert option not in worker["Service"], option
    assert one(worker, "Service", "ProtectSystem") == "full"
