"""The Alertmanager webhook payload (version 4), as Alertmanager's webhook receiver POSTs it.

Unknown fields are ignored rather than rejected, so fields added by newer Alertmanager
releases (or by Grafana's compatible notifier) do not break ingestion.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

LabelSet = dict[str, str]


class _Tolerant(BaseModel):
    """Fields medkit does not know (newer Alertmanager versions) are accepted and dropped."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class AlertmanagerAlert(_Tolerant):
    """One alert in a notification; `fingerprint` identifies the alert's label set."""

    status: Literal["firing", "resolved"]
    labels: LabelSet
    annotations: LabelSet = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(default=None, alias="endsAt")
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
    common_annotations: LabelSet = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[AlertmanagerAlert] = Field(min_length=1)
