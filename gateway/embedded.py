"""The gateway inside `medkit dev`: the dashboard, /v1/health and the operator API on loopback,
in the dev stack's own event loop and Temporal client.

Tokens come from MEDKIT_DETECTOR_TOKEN / MEDKIT_OPERATOR_TOKEN when set (the ingest API is off
without a detector token); without an operator token one is generated once into
`<state dir>/operator-token` (mode 0600), so the dashboard's decision buttons work without setup
and the token never appears in the terminal or the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from temporalio.client import Client

from detectors.health_poller import HealthBoard, HealthPoller
from gateway.app import create_app
from gateway.auth import DETECTOR_TOKEN_ENV, OPERATOR_TOKEN_ENV, AuthConfig, token_from_env
from gateway.settings import GatewaySettings
from gateway.temporal import TemporalGateway
from models.policy import PolicyFile
from store.incidents import IncidentStore
from store.ledger import create_store_engine, sqlite_url
from workers.client import TemporalTarget

TOKEN_FILE = "operator-token"  # noqa: S105 (a file name)
"""Where `medkit dev` keeps the operator token it generated, inside its state dir."""


def dev_auth(state_dir: Path) -> tuple[AuthConfig, Path | None]:
    """The detector token from the environment, if set (the ingest API is off without it); the
    operator token from the environment, else the state dir's (generated on first use), with
    the file that holds it. Setting only the detector token keeps the operator API and the
    dashboard's buttons working."""
    detector = token_from_env(DETECTOR_TOKEN_ENV)
    operator = token_from_env(OPERATOR_TOKEN_ENV)
    if operator:
        from_env = AuthConfig(detector, operator)
        from_env.validate()
        return from_env, None
    path = state_dir / TOKEN_FILE
    if not path.exists() or not path.read_text().strip():
        _write_new_token(path)
    auth = AuthConfig(detector_token=detector, operator_token=path.read_text().strip())
    auth.validate()
    return auth, path


def _write_new_token(path: Path) -> None:
    """A new operator token at `path` (mode 0600), written in full or not at all: a `medkit dev`
    killed while writing it used to leave an empty file, and every later start failed on it.
    An empty file (from such a kill) is replaced: no token was ever in it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_hex(24) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: `medkit dev` handles Ctrl-C for the whole stack."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_embedded(client: Client, target: TemporalTarget, policy: PolicyFile, state_dir: Path,
                         port: int, auth: AuthConfig, temporal_ui: str,
                         board: HealthBoard | None = None) -> None:
    """Serve the gateway on 127.0.0.1:`port` until cancelled, with the dev worker's incident store
    and the health scores of `board` (the dev poller's), or of a score-only poller of its own
    without one; then shut it down cleanly."""
    incidents = IncidentStore(create_store_engine(sqlite_url(state_dir / "medkit.db"), read_only=True))
    poller = HealthPoller(policy.services, report=None) if board is None else None
    app = create_app(GatewaySettings(policy=policy, auth=auth), TemporalGateway(target, client=client),
                     poller=poller, board=board, incidents=incidents, temporal_ui=temporal_ui)
    server = _EmbeddedServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                            access_log=False, timeout_graceful_shutdown=3))
    serving = asyncio.create_task(server.serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise
