"""`medkit serve`: the HTTP ingest gateway (Alertmanager receiver, detections, operator API)."""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable

import structlog
import uvicorn

from cli.common import (
    CommandError,
    SubParsers,
    add_config_arg,
    add_temporal_args,
    guarded,
    int_between,
    load_policy,
    policy_path,
    port_number,
    positive_seconds,
    target_from,
)
from cli.incidents_cmd import _add_database_args, open_store
from detectors.health_poller import HealthPoller
from gateway.app import create_app
from gateway.auth import AuthConfig, AuthConfigError
from gateway.mapping import DEFAULT_SERVICE_LABELS
from gateway.settings import MAX_BODY_BYTES, GatewaySettings
from gateway.temporal import TemporalGateway
from store.incidents import IncidentStore
from workers.logging import configure_logging

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8780
MIN_BODY_BYTES = 1024
"""The smallest --max-body-bytes: below it not even one alert fits, and every POST would be 413."""
MAX_BODY_LIMIT = 1 << 30
"""The largest --max-body-bytes (1 GiB): a body is read whole into memory."""
GRACEFUL_SHUTDOWN_SECONDS = 10
"""How long SIGTERM lets requests in flight finish before the gateway exits; a supervisor's stop
timeout (compose's stop_grace_period, systemd's TimeoutStopSec) must be longer."""


@guarded
def serve(args: argparse.Namespace) -> int:
    """Validate the configuration, then serve until SIGINT/SIGTERM."""
    configure_logging(args.log_level)
    log = structlog.get_logger("medkit.gateway")
    policy = load_policy(policy_path(args))
    try:
        auth = AuthConfig.from_env(insecure=args.insecure_no_auth)
    except AuthConfigError as err:
        raise CommandError(str(err)) from None
    labels = tuple(label.strip() for label in args.service_label.split(",") if label.strip())
    if not labels:
        raise CommandError("--service-label needs at least one label name")
    settings = GatewaySettings(policy=policy, auth=auth, service_labels=labels, dry_run=args.dry_run,
                               max_body_bytes=args.max_body_bytes)
    target = target_from(args)
    try:
        incidents: IncidentStore | Callable[[], IncidentStore] = open_store(args)
    except CommandError as err:
        log.warning("no incident store yet; the dashboard retries on each refresh", reason=str(err))
        incidents = functools.partial(open_store, args)
    poller = None if args.no_health_poll else HealthPoller(policy.services, report=None)
    app = create_app(settings, TemporalGateway(target, timeout=args.temporal_timeout),
                     poller=poller, incidents=incidents, temporal_ui=args.temporal_ui or None)
    if auth.insecure:
        log.warning("serving WITHOUT authentication (--insecure-no-auth): anyone who can reach "
                    "the port can start recoveries and send operator decisions")
    log.info("gateway starting", host=args.host, port=args.port, temporal=target.address,
             namespace=target.namespace, task_queue=target.task_queue,
             services=[s.name for s in policy.services], dry_run=args.dry_run,
             detector_api=auth.insecure or auth.detector_token is not None,
             operator_api=auth.insecure or auth.operator_token is not None)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    return 0


def register(subparsers: SubParsers) -> None:
    """Add `serve`."""
    parser = subparsers.add_parser(
        "serve", help="run the HTTP gateway: Alertmanager receiver, detections, operator API",
        description="Serve POST /v1/alerts/alertmanager (an Alertmanager webhook receiver), "
        "POST /v1/detections, the operator API under /v1/recoveries, /healthz, /readyz and "
        "/metrics, health scores at /v1/health and the operator dashboard at /dashboard/; the "
        "OpenAPI spec is at /openapi.json. Bearer tokens come from "
        "MEDKIT_DETECTOR_TOKEN and MEDKIT_OPERATOR_TOKEN; with neither set the gateway refuses "
        "to start unless --insecure-no-auth is given.")
    parser.add_argument("--host", default=os.environ.get("MEDKIT_GATEWAY_HOST", DEFAULT_HOST),
                        help=f"listen address (default: $MEDKIT_GATEWAY_HOST or {DEFAULT_HOST})")
    parser.add_argument("--port", type=port_number,
                        default=os.environ.get("MEDKIT_GATEWAY_PORT", str(DEFAULT_PORT)),
                        help=f"listen port (default: $MEDKIT_GATEWAY_PORT or {DEFAULT_PORT})")
    parser.add_argument("--service-label", default=",".join(DEFAULT_SERVICE_LABELS),
                        help="alert labels naming the medkit service, tried in order "
                        f"(default: {','.join(DEFAULT_SERVICE_LABELS)})")
    parser.add_argument("--dry-run", action="store_true",
                        help="every recovery this gateway starts simulates its actions")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="serve without bearer tokens (only for a trusted loopback setup)")
    parser.add_argument("--max-body-bytes", type=int_between(MIN_BODY_BYTES, MAX_BODY_LIMIT),
                        default=MAX_BODY_BYTES,
                        help=f"larger request bodies get 413, {MIN_BODY_BYTES} to {MAX_BODY_LIMIT} "
                        f"(default: {MAX_BODY_BYTES})")
    parser.add_argument("--temporal-timeout", type=positive_seconds, default=10.0,
                        metavar="SECONDS", help="seconds any Temporal call may take before the "
                        "request fails with 503, above 0 and at most 3600 (default: 10)")
    parser.add_argument("--temporal-ui", default=os.environ.get("MEDKIT_TEMPORAL_UI"),
                        help="base URL of the Temporal UI, for the dashboard's links, e.g. "
                        "http://127.0.0.1:8233 (default: $MEDKIT_TEMPORAL_UI; no links without it)")
    parser.add_argument("--no-health-poll", action="store_true",
                        help="do not probe the services for the health scores of /v1/health and "
                        "the dashboard (they then show as unknown)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="the gateway's log level (default: INFO)")
    add_config_arg(parser)
    add_temporal_args(parser)
    _add_database_args(parser, inherit=False)
    parser.set_defaults(func=serve)
