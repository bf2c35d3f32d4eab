"""Make a local breaker obey the fleet's durable breaker entity, read through `medkit serve`.

`EntityFollower` polls `GET /v1/breakers/{entity}` on a daemon thread and holds the local breaker
to the entity's state: open refuses every call, half-open and ramping admit the entity's
`traffic_fraction`, closed gives the decision back to the local logic. It can forward what it
sees (`POST /v1/breakers/{entity}/report`): the outcomes of the calls the entity let through,
and the local breaker's own openings and closings. Protected calls never wait on it: they only
read the breaker's state and, at most, enqueue a report.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from breakers.core import CircuitBreaker, Outcome, State, StateChange

_log = logging.getLogger("medkit.breakers")

_STOP = object()

_HELD_STATES = {"open": State.OPEN, "half_open": State.HALF_OPEN, "ramping": State.RAMPING}
_FAILED = {Outcome.TIMEOUT, Outcome.EXCEPTION}


class EntityFollower:
    """Holds `breaker` to the state of the durable entity `entity` (default: the breaker's name).

    Every `interval` seconds it reads the entity's status with `token` (the detector token).
    When the gateway cannot be read (down, 5xx, no such entity yet) the breaker keeps the last
    state the entity gave it for `stale_after` seconds, then the local logic decides again.
    With `report_outcomes`, admitted calls while half-open (every outcome) and ramping (failures
    only: successes change nothing there), and the local breaker's own openings (a failure) and
    closings (a success), are sent as reports from `reporter` (default host:pid).
    """

    def __init__(self, breaker: CircuitBreaker, url: str, token: str | None, *, entity: str | None = None,
                 interval: float = 2.0, stale_after: float = 60.0, report_outcomes: bool = True,
                 reporter: str | None = None, queue_size: int = 1000, timeout: float = 5.0) -> None:
        self.breaker = breaker
        self.entity = entity or breaker.name
        base = url.rstrip("/") + f"/v1/breakers/{self.entity}"
        self.status_url = base
        self.report_url = base + "/report"
        self.interval = interval
        self.stale_after = stale_after
        self.report_outcomes = report_outcomes
        self.reporter = reporter or f"{socket.gethostname()}:{os.getpid()}"
        self.entity_state: str | None = None
        """The entity's state at the last successful read (None before the first)."""
        self.polls = 0
        self.poll_errors = 0
        self.reports_sent = 0
        self.reports_failed = 0
        self.reports_dropped = 0
        self._last_read = time.monotonic()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=timeout)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._polled = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"breaker-follower-{self.entity}",
                                        daemon=True)
        breaker.add_listener(self._local_change)
        self._thread.start()

    def wait_for_poll(self, polls: int, timeout: float = 10.0) -> bool:
        """Wait until at least `polls` reads were attempted in all (for start-up and tests)."""
        with self._polled:
            return self._polled.wait_for(lambda: self.polls >= polls, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (after sending what is queued, within `timeout`) and the HTTP client.
        The breaker keeps its last state; call `breaker.release(...)` to hand it back."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            _log.warning("breaker follower %s: queue still full at close", self.entity)
        self._thread.join(timeout)
        self._http.close()

    def poll_once(self) -> None:
        """Read the entity's status and hold (or release) the breaker accordingly."""
        try:
            response = self._http.get(self.status_url)
            if response.status_code == 200:
                self._apply(response.json())
                self._last_read = time.monotonic()
            elif response.status_code == 404:
                self.entity_state = None  # no entity (yet): nothing to obey
                self.breaker.release(f"fleet breaker {self.entity} does not exist; local logic decides")
                self._last_read = time.monotonic()
            else:
                self.poll_errors += 1
                _log.debug("breaker follower %s: HTTP %d: %s", self.entity, response.status_code,
                           response.text[:300])
        except (httpx.HTTPError, ValueError) as err:  # ValueError: a body that is not a status
            self.poll_errors += 1
            _log.debug("breaker follower %s: status read failed: %s", self.entity, err)
        if self.breaker.held_fraction is not None and time.monotonic() - self._last_read > self.stale_after:
            self.breaker.release(f"fleet breaker {self.entity}: no status for {self.stale_after:g}s; "
                                 "local logic decides")
        with self._polled:
            self.polls += 1
            self._polled.notify_all()

    def _apply(self, status: object) -> None:
        """Hold the breaker to a status body; ValueError (nothing changed) when it is not one."""
        if not isinstance(status, dict) or not isinstance(status.get("state"), str):
            raise ValueError(f"not a breaker status (no 'state'): {str(status)[:200]}")
        state: str = status["state"]
        held = _HELD_STATES.get(state)
        fraction, retry_after = 0.0, self.interval
        try:
            if held is not None and held is not State.OPEN:
                fraction = float(status["traffic_fraction"])
                if not 0.0 <= fraction <= 1.0:
                    raise ValueError(f"traffic_fraction {fraction} is not in 0..1")
            if state == "open" and status.get("open_until"):
                open_until = datetime.fromisoformat(str(status["open_until"]))
                retry_after = max(0.0, (open_until - datetime.now(UTC)).total_seconds())
            transitions = status.get("transitions") or [{}]
            why = str(transitions[-1].get("reason", ""))
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise ValueError(f"malformed breaker status: {type(err).__name__}: {err}") from err
        self.entity_state = state
        reason = f"fleet breaker {self.entity} is {state}" + (f" ({why})" if why else "")
        if held is None:
            self.breaker.release(reason)
            return
        self.breaker.hold(held, fraction, reason, retry_after=retry_after, on_outcome=self._held_outcome)

    def _held_outcome(self, outcome: Outcome) -> None:
        """A call the entity let through finished: report it (ramp successes are not news)."""
        failed = outcome in _FAILED
        if self.report_outcomes and (failed or self.breaker.state is State.HALF_OPEN):
            self._enqueue({"reporter": self.reporter, "success": not failed, "detail": outcome.value})

    def _local_change(self, change: StateChange) -> None:
        """The local logic opened or closed the breaker: one failure or success for the fleet.
        Changes the follower imposed itself (`hold`/`release`) are the entity's, not news to it."""
        if not self.report_outcomes or change.imposed:
            return
        if change.to_state is State.OPEN:
            self._enqueue({"reporter": self.reporter, "success": False,
                           "detail": f"opened locally: {change.reason}"[:500]})
        elif change.to_state is State.CLOSED:
            self._enqueue({"reporter": self.reporter, "success": True,
                           "detail": f"closed locally: {change.reason}"[:500]})

    def _enqueue(self, report: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(report)
        except queue.Full:
            self.reports_dropped += 1

    def _run(self) -> None:
        next_poll = 0.0
        while True:
            if time.monotonic() >= next_poll:
                try:
                    self.poll_once()
                except Exception:  # the thread must outlive any surprise, or the hold never ends
                    self.poll_errors += 1
                    _log.exception("breaker follower %s: poll failed", self.entity)
                next_poll = time.monotonic() + self.interval
            try:
                item = self._queue.get(timeout=max(0.0, next_poll - time.monotonic()))
            except queue.Empty:
                continue
            if item is _STOP:
                return
            self._send(item)

    def _send(self, report: dict[str, Any]) -> None:
        try:
            response = self._http.post(self.report_url, json=report)
        except httpx.HTTPError as err:
            problem = type(err).__name__
        else:
            if response.status_code < 300:
                self.reports_sent += 1
                return
            problem = f"HTTP {response.status_code}: {response.text[:300]}"
        self.reports_failed += 1
        _log.warning("breaker follower %s: report not sent (%s)", self.entity, problem)
