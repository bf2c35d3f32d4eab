"""Detections: a detector's report that a service has a problem, and the recovery's input."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from models.base import MedkitModel, Name
from models.phases import Severity
from models.policy import ServicePolicy

DetectionSource = Literal[
    "alertmanager", "health_poller", "anomaly", "host_resources", "cli", "http", "detector"
]

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class Detection(MedkitModel):
    """One report of a problem. `detection_id` and `detected_at` are always set by the detector."""

    detection_id: Annotated[str, Field(min_length=1, max_length=200)]
    service: Name
    incident_key: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")] = "health"
    source: DetectionSource
    severity: Severity | None = None
    summary: Annotated[str, Field(max_length=2000)] = ""
    labels: dict[str, str] = Field(default_factory=dict)
    status: Literal["firing", "resolved"] = "firing"
    detected_at: datetime


MAX_REPORTS_PER_BATCH = 100
"""Detections one `report_batch` signal carries at most."""

MAX_REPORT_BATCH_BYTES = 512 * 1024
"""Serialized detections one `report_batch` signal carries at most, unless it is a single one.

Temporal refuses a payload above 2 MB and a request above 4 MB, and a signal-with-start carries
the first detection again in the workflow input, beside the policy snapshot. 512 KiB (Temporal's
own warning threshold for one payload) keeps a call well inside both limits. A lone detection
may exceed it: the gateway's bounds on labels keep one under 1 MB even when every character
needs escaping, so a call with a single report stays inside the limits as well."""


REPORTS_MEMO = "medkit_report_ids"
"""The memo key under which an ended recovery keeps the ids of the reports it counted.

Alertmanager sends the same alert again (same fingerprint and start, so the same detection id)
when its group changes or its repeat interval passes, and an HA peer may deliver late: such a
repeat that arrives after the recovery ended is no new problem, so it must not start a second
recovery (workers.client.repeats_of_ended_run reads this memo before a start)."""

MAX_REMEMBERED_REPORTS = 200
"""Report ids the memo keeps at most: the first report's and the latest others (bounded, so a
recovery joined by thousands of reports keeps a small memo)."""


class ReportBatch(MedkitModel):
    """Detections of one recovery's problem that arrived together, delivered in one signal.

    The gateway coalesces the reports that reach it for a recovery while its previous call to
    that recovery is still in flight; the recovery counts each one as `report` would.
    """

    detections: Annotated[list[Detection], Field(min_length=1, max_length=MAX_REPORTS_PER_BATCH)]


def incident_key_from(text: str) -> str:
    """Make a detector-provided name (an alert name, a metric) safe for use as an incident key."""
    key = _KEY_UNSAFE.sub("-", text).strip("-")[:100]
    return key or "health"


def recovery_workflow_id(service: str, incident_key: str) -> str:
    """The business key of a recovery: one running recovery per service and incident key."""
    return f"recovery:{service}:{incident_key}"


class RecoveryInput(MedkitModel):
    """The workflow's single argument: the first detection and the service's policy snapshot."""

    detection: Detection
    policy: ServicePolicy
    dry_run: bool = False
    counted_report_ids: Annotated[list[str], Field(max_length=MAX_REMEMBERED_REPORTS)] = []
    """Ids of reports the run this one continued from had counted (a late report continues a
    recovery as new): this run counts them as already seen and keeps them in its memo, so a
    resend of one of them after this run ends starts nothing either."""
