"""The Alertmanager webhook payload (version 4), as Alertmanager's webhook receiver POSTs it.

Unknown fields are ignored rather than rejected, so fields added by newer Alertmanager
releases do not break ingestion. Only version 4 is accepted: Grafana's webhook contact point
sends the same shape with extra fields but `"version": "1"`, and gets a 422 naming the field.

Label sets are bounded like the labels of `/v1/detections` (gateway.schemas): an alert's labels
become its detection's labels and travel into the recovery, so an oversized alert is refused
here with a 422 naming it (which Alertmanager does not retry) rather than reaching Temporal.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.schemas import MAX_LABEL_NAME, MAX_LABELS, Labels, UtcTime

MAX_ANNOTATION_VALUE = 16_384
"""Characters of one annotation value at most. Annotations are not forwarded (only the summary,
cut to 2000 characters), so they may be longer than labels, but not unbounded."""

LabelSet = Annotated[Labels, Field(max_length=MAX_LABELS)]
"""An alert's (or the group's common) labels: at most 64, names and values bounded."""

AnnotationSet = Annotated[
    dict[Annotated[str, Field(max_length=MAX_LABEL_NAME)],
         Annotated[str, Field(max_length=MAX_ANNOTATION_VALUE)]],
    Field(max_length=MAX_LABELS),
]
"""An alert's annotations: at most 64, names bounded like labels, values up to 16 KiB."""


class _Tolerant(BaseModel):
    """Fields medkit does not know (newer Alertmanager versions) are accepted and dropped."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class AlertmanagerAlert(_Tolerant):
    """One alert in a notification; `fingerprint` identifies the alert's label set."""

    status: Literal["firing", "resolved"]
    labels: LabelSet
    annotations: AnnotationSet = Field(default_factory=dict)
    starts_at: UtcTime = Field(alias="startsAt")
    ends_at: UtcTime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: Annotated[str, Field(min_length=1, max_length=128)]


class AlertmanagerPayload(_Tolerant):
    """A webhook notification for one alert group."""

    version: Literal["4"]
    group_key: str = Field(alias="groupKey")
    truncated_alerts: Annotated[int, Field(ge=0)] = Field(default=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"]
    receiver: str
    group_labels: LabelSet = Field(default_factory=dict, alias="groupLabels")
    common_labels: LabelSet = Field(default_factory=dict, alias="commonLabels")
    common_annotations: AnnotationSet = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[AlertmanagerAlert] = Field(min_length=1)
