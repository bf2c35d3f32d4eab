"""Remediation actions (what medkit may do to a system) and their results."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from models.base import Duration, EnvName, MedkitModel, Name
from models.probes import ChildEnv, HttpProbe, InheritEnv, TcpProbe
from models.urls import PolicyUrl

Argv = Annotated[list[str], Field(min_length=1)]
"""A program and its arguments. medkit never runs a shell."""

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
"""Headers that carry credentials, refused in a policy (compared case-insensitively)."""

SECRET_HEADER_NAME = re.compile(r"token|secret|passw|api-?key|auth|credential|session|cookie|"
                                r"signature", re.IGNORECASE)
"""Header names that carry credentials by convention (X-Api-Key, X-Auth-Token, Private-Token,
X-Vault-Token, X-Session-Id...), refused as the four above are."""


def _no_secret_headers(headers: dict[str, str]) -> dict[str, str]:
    """Refuse credential headers: the policy travels in every workflow's history, in clear."""
    refused = sorted(name for name in headers if name.strip().lower() in SECRET_HEADERS
                     or SECRET_HEADER_NAME.search(name))
    if refused:
        raise ValueError(
            f"header(s) {', '.join(refused)} carry credentials and must not be written in the "
            "policy (it is stored in every workflow's history); use bearer_token_env to name the "
            "worker env var holding the token"
        )
    return headers


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An HTTP header name: one or more token characters (RFC 9110, section 5.1)."""
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")
"""A header value medkit sends: printable ASCII, spaces and tabs (no line break, no byte an
HTTP client must refuse or encode in a way the server may read otherwise)."""


def sendable_header_value(value: str) -> bool:
    """Whether `value` can be sent as a header value (see `_HEADER_VALUE`): a policy header's,
    or a credential the worker reads from its environment."""
    return _HEADER_VALUE.fullmatch(value) is not None


def _sendable_headers(headers: dict[str, str]) -> dict[str, str]:
    """Refuse a header no request can carry, so `config check` says so instead of every
    attempt of the action failing (and being retried) when it runs."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {name!r} is not an HTTP token (letters, digits and "
                             "!#$%&'*+.^_`|~- only)")
        if not sendable_header_value(value):
            raise ValueError(f"header {name}'s value holds a character no request can carry "
                             "(only printable ASCII, spaces and tabs)")
    return headers


Headers = Annotated[dict[str, str], AfterValidator(_no_secret_headers),
                    AfterValidator(_sendable_headers)]
"""Extra request headers, none of them a credential (Authorization, Cookie and kin are refused),
each one a request can carry."""


class RestartProcessAction(MedkitModel):
    """Stop a supervised local process (TERM, then KILL after `grace`) and start `argv` again."""

    activity: ClassVar[str] = "restart_process"
    kind: Literal["restart_process"] = "restart_process"
    argv: Argv
    pid_file: str
    cwd: str | None = None
    env: ChildEnv = Field(default_factory=dict)
    inherit_env: InheritEnv = Field(default_factory=list)
    log_file: str | None = None
    grace: Duration = timedelta(seconds=5)
    ready_probe: Annotated[HttpProbe | TcpProbe, Field(discriminator="kind")] | None = None
    ready_timeout: Duration = timedelta(seconds=20)

    def time_budget(self) -> timedelta:
        """The longest one attempt can legitimately take: stop grace plus start-up."""
        return self.grace + self.ready_timeout


class CommandAction(MedkitModel):
    """Run a program (argv, no shell) with a timeout; any exit code outside `ok_exit_codes` fails."""

    activity: ClassVar[str] = "run_command"
    kind: Literal["command"] = "command"
    argv: Argv
    cwd: str | None = None
    env: ChildEnv = Field(default_factory=dict)
    inherit_env: InheritEnv = Field(default_factory=list)
    timeout: Duration = timedelta(seconds=30)
    ok_exit_codes: list[int] = Field(default_factory=lambda: [0], min_length=1)

    def time_budget(self) -> timedelta:
        """The longest one attempt can legitimately take."""
        return self.timeout


class NotifyAction(MedkitModel):
    """Send a notification to the named routes as a ladder step (one notify activity per route)."""

    activity: ClassVar[str] = "notify"
    kind: Literal["notify"] = "notify"
    routes: list[Name] = Field(min_length=1)
    message: str = ""

    def time_budget(self) -> timedelta:
        """Delivery to one route."""
        return timedelta(seconds=30)


JsonBody = dict[str, Any] | list[Any] | None
Status = Annotated[int, Field(ge=100, le=599)]
ReplicaTarget = Annotated[int, Field(ge=0)] | Literal["previous"]
"""A replica count, or `previous`: the count recorded before the last scale of the same target."""

K8S_NAME = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"


class SystemdRestartAction(MedkitModel):
    """`systemctl [--user] restart UNIT` run as an argv; exit codes are mapped to retryable or not."""

    activity: ClassVar[str] = "restart_systemd"
    kind: Literal["systemd"] = "systemd"
    unit: Annotated[str, Field(pattern=r"^[A-Za-z0-9:_.@\\][A-Za-z0-9:_.@\\-]*$")]
    systemctl: str = "systemctl"
    user: bool = False
    timeout: Duration = timedelta(seconds=60)

    def time_budget(self) -> timedelta:
        """The longest one attempt can legitimately take."""
        return self.timeout


class DockerRestartAction(MedkitModel):
    """Restart a container through the Docker Engine API on its unix socket."""

    activity: ClassVar[str] = "restart_docker"
    kind: Literal["docker"] = "docker"
    container: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    socket: str = "/var/run/docker.sock"
    api_version: Annotated[str, Field(pattern=r"^v1\.\d+$")] | None = None
    stop_timeout: Duration = timedelta(seconds=10)
    timeout: Duration = timedelta(seconds=60)

    @model_validator(mode="after")
    def _room_to_stop(self) -> DockerRestartAction:
        if self.timeout <= self.stop_timeout:
            raise ValueError("timeout must exceed stop_timeout (the engine waits that long to stop)")
        return self

    def time_budget(self) -> timedelta:
        """Inspect, then a restart that may wait stop_timeout before the kill."""
        return self.timeout * 2


class KubernetesTarget(MedkitModel):
    """A Deployment or StatefulSet and how to reach its API server (kubeconfig or in-cluster)."""

    workload: Literal["deployment", "statefulset"] = "deployment"
    name: Annotated[str, Field(pattern=K8S_NAME)]
    namespace: Annotated[str, Field(pattern=K8S_NAME)] | None = None
    kubeconfig: str | None = None
    context: str | None = None
    timeout: Duration = timedelta(seconds=30)


class KubernetesRestartAction(KubernetesTarget):
    """`kubectl rollout restart`: PATCH the pod-template annotation kubectl.kubernetes.io/restartedAt."""

    activity: ClassVar[str] = "restart_kubernetes"
    kind: Literal["kubernetes_restart"] = "kubernetes_restart"

    def time_budget(self) -> timedelta:
        """One PATCH."""
        return self.timeout


class HttpAction(MedkitModel):
    """Call an admin endpoint: restart, failover or rollback, named by the policy's action name."""

    activity: ClassVar[str] = "http_action"
    kind: Literal["http"] = "http"
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: PolicyUrl
    headers: Headers = Field(default_factory=dict)
    bearer_token_env: EnvName | None = None
    body: JsonBody = None
    expect_status: list[Status] = Field(default_factory=lambda: [200, 201, 202, 204], min_length=1)
    timeout: Duration = timedelta(seconds=10)
    idempotent: bool | None = None

    def resend_safe(self) -> bool:
        """Whether a request whose outcome is unknown may be sent again (by default: PUT, DELETE, GET)."""
        if self.idempotent is not None:
            return self.idempotent
        return self.method in ("GET", "PUT", "DELETE")

    def time_budget(self) -> timedelta:
        """One request."""
        return self.timeout


class BreakerAction(MedkitModel):
    """Set the target's circuit breaker; `half_open` with trials closes it only if every trial passes."""

    activity: ClassVar[str] = "set_breaker"
    kind: Literal["breaker"] = "breaker"
    url: PolicyUrl
    state: Literal["open", "half_open", "closed"]
    bearer_token_env: EnvName | None = None
    timeout: Duration = timedelta(seconds=5)
    if_unreachable: Literal["fail", "skip"] = "fail"
    trial_probe: Annotated[HttpProbe | TcpProbe, Field(discriminator="kind")] | None = None
    trials: Annotated[int, Field(ge=0, le=100)] = 0
    trial_interval: Duration = timedelta(seconds=1)

    @model_validator(mode="after")
    def _trials_need_half_open(self) -> BreakerAction:
        if (self.trials > 0) != (self.trial_probe is not None):
            raise ValueError("trial_probe and trials (> 0) go together")
        if self.trials and self.state != "half_open":
            raise ValueError("trials only apply to state: half_open")
        return self

    def time_budget(self) -> timedelta:
        """Up to three breaker calls plus every trial probe and the pauses between them."""
        probe = self.trial_probe.timeout if self.trial_probe is not None else timedelta(0)
        return self.timeout * 3 + (probe + self.trial_interval) * self.trials


class BreakerEntityAction(MedkitModel):
    """Trip or reset a fleet's durable breaker entity (`breaker:<name>`) through its `command`
    update, so every process following it stops (or resumes) calling the dependency."""

    activity: ClassVar[str] = "command_breaker_entity"
    kind: Literal["breaker_entity"] = "breaker_entity"
    name: Name
    command: Literal["trip", "reset"]
    if_missing: Literal["fail", "start"] = "fail"
    timeout: Duration = timedelta(seconds=10)

    def time_budget(self) -> timedelta:
        """One update (with the start of the entity, for `if_missing: start`)."""
        return self.timeout


class ProcessPoolScaleAction(MedkitModel):
    """Run `replicas` local copies of argv, one per port from base_port; `{port}` is substituted."""

    activity: ClassVar[str] = "scale_process_pool"
    kind: Literal["scale_pool"] = "scale_pool"
    argv: Argv
    replicas: ReplicaTarget
    base_port: Annotated[int, Field(ge=1, le=65535)]
    max_replicas: Annotated[int, Field(ge=1, le=64)] = 8
    pool: Name | None = None
    host: str = "127.0.0.1"
    cwd: str | None = None
    env: ChildEnv = Field(default_factory=dict)
    inherit_env: InheritEnv = Field(default_factory=list)
    grace: Duration = timedelta(seconds=5)
    ready_timeout: Duration = timedelta(seconds=20)

    @model_validator(mode="after")
    def _ports_fit(self) -> ProcessPoolScaleAction:
        if not any("{port}" in arg for arg in self.argv):
            raise ValueError("argv must contain {port} so each replica gets its own port")
        if self.base_port + self.max_replicas - 1 > 65535:
            raise ValueError("base_port + max_replicas runs past port 65535")
        if isinstance(self.replicas, int) and self.replicas > self.max_replicas:
            raise ValueError(f"replicas {self.replicas} exceeds max_replicas {self.max_replicas}")
        return self

    def time_budget(self) -> timedelta:
        """Stopping surplus replicas (concurrently) plus starting new ones (concurrently)."""
        return self.grace + self.ready_timeout


class KubernetesScaleAction(KubernetesTarget):
    """Set replicas through the workload's scale subresource (GET, then merge-patch PATCH)."""

    activity: ClassVar[str] = "scale_kubernetes"
    kind: Literal["kubernetes_scale"] = "kubernetes_scale"
    replicas: ReplicaTarget

    def time_budget(self) -> timedelta:
        """A GET and a PATCH."""
        return self.timeout * 2


class CommandScaleAction(MedkitModel):
    """Run argv with `{replicas}` substituted; `current_argv` (optional) prints today's count."""

    activity: ClassVar[str] = "scale_command"
    kind: Literal["scale_command"] = "scale_command"
    argv: Argv
    replicas: ReplicaTarget
    current_argv: Argv | None = None
    cwd: str | None = None
    env: ChildEnv = Field(default_factory=dict)
    inherit_env: InheritEnv = Field(default_factory=list)
    timeout: Duration = timedelta(seconds=60)

    @model_validator(mode="after")
    def _has_placeholder(self) -> CommandScaleAction:
        if not any("{replicas}" in arg for arg in self.argv):
            raise ValueError("argv must contain {replicas}")
        return self

    def time_budget(self) -> timedelta:
        """The count query and the scale command."""
        return self.timeout * 2


class HttpScaleAction(MedkitModel):
    """Send `body` with every "{replicas}" string replaced by the count; `current_url` reads the count."""

    activity: ClassVar[str] = "scale_http"
    kind: Literal["scale_http"] = "scale_http"
    url: PolicyUrl
    replicas: ReplicaTarget
    method: Literal["POST", "PUT", "PATCH"] = "PUT"
    body: JsonBody = Field(default_factory=lambda: {"replicas": "{replicas}"})
    bearer_token_env: EnvName | None = None
    current_url: PolicyUrl | None = None
    replicas_field: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")] = "replicas"
    expect_status: list[Status] = Field(default_factory=lambda: [200, 201, 202, 204], min_length=1)
    timeout: Duration = timedelta(seconds=10)

    def time_budget(self) -> timedelta:
        """A GET and the scale request."""
        return self.timeout * 2


SCALE_KINDS = ("scale_pool", "kubernetes_scale", "scale_command", "scale_http")
"""The action kinds that record a previous replica count (for `replicas: previous`)."""


ActionSpec = Annotated[
    RestartProcessAction | CommandAction | NotifyAction | SystemdRestartAction | DockerRestartAction
    | KubernetesRestartAction | HttpAction | BreakerAction | BreakerEntityAction | ProcessPoolScaleAction
    | KubernetesScaleAction | CommandScaleAction | HttpScaleAction,
    Field(discriminator="kind"),
]
"""Any action a policy can define, selected by its `kind`."""


class ActionRequest(MedkitModel):
    """The single argument of every action activity."""

    workflow_id: str
    service: Name
    action_name: Name
    spec: ActionSpec
    reason: str
    dry_run: bool = False
    policy_digest: str = ""
    """`models.policy_safety.safety_digest` of the recovery's policy snapshot; the worker
    refuses the action unless it is the digest of its own policy file's service."""


OUTCOME_UNKNOWN = "OutcomeUnknown"
"""The error type of an action that refuses to run again because an earlier attempt may have run
it and its outcome was never recorded (a worker died mid-step); the recovery hands over to a
human rather than trying another step."""


class ActionResult(MedkitModel):
    """What an action did. `simulated` marks a dry-run; `replayed` an idempotent repeat."""

    action_name: str
    kind: str
    ok: bool
    detail: str
    simulated: bool = False
    replayed: bool = False
    data: dict[str, float | int | str | None] = Field(default_factory=dict)
