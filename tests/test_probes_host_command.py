"""The host probe with psutil on this machine and the command probe with real subprocesses.

Host limits are chosen so the outcome cannot depend on the machine's load: 100% always holds,
0.0001% of a real filesystem never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.probe_command import check_command
from activities.probe_host import check_host
from activities.probes import ProbeActivities, bounded_probe, run_probe
from models.probes import CommandProbe, HostProbe, ProbeRoundRequest
from tests.pid_reuse import CAN_REUSE_PIDS, new_group_with_pid


def host(**fields: Any) -> HostProbe:
    """A host probe from policy-style fields."""
    return HostProbe.model_validate({"name": "host", **fields})


def command(*argv: str, **fields: Any) -> CommandProbe:
    """A command probe running the test's own Python."""
    return CommandProbe.model_validate({"name": "check", "argv": [sys.executable, *argv], **fields})


def test_host_within_limits_that_always_hold(tmp_path: Path) -> None:
    result = check_host(host(max_cpu_percent=100, max_memory_percent=100, max_disk_percent=100,
                             disk_path=str(tmp_path), max_load=1e9, cpu_sample="100ms"))
    assert result.healthy, result.detail
    assert result.failure is None
    for key in ("cpu_percent", "memory_percent", "disk_percent", "load", "cores"):
        assert isinstance(result.observed[key], float | int), key
    assert result.observed["disk_percent"] == psutil.disk_usage(str(tmp_path)).percent


def test_host_disk_over_a_tiny_limit(tmp_path: Path) -> None:
    result = check_host(host(max_disk_percent=0.0001, disk_path=str(tmp_path)))
    assert not result.healthy
    assert result.failure == "resource_limit"
    assert f"disk {tmp_path}" in result.detail and "> 0.0001%" in result.detail
    assert result.observed["cpu_percent"] is None  # no CPU limit: not sampled


def test_host_load_per_core() -> None:
    result = check_host(host(max_load=1e9, load_per_core=True))
    cores = result.observed["cores"]
    assert isinstance(cores, int) and cores == psutil.cpu_count()
    assert "load per core" in result.detail


async def test_host_probe_in_a_round_and_bad_disk_path(tmp_path: Path) -> None:
    async with httpx.AsyncClient() as http:
        activities = ProbeActivities(http)
        missing = host(max_disk_percent=50, disk_path=str(tmp_path / "nope"))
        request = ProbeRoundRequest(service="svc", probes=[host(max_memory_percent=100), missing])
        ok, bad = (await ActivityEnvironment().run(activities.probe_service, request)).results
        assert ok.healthy and ok.kind == "host"
        assert not bad.healthy and bad.failure == "error" and "nope" in bad.detail
        with pytest.raises(ApplicationError) as caught:
            await run_probe(http, missing)
        assert caught.value.non_retryable and caught.value.type == "ProbeConfigError"


def test_host_needs_a_limit() -> None:
    with pytest.raises(ValidationError, match="at least one of max_cpu_percent"):
        host()
    with pytest.raises(ValidationError, match="max_disk_percent"):
        host(max_disk_percent=101)


async def test_command_exit_zero_is_healthy() -> None:
    result = await check_command(command("-c", "print('all good')"))
    assert result.healthy
    assert result.observed == {"exit_code": 0}
    assert result.detail.endswith("exited 0: all good")


async def test_command_nonzero_exit_is_unhealthy_with_output_tail() -> None:
    script = "import sys; print('x' * 2000); print('disk almost full', file=sys.stderr); sys.exit(2)"
    # unbuffered so stderr comes last; children no longer inherit the worker's setting by accident
    result = await check_command(command("-c", script, env={"MEDKIT_PROBE": "1", "PYTHONUNBUFFERED": "1"}))
    assert not result.healthy
    assert result.failure == "check_failed"
    assert result.observed == {"exit_code": 2}
    assert result.detail.endswith("disk almost full")
    assert len(result.detail) < 600  # the tail only, not all 2000 characters


async def test_command_env_and_cwd(tmp_path: Path) -> None:
    script = "import os, sys; sys.exit(0 if os.environ['WANT'] == os.path.basename(os.getcwd()) else 1)"
    result = await check_command(command("-c", script, cwd=str(tmp_path), env={"WANT": tmp_path.name}))
    assert result.healthy, result.detail


async def test_command_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    async with httpx.AsyncClient() as http:
        result = await run_probe(http, command("-c", script, timeout="1s"))
    assert not result.healthy
    assert result.failure == "slow"
    assert result.observed == {"exit_code": None}
    assert "did not finish within 1s" in result.detail and "started" in result.detail
    assert gone(int(pid_file.read_text())), "the grandchild outlived the timeout"


@pytest.mark.skipif(not CAN_REUSE_PIDS,
                    reason="needs root and ns_last_pid, to make the kernel reuse a pid at once")
async def test_command_timeout_never_kills_a_group_that_reused_the_programs_pid(tmp_path: Path) -> None:
    """The check program exits at once but leaves a grandchild (in a session of its own) holding
    its output open, so the probe waits out its timeout. Its pid, and so its group's id, is free
    meanwhile; once the kernel hands it to a new session leader, the timeout's SIGKILL to the
    group went to that unrelated process. A group whose leader has been reaped and whose pid now
    names another process is not the program's, and is left alone."""
    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys\n"
        "grandchild = subprocess.Popen(['setsid', 'sleep', '60'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{grandchild.pid}}')\n"
    )
    http = httpx.AsyncClient()
    probe = asyncio.ensure_future(bounded_probe(http, command("-c", script, timeout="3s")))
    other: subprocess.Popen[bytes] | None = None
    grandchild = 0
    try:
        while not pids.exists() or len(pids.read_text().split()) != 2:
            await asyncio.sleep(0.01)
        program, grandchild = (int(pid) for pid in pids.read_text().split())
        while psutil.pid_exists(program):  # exited and reaped: its pid is free
            await asyncio.sleep(0.01)
        other = new_group_with_pid(program)
        if other is None:
            pytest.skip(f"could not get pid {program} reused")
        result = await probe
        assert not result.healthy and result.failure == "slow"
        assert other.poll() is None, "a process group that reused the program's pid was killed"
    finally:
        probe.cancel()
        await http.aclose()
        for pid in (grandchild, other.pid if other is not None else 0):
            with contextlib.suppress(psutil.Error, ValueError):
                psutil.Process(pid).kill()
        if other is not None:
            other.wait(5)


def gone(pid: int, within: float = 10.0) -> bool:
    """Whether the process is dead (or a zombie awaiting its reaper) before `within` seconds pass."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


async def test_command_that_cannot_start_is_a_config_error(tmp_path: Path) -> None:
    no_shebang = tmp_path / "check.sh"  # exec fails with ENOEXEC, a plain OSError that escaped
    no_shebang.write_text("exit 0\n")
    no_shebang.chmod(0o755)
    async with httpx.AsyncClient() as http:
        for spec in (CommandProbe(name="c", argv=[str(tmp_path / "missing")]),
                     CommandProbe(name="c", argv=[str(no_shebang)]),
                     command("-c", "pass", cwd=str(tmp_path / "missing"))):
            with pytest.raises(ApplicationError) as caught:
                await run_probe(http, spec)
            assert caught.value.non_retryable and caught.value.type == "ProbeConfigError"



async def test_command_probe_sees_no_worker_secret_and_its_detail_is_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"s3cr3t-{tmp_path.name}-probe"
    monkeypatch.setenv("MEDKIT_TEST_PROBE_TOKEN", secret)
    config = tmp_path / "check.conf"
    config.write_text(f"password={secret}")
    script = (f"import os, sys; print(open({str(config)!r}).read()); "
              "sys.exit(1 if 'MEDKIT_TEST_PROBE_TOKEN' in os.environ else 0)")
    result = await check_command(command("-c", script))
    assert result.healthy, result.detail  # the program did not get the worker's token
    assert secret not in result.detail
    assert result.detail.endswith("exited 0: password=[redacted]")


async def test_command_probe_inherit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDKIT_TEST_PROBE_TARGET", "db-primary")
    script = "import os, sys; sys.exit(0 if os.environ['MEDKIT_TEST_PROBE_TARGET'] == 'db-primary' else 1)"
    result = await check_command(command("-c", script, inherit_env=["MEDKIT_TEST_PROBE_TARGET"]))
    assert result.healthy, result.detail
    with pytest.raises(ApplicationError) as caught:
        await check_command(command("-c", "pass", inherit_env=["MEDKIT_TEST_NEVER_SET"]))
    assert caught.value.type == "ProbeConfigError" and caught.value.non_retryable
    assert "MEDKIT_TEST_NEVER_SET" in caught.value.message
