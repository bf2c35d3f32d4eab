"""Everything `medkit serve` is configured with, resolved once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth import AuthConfig
from gateway.mapping import DEFAULT_SERVICE_LABELS
from models.policy import PolicyFile

MAX_BODY_BYTES = 1 << 20
"""Request bodies above 1 MiB get 413 (Alertmanager's `max_alerts` keeps notifications small)."""


@dataclass(frozen=True)
class GatewaySettings:
    """The policy (which services exist, and their snapshots), auth, and limits."""

    policy: PolicyFile
    auth: AuthConfig
    service_labels: tuple[str, ...] = DEFAULT_SERVICE_LABELS
    dry_run: bool = False
    max_body_bytes: int = MAX_BODY_BYTES
    send_concurrency: int = 100
