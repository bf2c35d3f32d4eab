"""Local stand-ins that check requests against the documented APIs, plus tests of the checks.

- KubeApiServer: the Kubernetes API for Deployments/StatefulSets and their scale subresource
  (PATCH content types: strategic merge for the workload, merge patch for scale; bearer token;
  Status objects with reason NotFound/Forbidden/Unauthorized/UnsupportedMediaType).
- DockerEngine: the Engine API over a unix socket: GET /containers/{id}/json and
  POST /containers/{id}/restart?t=N (204, 404 {"message": "No such container: ..."}, 500).
- ScaleEndpoint: a generic HTTP admin endpoint holding a replica count.
- write_systemctl: a recording stand-in for systemctl with LSB exit codes (no systemd here).
"""

from __future__ import annotations

import json
import re
import socketserver
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.conftest import free_port

TOKEN = "s3cret-test-token"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
_WORKLOAD = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/(deployments|statefulsets)/([^/]+)(/scale)?$")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


@dataclass
class KubeApiServer:
    """The API server subset medkit uses; every request is validated and recorded."""

    port: int
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    forbidden_namespaces: set[str] = field(default_factory=set)
    lose_next_patch_response: bool = False

    @property
    def server(self) -> str:
        """The API server URL."""
        return f"http://127.0.0.1:{self.port}"

    def add(self, namespace: str, workload: str, name: str, replicas: int = 2) -> dict[str, Any]:
        """Create a Deployment or StatefulSet."""
        obj = {"apiVersion": "apps/v1", "kind": workload.capitalize(),
               "metadata": {"name": name, "namespace": namespace, "generation": 1,
                            "uid": str(uuid.uuid4())},
               "spec": {"replicas": replicas, "template": {"metadata": {"annotations": {}}}}}
        self.objects[(namespace, f"{workload}s", name)] = obj
        return obj

    def kubeconfig(self, directory: Path, namespace: str = "prod") -> Path:
        """A kubeconfig whose current context points here with the bearer token."""
        path = directory / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "local", "cluster": {"server": self.server}}],
            "users": [{"name": "medkit", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "local", "user": "medkit",
                                                      "namespace": namespace}}],
        }))
        return path

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        """Validate one request against the API contract and apply it."""
        url = urlsplit(raw_path)
        content_type = headers.get("Content-Type")
        decoded = json.loads(body) if body else None
        self.requests.append(Recorded(method, url.path, parse_qs(url.query), content_type, decoded))
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        match = _WORKLOAD.match(url.path)
        if match is None:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        namespace, resource, name, scale = match.groups()
        if namespace in self.forbidden_namespaces:
            return 403, _status(403, "Forbidden", f'{resource}.apps "{name}" is forbidden: User '
                                f'"system:serviceaccount:medkit:medkit" cannot patch resource')
        obj = self.objects.get((namespace, resource, name))
        if obj is None:
            return 404, _status(404, "NotFound", f'{resource}.apps "{name}" not found')
        if method == "GET":
            return 200, self._scale(obj) if scale else obj
        if method != "PATCH":
            return 405, _status(405, "MethodNotAllowed", f"{method} is not supported")
        wanted = MERGE if scale else STRATEGIC
        if content_type != wanted:
            return 415, _status(415, "UnsupportedMediaType",
                                f"the body of the request was in an unknown format - accepted "
                                f"media types include: {wanted}")
        if scale:
            if set(decoded) != {"spec"} or set(decoded["spec"]) != {"replicas"} or \
                    not isinstance(decoded["spec"]["replicas"], int):
                return 422, _status(422, "Invalid", "scale patch must set only spec.replicas")
            if obj["spec"]["replicas"] != decoded["spec"]["replicas"]:
                obj["spec"]["replicas"] = decoded["spec"]["replicas"]
                obj["metadata"]["generation"] += 1
            answer: dict[str, Any] = self._scale(obj)
        else:
            annotations = decoded["spec"]["template"]["metadata"]["annotations"]
            if set(decoded) != {"spec"} or not all(isinstance(v, str) for v in annotations.values()):
                return 422, _status(422, "Invalid", "restart patch must only set annotations")
            current = obj["spec"]["template"]["metadata"]["annotations"]
            if any(current.get(k) != v for k, v in annotations.items()):
                current.update(annotations)
                obj["metadata"]["generation"] += 1
            answer = obj
        if self.lose_next_patch_response:
            self.lose_next_patch_response = False
            return 500, _status(500, "InternalError", "etcd leader changed")
        return 200, answer

    @staticmethod
    def _scale(obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "spec": {"replicas": obj["spec"]["replicas"]},
                "status": {"replicas": obj["spec"]["replicas"], "selector": f"app={meta['name']}"}}


@dataclass
class DockerEngine:
    """The Engine API subset medkit uses, on a unix socket."""

    socket: Path
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    lose_next_restart_response: bool = False

    def add(self, name: str) -> None:
        """Create a running container."""
        self.containers[name] = {"Id": uuid.uuid4().hex * 2, "Name": f"/{name}",
                                 "State": {"Running": True, "StartedAt": _now()}}
        self.restarts[name] = 0

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        """Validate one request against the Engine API and apply it."""
        url = urlsplit(raw_path)
        query = parse_qs(url.query)
        self.requests.append(Recorded(method, url.path, query, headers.get("Content-Type"),
                                      body.decode() or None))
        path = re.sub(r"^/v1\.\d+", "", url.path)
        match = re.match(r"^/containers/([^/]+)/(json|restart)$", path)
        if match is None:
            return 404, {"message": "page not found"}
        name, op = match.groups()
        container = self.containers.get(name)
        if (op, method) not in (("json", "GET"), ("restart", "POST")):
            return 405, {"message": f"{method} not allowed"}
        if container is None:
            return 404, {"message": f"No such container: {name}"}
        if op == "json":
            return 200, container
        if body or not all(v.lstrip("-").isdigit() for v in query.get("t", [])):
            return 400, {"message": "restart takes no body and an integer t"}
        container["State"]["StartedAt"] = _now()
        self.restarts[name] += 1
        if self.lose_next_restart_response:
            self.lose_next_restart_response = False
            return 500, {"message": "Something went wrong."}
        return 204, None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class ScaleEndpoint:
    """A generic admin endpoint: GET /replicas → {"pool": {"replicas": n}}; PUT /replicas {"replicas": n}."""

    port: int
    replicas: int = 3
    requests: list[Recorded] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The endpoint."""
        return f"http://127.0.0.1:{self.port}/replicas"

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        """Answer GET and PUT; require the bearer token."""
        decoded = json.loads(body) if body else None
        self.requests.append(Recorded(method, raw_path, {}, headers.get("Content-Type"), decoded))
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, {"error": "unauthorized"}
        if method == "GET":
            return 200, {"pool": {"replicas": self.replicas}}
        if method == "PUT" and isinstance(decoded, dict) and isinstance(decoded.get("replicas"), int):
            self.replicas = decoded["replicas"]
            return 200, {"replicas": self.replicas}
        return 400, {"error": "PUT {\"replicas\": int}"}


def _handler(app: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            code, payload = app.handle(self.command, self.path, self.headers, self.rfile.read(length))
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(code)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            if code != 204:  # RFC 9110: no Content-Length on a 204
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[Any, Any]:
        conn, _ = super().get_request()
        return conn, ("uds", 0)


@contextmanager
def serving(app: Any) -> Iterator[Any]:
    """Serve `app` (on its TCP port, or its unix socket) in a thread for the block's duration."""
    server: socketserver.BaseServer
    if isinstance(app, DockerEngine):
        server = _UnixHTTPServer(str(app.socket), _handler(app))
    else:
        server = ThreadingHTTPServer(("127.0.0.1", app.port), _handler(app))
        server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app
    finally:
        server.shutdown()
        server.server_close()


def write_systemctl(directory: Path) -> tuple[Path, Path]:
    """A systemctl stand-in recording its argv; exit codes follow LSB by unit name.

    missing.service → 5 (not found), locked.service → 4 (privilege), flaky.service → 1,
    anything else → 0. Returns the executable and the log of calls (one JSON argv per line).
    """
    log = directory / "systemctl-calls.jsonl"
    script = directory / "systemctl"
    script.write_text(f"""#!{sys.executable}
import json, sys
with open({str(log)!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
unit = sys.argv[-1]
codes = {{"missing.service": 5, "locked.service": 4, "flaky.service": 1}}
code = codes.get(unit, 0)
if code == 5:
    print(f"Failed to restart {{unit}}: Unit {{unit}} not found.", file=sys.stderr)
sys.exit(code)
""")
    script.chmod(0o755)
    return script, log


def calls(log: Path) -> list[list[str]]:
    """The argv of every recorded systemctl call."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_kube_server_rejects_wrong_patch_type_and_missing_token(tmp_path: Path) -> None:
    api = KubeApiServer(port=free_port())
    api.add("prod", "deployment", "web")
    path = f"{api.server}/apis/apps/v1/namespaces/prod/deployments/web"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = json.dumps({"spec": {"template": {"metadata": {"annotations": {"a": "b"}}}}})
    with serving(api):
        no_token = httpx.patch(path, content=body, headers={"Content-Type": STRATEGIC})
        wrong_type = httpx.patch(path, content=body, headers={**auth, "Content-Type": MERGE})
        right = httpx.patch(path, content=body, headers={**auth, "Content-Type": STRATEGIC})
    assert no_token.status_code == 401 and no_token.json()["reason"] == "Unauthorized"
    assert wrong_type.status_code == 415 and wrong_type.json()["reason"] == "UnsupportedMediaType"
    assert right.status_code == 200 and right.json()["metadata"]["generation"] == 2


def test_docker_engine_answers_on_its_unix_socket(tmp_path: Path) -> None:
    engine = DockerEngine(socket=tmp_path / "docker.sock")
    engine.add("web")
    transport = httpx.HTTPTransport(uds=str(engine.socket))
    with serving(engine), httpx.Client(transport=transport, base_url="http://docker") as client:
        missing = client.post("/v1.47/containers/nope/restart")
        ok = client.post("/containers/web/restart", params={"t": 3})
    assert missing.status_code == 404 and missing.json() == {"message": "No such container: nope"}
    assert ok.status_code == 204 and engine.restarts["web"] == 1
