"""Report breaker state changes to `medkit serve` as detections, off the caller's path.

A listener only enqueues (never blocks, drops when its bounded queue is full); one daemon thread
posts to the gateway's `POST /v1/detections` with the detector token, retrying transport errors
and 5xx answers a few times. So a slow or absent gateway never slows a protected call.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx

from breakers.core import State, StateChange

_log = logging.getLogger("medkit.breakers")

_STOP = object()


class GatewayReporter:
    """A state-change listener that turns changes into detections of one medkit service.

    Opening is a firing detection (severity `severity`, incident key `<prefix>-<breaker>`, so it
    starts or joins `recovery:<service>:<prefix>-<breaker>`); closing is a resolved one. Half-open
    and ramping changes are sent (as firing, without severity) only when listed in `states`.
    """

    def __init__(self, url: str, token: str | None, service: str, *, incident_key_prefix: str = "breaker",
                 states: Iterable[State] = (State.OPEN, State.CLOSED), severity: str | None = "major",
                 queue_size: int = 1000, timeout: float = 5.0, attempts: int = 3,
                 retry_backoff: float = 0.5, report_imposed: bool = False) -> None:
        self.endpoint = url.rstrip("/") + "/v1/detections"
        self.service = service
        self.incident_key_prefix = incident_key_prefix
        self.states = frozenset(states)
        self.severity = severity
        self.attempts = attempts
        self.retry_backoff = retry_backoff
        self.report_imposed = report_imposed
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=timeout)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="breaker-reporter", daemon=True)
        self._thread.start()

    def __call__(self, change: StateChange) -> None:
        """Enqueue the change if its state is reported; never blocks. Changes an outside authority
        imposed (the fleet's breaker entity, through `EntityFollower`) are skipped unless
        `report_imposed`: a recovery that trips the entity must not hear back its own action as a
        new detection, nor take the entity's reset for the dependency's recovery."""
        if change.to_state not in self.states or (change.imposed and not self.report_imposed):
            return
        try:
            self._queue.put_nowait(change)
        except queue.Full:
            self.dropped += 1

    def detection(self, change: StateChange) -> dict[str, Any]:
        """The `/v1/detections` body for one change (see docs/gateway.md, generic detections)."""
        resolved = change.to_state is State.CLOSED
        body: dict[str, Any] = {
            "service": self.service,
            "incident_key": f"{self.incident_key_prefix}-{change.breaker}",
            "detection_id": f"breaker-{change.breaker}-{change.to_state.value}-{uuid.uuid4().hex}",
            "status": "resolved" if resolved else "firing",
            "summary": f"circuit breaker {change.breaker} {change.from_state.value} -> "
                       f"{change.to_state.value}: {change.reason}"[:2000],
            "detected_at": change.at.isoformat(),
            "labels": {
                **change.labels,
                "category": "circuit_breaker",
                "breaker": change.breaker,
                "breaker_state": change.to_state.value,
                "previous_state": change.from_state.value,
                "failure_rate": f"{change.failure_rate:.3f}",
                "slow_rate": f"{change.slow_rate:.3f}",
                "calls_in_window": str(change.calls_in_window),
                "slow_threshold_s": f"{change.slow_threshold_s:.6f}",
            },
        }
        if change.to_state is State.OPEN and self.severity:
            body["severity"] = self.severity
        return body

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything enqueued so far was sent or given up on; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (within `timeout`), then stop the thread and the HTTP client."""
        self.flush(timeout)
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            _log.warning("breaker reporter: queue still full at close; %d changes not sent",
                         self._queue.qsize())
        self._thread.join(timeout)
        self._http.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._send(item)
            finally:
                self._queue.task_done()

    def _send(self, change: StateChange) -> None:
        body = self.detection(change)
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._http.post(self.endpoint, json=body)
            except httpx.TransportError as err:
                problem = f"{type(err).__name__}"
            else:
                if response.status_code < 300:
                    self.sent += 1
                    return
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code < 500:
                    break  # the gateway refused this detection; resending cannot help
            if attempt < self.attempts:
                time.sleep(self.retry_backoff * 2 ** (attempt - 1))
        self.failed += 1
        _log.warning("breaker %s: could not report %s to %s (%s)", change.breaker, change.to_state.value,
                     shown_endpoint(self.endpoint), problem)


def shown_endpoint(url: str) -> str:
    """The gateway endpoint as it may be logged: scheme, host, port and path only, so a
    credential written into the URL (`user:password@`, `?token=`) never reaches a log line."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"
