"""Turning an Alertmanager alert into a medkit Detection, and validating a whole batch first.

Nothing here does I/O: a batch is either fully mapped to detections or rejected with every
problem listed, before anything is sent to Temporal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC

from pydantic import ValidationError

from gateway.alertmanager import AlertmanagerAlert, AlertmanagerPayload
from models.detection import Detection, DetectionSource, incident_key_from, recovery_workflow_id
from models.phases import Severity
from models.policy import PolicyFile, ServicePolicy

DEFAULT_SERVICE_LABELS = ("service", "job")
"""Labels naming the medkit service, tried in order."""

SEVERITY_LABEL_VALUES: dict[str, Severity] = {
    **dict.fromkeys(("critical", "page", "emergency", "fatal", "disaster"), Severity.CRITICAL),
    **dict.fromkeys(("major", "error", "high"), Severity.MAJOR),
    **dict.fromkeys(("warning", "warn", "minor", "info", "low", "notice"), Severity.MINOR),
}
"""An alert's `severity` label → medkit severity. The detector's severity is only a floor:
medkit's own probes may raise it, so the ambiguous `warning` maps to the lowest floor."""

MAX_SUMMARY = 2000


class BatchRejected(ValueError):
    """The batch cannot be accepted; `problems` lists every reason, one line each."""

    def __init__(self, reason: str, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.reason = reason
        self.problems = problems


@dataclass(frozen=True)
class PlannedReport:
    """One validated detection and the policy snapshot its recovery runs with."""

    detection: Detection
    policy: ServicePolicy
    fingerprint: str = ""

    @property
    def workflow_id(self) -> str:
        """The recovery this detection starts or joins."""
        return recovery_workflow_id(self.detection.service, self.detection.incident_key)


def severity_from_label(value: str | None) -> Severity | None:
    """Map a `severity` label; unknown or missing values leave severity to medkit's assessment."""
    if value is None:
        return None
    return SEVERITY_LABEL_VALUES.get(value.strip().lower())


def detection_id_for(alert: AlertmanagerAlert) -> str:
    """Stable across Alertmanager HA replicas and repeat notifications of the same alert.

    The status is part of the id so that a resolved notification is never mistaken for the
    firing detection that started the recovery (the workflow ignores a repeat of that one).
    """
    starts = alert.starts_at.astimezone(UTC).isoformat()
    digest = hashlib.sha256(f"{alert.fingerprint}|{starts}|{alert.status}".encode()).hexdigest()
    return f"am-{alert.fingerprint[:32]}-{digest[:24]}"


def service_name(labels: dict[str, str], service_labels: Sequence[str]) -> str | None:
    """The first non-empty value among the configured service labels."""
    for label in service_labels:
        value = labels.get(label, "").strip()
        if value:
            return value
    return None


def lookup_service(policy: PolicyFile, name: str) -> ServicePolicy | None:
    """The service's policy, or None when the policy file does not define it."""
    for service in policy.services:
        if service.name == name:
            return service
    return None


def known_services(policy: PolicyFile, shown: int = 20) -> str:
    """The policy's service names for an error message, at most `shown` of them: a 422 for each
    of 200 alerts must not list thousands of names each."""
    names = [s.name for s in policy.services]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def summary_of(annotations: dict[str, str]) -> str:
    """`summary`, else `description`, cut to what a Detection holds."""
    text = annotations.get("summary") or annotations.get("description") or ""
    return text[:MAX_SUMMARY]


def alert_to_detection(alert: AlertmanagerAlert, service: str) -> Detection:
    """The Detection for one alert; raises ValidationError if a field does not fit."""
    at = alert.starts_at
    if alert.status == "resolved" and alert.ends_at is not None and alert.ends_at.year > 1:
        at = alert.ends_at
    source: DetectionSource = "alertmanager"
    return Detection(
        detection_id=detection_id_for(alert),
        service=service,
        incident_key=incident_key_from(alert.labels.get("alertname", "")),
        source=source,
        severity=severity_from_label(alert.labels.get("severity")),
        summary=summary_of(alert.annotations),
        labels=dict(alert.labels),
        status=alert.status,
        detected_at=at,
    )


def _describe(alert: AlertmanagerAlert, index: int) -> str:
    name = alert.labels.get("alertname")
    return f"alerts[{index}]" + (f" ({name})" if name else "")


def plan_alertmanager_batch(
    payload: AlertmanagerPayload, policy: PolicyFile, service_labels: Sequence[str]
) -> list[PlannedReport]:
    """Map every alert, or raise BatchRejected listing every alert that cannot be accepted."""
    planned: list[PlannedReport] = []
    unknown: list[str] = []
    malformed: list[str] = []
    known = known_services(policy)
    for index, alert in enumerate(payload.alerts):
        where = _describe(alert, index)
        name = service_name(alert.labels, service_labels)
        if name is None:
            malformed.append(f"{where}: none of the labels {', '.join(service_labels)} is set, "
                             "so the service is unknown")
            continue
        service = lookup_service(policy, name)
        if service is None:
            unknown.append(f"{where}: unknown service {name[:100]!r}; the policy defines: {known}")
            continue
        try:
            detection = alert_to_detection(alert, service.name)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            malformed.append(f"{where}: {field}: {first['msg']}")
            continue
        planned.append(PlannedReport(detection=detection, policy=service,
                                     fingerprint=alert.fingerprint))
    if malformed or unknown:
        raise BatchRejected("malformed" if malformed else "unknown_service", malformed + unknown)
    return planned
