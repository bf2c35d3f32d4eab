"""Structured JSON logs (structlog) for every medkit process, with Temporal ids bound."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from temporalio import activity
from temporalio.runtime import LogForwardingConfig, LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

NOISY_LOGGERS = ("httpx", "httpcore")
"""Libraries whose INFO/DEBUG lines carry full request URLs, which may embed webhook secrets."""


def quiet_noisy_loggers() -> None:
    """Keep URL-logging libraries at WARNING, so a secret in a webhook URL never reaches a log."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(level: str = "INFO") -> None:
    """Send structlog and stdlib logs (the SDK's, workflow.logger's) to stderr as JSON lines."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_noisy_loggers()


def core_logging() -> LoggingConfig:
    """The SDK core's own log lines (Rust, at WARN and above) forwarded to Python logging, so
    they come out as JSON lines like every other instead of coloured console text."""
    return LoggingConfig(filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                         forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")))


def json_logging_runtime() -> Runtime:
    """A Temporal runtime whose core log lines come out as JSON (see `core_logging`), for a
    process that exports no SDK metrics (`workers.metrics.metrics_runtime` does both)."""
    return Runtime(telemetry=TelemetryConfig(logging=core_logging()))


class _BindActivityIds(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        with structlog.contextvars.bound_contextvars(
            workflow_id=info.workflow_id, run_id=info.workflow_run_id,
            activity_id=info.activity_id, activity=info.activity_type, attempt=info.attempt,
        ):
            log = structlog.get_logger("medkit.activity")
            log.debug("activity started")
            try:
                result = await super().execute_activity(input)
            except Exception as err:
                log.warning("activity failed", error=str(err), error_type=type(err).__name__)
                raise
            log.info("activity completed")
            return result


class LogContextInterceptor(Interceptor):
    """Binds workflow id, run id and activity id to every log line an activity writes."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Wrap each activity execution."""
        return _BindActivityIds(next)
