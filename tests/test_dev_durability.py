"""`medkit dev` itself killed mid-recovery, alone or with everything it started, and started again.

The mission's promise for the embedded stack: a SIGKILL of `medkit dev` alone (its Temporal dev
server and demo, in sessions of their own, outlive it), or a power cut of the whole stack (the
`medkit dev` process, the Temporal dev server it runs on `<state_dir>/temporal.db`, the demo
service) loses no recovery. Started again on the same state dir and ports, `medkit dev` finds the
very run where it was, takes the operator's decision and finishes it, and its detectors start no
second recovery for the incident. Real processes throughout, as a user runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from demo.policy import DEMO_SERVICE
from tests.conftest import eventually, free_port
from workers.dev import dev_server_argv

MEDKIT = str(Path(sys.executable).parent / "medkit")
DEFAULT_PORTS = {7233, 8233, 8099, 8780, 9464}  # someone else's `medkit dev` may hold these
# Everything here runs on a shared, possibly loaded machine: deadlines, not timings.
STACK_START = 180.0
DECISION = 120.0


def stack_env() -> dict[str, str]:
    """The environment without anything pointing at another stack; worker metrics off, since
    their default port may belong to another `medkit dev`."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("TEMPORAL_", "MEDKIT_"))}
    return {**env, "MEDKIT_METRICS_ADDRESS": "off"}


def fresh_ports() -> dict[str, int]:
    """Four distinct free ports, none of them a default."""
    ports: dict[str, int] = {}
    while len(ports) < 4:
        port = free_port()
        if port not in DEFAULT_PORTS and port not in ports.values():
            ports[("temporal", "ui", "demo", "dashboard")[len(ports)]] = port
    return ports


class DevStack:
    """`medkit dev` on a state dir and ports of the test's own, in a session of its own."""

    def __init__(self, state_dir: Path, ports: dict[str, int]) -> None:
        self.state_dir = state_dir
        self.ports = ports
        self.process: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None

    def argv(self) -> list[str]:
        return [MEDKIT, "dev", "--state-dir", str(self.state_dir),
                "--temporal-port", str(self.ports["temporal"]), "--ui-port", str(self.ports["ui"]),
                "--demo-port", str(self.ports["demo"]),
                "--dashboard-port", str(self.ports["dashboard"])]

    def start(self, log: Path) -> subprocess.Popen[bytes]:
        """Start it, its output to `log` (a file: nobody reads a pipe, which would fill up)."""
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=stack_env(),
                                            start_new_session=True)
        return self.process

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    async def wait_running(self) -> None:
        """Until the banner is out (the worker and the dashboard start right after it) and the
        dashboard answers; fail with its output if it exits first."""
        assert self.process is not None

        async def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"medkit dev exited ({self.process.returncode}):\n{self.output()}")
            return "medkit is running." in self.output() and listening(self.ports["dashboard"])

        await eventually(up, timeout=STACK_START, interval=0.2)

    def env(self) -> dict[str, str]:
        """What the banner tells the user to export for the CLI."""
        return {"TEMPORAL_ADDRESS": f"127.0.0.1:{self.ports['temporal']}",
                "MEDKIT_CONFIG": str(self.state_dir / "policy.yaml")}

    def tree(self) -> list[psutil.Process]:
        """`medkit dev` and every process it started, whatever session they run in."""
        assert self.process is not None
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; KILL of the whole tree if that does not end it."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = self.tree()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill_all(tree)
            self.process.wait(timeout=30)


def listening(port: int) -> bool:
    """Whether anything accepts connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def running(proc: psutil.Process) -> bool:
    """Whether proc still runs: a zombie (nobody reaped it yet, e.g. init in a container) does not."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_all(tree: list[psutil.Process]) -> None:
    """SIGKILL every process group in the tree and every process in it, as a power cut would."""
    for proc in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def medkit(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEDKIT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**stack_env(), **env}, check=False)


async def cli_json(*args: str, env: dict[str, str]) -> Any:
    result = await asyncio.to_thread(medkit, *args, "-o", "json", env=env)
    assert result.returncode == 0, f"medkit {' '.join(args)}: {result.stderr}"
    return json.loads(result.stdout)


@contextlib.contextmanager
def stacks(*stack: DevStack) -> Iterator[None]:
    try:
        yield
    finally:
        for one in stack:
            one.stop()


async def assert_a_second_dev_on_the_state_dir_refuses(first: DevStack) -> None:
    """Another `medkit dev` on a state dir in use, on the same ports or on ports of its own, says
    so in one line and touches nothing in it: the policy, the demo's pid file, the Temporal db."""
    watched = ("policy.yaml", "demo.pid", "operator-token")
    before = {name: (first.state_dir / name).read_bytes() for name in watched}
    assert first.process is not None
    for ports in (first.ports, fresh_ports()):
        second = DevStack(first.state_dir, ports)
        result = await asyncio.to_thread(
            subprocess.run, second.argv(), capture_output=True, text=True, timeout=120,
            env=stack_env(), check=False)
        assert result.returncode == 1, result
        assert result.stderr.splitlines() == [
            f"medkit: another medkit dev (pid {first.process.pid}) is already running on "
            f"{first.state_dir.resolve()}; stop it (Ctrl-C in its terminal) or pass --state-dir "
            "for a separate stack"], result.stderr
        assert not [port for port in ports.values() if port not in first.ports.values()
                    and listening(port)]
    assert {name: (first.state_dir / name).read_bytes() for name in watched} == before
    assert first.process.poll() is None


async def assert_still_waiting(env: dict[str, str], workflow_id: str, run_id: str,
                               before: dict[str, Any]) -> None:
    """The run is where it was: same phase and decision, its timeline kept, still the latest."""
    after = await cli_json("status", workflow_id, "--run-id", run_id, env=env)
    assert after["phase"] == "AwaitingApproval", after
    assert after["pending_decision"] == before["pending_decision"]
    assert after["timeline"][:len(before["timeline"])] == before["timeline"]
    rows = await cli_json("list", "--service", DEMO_SERVICE, env=env)
    assert [(r["workflow_id"], r["run_id"]) for r in rows] == [(workflow_id, run_id)], rows


async def test_medkit_dev_killed_alone_or_with_its_whole_stack_loses_no_recovery(
        tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    ports = fresh_ports()
    dev = DevStack(state_dir, ports)
    with stacks(dev):
        dev.start(tmp_path / "dev-1.log")
        await dev.wait_running()
        await assert_a_second_dev_on_the_state_dir_refuses(dev)
        env = dev.env()
        started = await cli_json("trigger", "--service", DEMO_SERVICE, "--severity", "critical",
                                 "--key", "drill", env=env)
        workflow_id = started["workflow_id"]
        assert workflow_id == f"recovery:{DEMO_SERVICE}:drill"

        async def awaiting_approval() -> dict[str, Any] | None:
            rows = await cli_json("list", "--open", "--service", DEMO_SERVICE, env=env)
            mine = [row for row in rows if row["workflow_id"] == workflow_id]
            return mine[0] if mine and mine[0]["phase"] == "AwaitingApproval" else None

        row = await eventually(awaiting_approval, timeout=DECISION, interval=0.5)
        run_id = row["run_id"]
        before = await cli_json("status", workflow_id, "--run-id", run_id, env=env)
        assert before["phase"] == "AwaitingApproval" and before["pending_decision"]

        # `medkit dev` alone SIGKILLed (the OOM killer's pick, a `kill -9` of its pid): the dev
        # server and the demo, in sessions of their own, outlive it, holding their ports and the
        # db. Started again, it stops them and starts afresh.
        assert dev.process is not None
        left = dev.tree()[1:]
        assert len(left) >= 2, left  # the Temporal dev server and the demo
        dev.process.kill()
        dev.process.wait(timeout=30)
        assert all(running(p) for p in left), left
        dev.start(tmp_path / "dev-2.log")
        await dev.wait_running()
        assert not [p for p in left if running(p)], left
        for proc in left:
            assert f"(pid {proc.pid}) that a killed medkit dev left running" in dev.output()
        await assert_still_waiting(env, workflow_id, run_id, before)

        # The power cut: `medkit dev` and all it started (the dev server and the demo run in
        # sessions of their own), at once.
        tree = dev.tree()
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "start-dev" in names and len(tree) >= 3, names  # medkit dev, Temporal, the demo
        kill_all(tree)
        assert dev.process is not None
        dev.process.wait(timeout=30)
        _, alive = psutil.wait_procs(tree[1:], timeout=30)
        assert not [p for p in alive if running(p)], f"still running after SIGKILL: {alive}"

        async def nothing_left() -> bool:
            return not [p for p in tree if running(p)] and not [
                port for port in ports.values() if listening(port)]

        await eventually(nothing_left, timeout=30, interval=0.2)

        # Started again, on the same state dir and ports.
        dev.start(tmp_path / "dev-3.log")
        await dev.wait_running()
        assert "left running" not in dev.output()
        await assert_still_waiting(env, workflow_id, run_id, before)

        approved = await cli_json("approve", workflow_id, "--run-id", run_id, "--operator", "alice",
                                  "--reason", "after the power cut", env=env)
        assert approved["accepted"] is True, approved

        async def ended() -> dict[str, Any] | None:
            status = await cli_json("status", workflow_id, "--run-id", run_id, env=env)
            return status if status["outcome"] else None

        final = await eventually(ended, timeout=DECISION, interval=0.5)
        assert final["outcome"] == "Recovered", final
        assert final["timeline"][:len(before["timeline"])] == before["timeline"]
        decisions = [e for e in final["timeline"] if e.get("actor") == "alice"]
        assert decisions, final["timeline"]

        # The restarted detectors started nothing for the service: the one recovery is this run.
        deadline = time.monotonic() + 10  # a few poller rounds after the end (a check, not a timing)
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
        recoveries = await cli_json("list", "--service", DEMO_SERVICE, env=env)
        assert [(r["workflow_id"], r["run_id"]) for r in recoveries] == [(workflow_id, run_id)], recoveries
        assert "Traceback" not in dev.output(), dev.output()


async def test_a_dev_server_on_the_state_dir_that_medkit_dev_has_no_record_of_is_named_not_stopped(
        tmp_path: Path) -> None:
    """A `medkit dev` killed between starting its dev server and recording it (or a server started
    by hand on the state dir's database) leaves a server medkit cannot prove it started: the next
    `medkit dev` names its pid in one line and leaves it running, instead of "port in use"."""
    state_dir = (tmp_path / "state").resolve()
    state_dir.mkdir()
    ports = fresh_ports()
    server = subprocess.Popen(dev_server_argv(state_dir, ports["temporal"], ports["ui"]),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        async def up() -> bool:
            assert server.poll() is None, "the dev server exited"
            return listening(ports["temporal"])

        await eventually(up, timeout=STACK_START, interval=0.2)
        result = await asyncio.to_thread(
            subprocess.run, DevStack(state_dir, fresh_ports()).argv(), capture_output=True,
            text=True, timeout=120, env=stack_env(), check=False)
        assert result.returncode == 1, result
        assert result.stderr.splitlines() == [
            f"medkit: a Temporal dev server (pid {server.pid}) already runs on "
            f"{state_dir / 'temporal.db'}, and medkit dev has no record of starting it (started "
            "by hand, or its medkit dev was killed while starting it); stop it (kill "
            f"{server.pid}), then start medkit dev again"], result.stderr
        assert server.poll() is None
        assert not (state_dir / "policy.yaml").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)
