"""Kubernetes REST API access with httpx, and the rollout-restart activity.

Credentials come from a kubeconfig (current or named context: cluster server, CA file or
data, user token or tokenFile) or from the in-cluster service account. The bearer token is
read on the worker and never enters a policy, a payload, an error or a log line.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import ActivityDeps
from activities.heartbeat import heartbeating
from activities.http_action import header_credential, scrub
from activities.idempotency import ActionStep, DryRun, action_spec, perform_once
from activities.url_errors import url_problem
from models.actions import ActionRequest, ActionResult, KubernetesRestartAction, KubernetesTarget
from models.urls import redact_url

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
STEP_ANNOTATION = "medkit.io/restart-step"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class KubeCredentials:
    """Where the API server is and how to authenticate to it."""

    server: str
    token: str = field(repr=False)
    namespace: str = "default"
    ca_file: str | None = None
    ca_data: str | None = None
    insecure: bool = False

    def verify(self) -> ssl.SSLContext | bool:
        """The TLS verification httpx should use."""
        if self.insecure:
            return False
        if self.ca_file or self.ca_data:
            return ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        return True


def config_error(message: str) -> ApplicationError:
    """A credentials problem: retrying cannot fix it."""
    return ApplicationError(message, type="KubeConfigError", non_retryable=True)


def _named(items: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get(what), dict):
            return dict(item[what])
    raise config_error(f"kubeconfig {path} has no {what} named {name!r}")


def _api_server(value: object, where: str) -> str:
    """The API server URL, checked now: one httpx cannot request (no http(s) scheme, as with
    an empty or missing `server`; no host; a port past 65535) failed only at the request, as a
    retryable "unreachable" error or an unmapped exception, though no retry can change it."""
    server = str(value or "").rstrip("/")
    if (problem := url_problem(server)) is not None:
        raise config_error(f"{where}: the API server {redact_url(server)!r} cannot be requested: "
                           f"{problem}")
    return server


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as err:
        raise config_error(f"cannot read {what} {path}: {err.strerror}") from err


def from_kubeconfig(path: Path, context: str | None = None) -> KubeCredentials:
    """Credentials from a kubeconfig file: the given context, or its current-context."""
    try:
        config = yaml.safe_load(_read(path, "kubeconfig"))
    except yaml.YAMLError as err:
        # Not chained: the YAML error quotes the offending line, often a token or key, and a
        # cause travels with the failure into the workflow history. Its position is enough.
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise config_error(f"kubeconfig {path} is not valid YAML{where}") from None
    if not isinstance(config, dict):
        raise config_error(f"kubeconfig {path} is not a mapping")
    name = context or config.get("current-context")
    if not name:
        raise config_error(f"kubeconfig {path} sets no current-context and none was given")
    ctx = _named(config.get("contexts"), str(name), "context", path)
    cluster = _named(config.get("clusters"), str(ctx.get("cluster")), "cluster", path)
    user = _named(config.get("users"), str(ctx.get("user")), "user", path)
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = _read(path.parent / str(user["tokenFile"]), "tokenFile")
    if not token:
        raise config_error(f"kubeconfig {path} user {ctx.get('user')!r} has no token or tokenFile; "
                           "medkit supports bearer-token users only")
    ca_file = cluster.get("certificate-authority")
    ca_data = cluster.get("certificate-authority-data")
    try:
        ca_text = base64.b64decode(str(ca_data)).decode() if ca_data else None
    except ValueError:  # binascii.Error, UnicodeDecodeError: the file is wrong, a retry cannot help
        raise config_error(f"kubeconfig {path} cluster {ctx.get('cluster')!r} has a "
                           "certificate-authority-data that is not base64 PEM") from None
    return KubeCredentials(
        server=_api_server(cluster.get("server"), f"kubeconfig {path} cluster {ctx.get('cluster')!r}"),
        token=str(token),
        namespace=str(ctx.get("namespace") or "default"),
        ca_file=str(path.parent / str(ca_file)) if ca_file else None,
        ca_data=ca_text,
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
    )


def in_cluster(sa_dir: Path = SERVICE_ACCOUNT_DIR,
               environ: dict[str, str] | None = None) -> KubeCredentials:
    """Credentials of the pod's service account (token, ca.crt, namespace; KUBERNETES_SERVICE_*)."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise config_error("KUBERNETES_SERVICE_HOST is not set: not running in a cluster")
    host = f"[{host}]" if ":" in host else host
    namespace_file = sa_dir / "namespace"
    return KubeCredentials(
        server=_api_server(f"https://{host}:{port}", "KUBERNETES_SERVICE_HOST/PORT"),
        token=_read(sa_dir / "token", "service account token"),
        namespace=_read(namespace_file, "namespace") if namespace_file.exists() else "default",
        ca_file=str(sa_dir / "ca.crt"),
    )


def load_credentials(target: KubernetesTarget) -> KubeCredentials:
    """The target's kubeconfig, else the in-cluster service account, else $KUBECONFIG or ~/.kube/config."""
    if target.kubeconfig:
        return from_kubeconfig(Path(target.kubeconfig).expanduser(), target.context)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT_DIR / "token").exists():
        return in_cluster()
    default = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config"
    return from_kubeconfig(Path(default).expanduser(), target.context)


def workload_path(target: KubernetesTarget, namespace: str) -> str:
    """The REST path of the Deployment or StatefulSet."""
    return f"/apis/apps/v1/namespaces/{namespace}/{target.workload}s/{target.name}"


def api_error(response: httpx.Response, what: str) -> ApplicationError:
    """Map an API status: 400/401/403/404/422 are permanent; 408, 409, 429 and 5xx retryable.

    The message (a Status object's, else the body's start) is redacted like an HTTP action's
    body (`scrub`): a proxy or webhook in front of the API server that echoes the bearer token
    it refused must not put it in the error, and so in the history and the worker's log.
    """
    try:
        decoded = response.json()
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        message = scrub(str(decoded.get("message", "")), response)
    else:  # redacted before it is cut, so no part of a secret survives the cut
        message = scrub(response.text, response)[:300]
    code = response.status_code
    text = f"{what}: HTTP {code} {message}".strip()
    if code in (408, 409, 429) or code >= 500:  # as for HTTP actions: 408 asks for a repeat
        return ApplicationError(text, type="KubeApiRetryable")
    kind = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}.get(code, "KubeRequestInvalid")
    return ApplicationError(text, type=kind, non_retryable=True)


class KubeApi:
    """One API server conversation, authenticated with the resolved credentials."""

    def __init__(self, credentials: KubeCredentials, timeout: float) -> None:
        self.credentials = credentials
        self._timeout = timeout
        try:
            verify = credentials.verify()
        except OSError as err:  # a missing or unreadable CA file, CA data that is not PEM
            raise config_error(f"cannot load the API server's CA ({credentials.ca_file or 'data'}): "
                               f"{err.strerror or type(err).__name__}") from None
        token = header_credential(credentials.token)
        if token is None:  # sent as is, h11 would refuse it with an error quoting the token
            raise config_error("the API server token cannot be sent in an HTTP header: it holds a "
                               "control or non-ASCII character")
        self._client = httpx.AsyncClient(
            base_url=credentials.server, verify=verify,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )

    async def __aenter__(self) -> KubeApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def request(self, method: str, path: str, what: str, body: Any = None,
                      content_type: str | None = None,
                      params: dict[str, str] | None = None) -> dict[str, Any]:
        """One API call returning the decoded object; failures are mapped by status."""
        headers = {"Content-Type": content_type} if content_type else {}
        content = json.dumps(body).encode() if body is not None else None
        try:
            response = await heartbeating(
                self._client.request(method, path, content=content, headers=headers,
                                     params=params, timeout=self._timeout),
                f"kubernetes {method} {path}",
            )
        except httpx.HTTPError as err:  # not chained: httpx may quote a response echoing the token
            raise ApplicationError(f"{what}: API server {self.credentials.server} unreachable: "
                                   f"{type(err).__name__}", type="KubeApiRetryable") from None
        if response.status_code not in (200, 201):
            raise api_error(response, what)
        decoded: dict[str, Any] = response.json()
        return decoded


def restart_patch(restarted_at: str, key: str) -> dict[str, Any]:
    """The strategic merge patch `kubectl rollout restart` sends, plus the step that sent it."""
    annotations = {RESTARTED_AT: restarted_at, STEP_ANNOTATION: key}
    return {"spec": {"template": {"metadata": {"annotations": annotations}}}}


class KubernetesActivities:
    """The rollout-restart activity."""

    def __init__(self, deps: ActivityDeps) -> None:
        self._deps = deps

    @activity.defn(name="restart_kubernetes")
    async def restart_kubernetes(self, request: ActionRequest) -> ActionResult:
        """Rollout-restart the workload; the annotation value is fixed per step, so a retry is a no-op."""
        spec = action_spec(request, KubernetesRestartAction)
        credentials = load_credentials(spec)
        namespace = spec.namespace or credentials.namespace
        path = workload_path(spec, namespace)

        def dry_run() -> DryRun:
            return DryRun(f"would PATCH {credentials.server}{path} ({STRATEGIC_MERGE}) "
                          f"setting pod-template annotation {RESTARTED_AT}")

        async def perform(step: ActionStep) -> ActionResult:
            restarted_at = step.progress.get("restarted_at")
            if restarted_at is None:
                restarted_at = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
                await step.record(restarted_at=restarted_at)
            async with KubeApi(credentials, spec.timeout.total_seconds()) as api:
                patched = await api.request(
                    "PATCH", path, f"rollout restart of {spec.workload} {namespace}/{spec.name}",
                    body=restart_patch(restarted_at, step.key), content_type=STRATEGIC_MERGE,
                    params={"fieldManager": "medkit"},
                )
            generation = patched.get("metadata", {}).get("generation")
            return ActionResult(
                action_name=request.action_name, kind=spec.kind, ok=True,
                detail=f"{spec.workload} {namespace}/{spec.name} rollout restarted at {restarted_at}",
                data={"restarted_at": restarted_at, "generation": generation, "namespace": namespace},
            )

        return await perform_once(self._deps.ledger, request, dry_run, perform)
