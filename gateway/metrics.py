"""The gateway's Prometheus metrics, in a registry of its own (one per app instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """Detections in, recoveries started, joins (deduplicated), rejections, request latency."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "medkit_gateway_detections_received", "Detections accepted for delivery to recoveries.",
            ["source", "status"], registry=self.registry)
        self.started = Counter(
            "medkit_gateway_recoveries_started", "Detections that started a new recovery.",
            ["service"], registry=self.registry)
        self.deduplicated = Counter(
            "medkit_gateway_detections_deduplicated",
            "Firing detections that joined a recovery already running for the same service and key, "
            "or repeated a report its ended run counted.",
            ["source"], registry=self.registry)
        self.resolved_reported = Counter(
            "medkit_gateway_resolved_reported", "Resolved detections signalled to a running recovery.",
            ["source"], registry=self.registry)
        self.resolved_ignored = Counter(
            "medkit_gateway_resolved_ignored",
            "Resolved detections dropped because no recovery was running for them.",
            ["source"], registry=self.registry)
        self.rejected = Counter(
            "medkit_gateway_requests_rejected",
            "Requests refused with a 4xx (malformed, unknown_service, unauthorized, forbidden, ...).",
            ["route", "reason"], registry=self.registry)
        self.temporal_errors = Counter(
            "medkit_gateway_temporal_errors", "Requests failed because Temporal was unreachable or erred.",
            ["kind"], registry=self.registry)
        self.points_received = Counter(
            "medkit_gateway_series_points_received",
            "Points of pushed series scored and kept (batches rejected or failed count nothing).",
            ["series"], registry=self.registry)
        self.anomalies_fired = Counter(
            "medkit_gateway_series_detections_fired",
            "Anomaly detections fired by pushed series and delivered to a recovery.",
            ["series", "service"], registry=self.registry)
        self.latency = Histogram(
            "medkit_gateway_request_duration_seconds", "Request latency by route template and status.",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
