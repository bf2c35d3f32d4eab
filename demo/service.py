"""A small HTTP service whose health can be broken on purpose, to show and test medkit.

GET  /healthz          200 "ok", or 503 / slow / error according to the injected fault
GET  /                 a normal request; fails at the injected error rate
GET  /metrics          Prometheus text: request counters by status code, fault state, breaker
POST /admin/fault      {"mode": "healthy"|"unhealthy"|"slow"|"errors", "latency_ms": N, "error_rate": P}
GET|POST /admin/breaker {"state": "closed"|"open"|"half_open"}
POST /admin/crash      exit at once with status 1 (a crash, for medkit to restart)

Faults live in memory, so a restart heals them, as a restart heals a wedged real process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FAULT_MODES = ("healthy", "unhealthy", "slow", "errors")
BREAKER_STATES = ("closed", "open", "half_open")


class DemoState:
    """The injected fault, the breaker position and the request counters."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mode = "healthy"
        self.latency_ms = 3000.0
        self.error_rate = 0.5
        self.breaker = "closed"
        self.requests: dict[int, int] = {}
        self.started = time.time()

    def count(self, code: int) -> None:
        """Count a response by status code."""
        with self.lock:
            self.requests[code] = self.requests.get(code, 0) + 1


class DemoHandler(BaseHTTPRequestHandler):
    """Routes requests to the demo's endpoints."""

    state: DemoState
    server_version = "medkit-demo/1"

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; the counters in /metrics tell the story."""

    def _send(self, code: int, body: str | dict[str, Any], content_type: str = "") -> None:
        text = json.dumps(body) if isinstance(body, dict) else body
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type or
                         ("application/json" if isinstance(body, dict) else "text/plain"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.state.count(code)

    def _json_body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            return None
        return body if isinstance(body, dict) else None

    def do_GET(self) -> None:
        """Serve health, normal requests, metrics and the breaker state."""
        state = self.state
        if self.path == "/healthz":
            if state.mode == "unhealthy":
                self._send(503, "unhealthy (injected fault)")
                return
            if state.mode == "slow":
                time.sleep(state.latency_ms / 1000)
            self._send(200, "ok")
        elif self.path == "/":
            if state.breaker == "open":
                self._send(503, {"error": "circuit breaker open"})
            elif state.mode == "errors" and random.random() < state.error_rate:  # noqa: S311
                self._send(500, {"error": "injected error"})
            else:
                self._send(200, {"hello": "from the medkit demo", "pid": os.getpid()})
        elif self.path == "/metrics":
            self._send(200, self._metrics(), "text/plain; version=0.0.4")
        elif self.path == "/admin/breaker":
            self._send(200, {"state": state.breaker})
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        """Inject faults, move the breaker, or crash."""
        body = self._json_body()
        if body is None:
            self._send(400, {"error": "body must be a JSON object"})
            return
        state = self.state
        if self.path == "/admin/fault":
            mode = body.get("mode", "unhealthy")
            if mode not in FAULT_MODES:
                self._send(400, {"error": f"mode must be one of {FAULT_MODES}"})
                return
            with state.lock:
                state.mode = mode
                state.latency_ms = float(body.get("latency_ms", state.latency_ms))
                state.error_rate = float(body.get("error_rate", state.error_rate))
            self._send(200, {"mode": mode})
        elif self.path == "/admin/breaker":
            wanted = body.get("state")
            if wanted not in BREAKER_STATES:
                self._send(400, {"error": f"state must be one of {BREAKER_STATES}"})
                return
            state.breaker = wanted
            self._send(200, {"state": wanted})
        elif self.path == "/admin/crash":
            self._send(200, {"crashing": os.getpid()})
            self.wfile.flush()
            os._exit(1)
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def _metrics(self) -> str:
        state = self.state
        lines = [
            "# HELP demo_requests_total Requests served, by status code.",
            "# TYPE demo_requests_total counter",
        ]
        with state.lock:
            for code, n in sorted(state.requests.items()):
                lines.append(f'demo_requests_total{{code="{code}"}} {n}')
            healthy = 1 if state.mode == "healthy" else 0
        lines += [
            "# HELP demo_healthy 1 when no fault is injected.",
            "# TYPE demo_healthy gauge",
            f"demo_healthy {healthy}",
            "# HELP demo_breaker_open 1 when the circuit breaker is open.",
            "# TYPE demo_breaker_open gauge",
            f"demo_breaker_open {1 if state.breaker == 'open' else 0}",
        ]
        return "\n".join(lines) + "\n"


def serve(host: str, port: int, pid_file: Path | None = None) -> None:
    """Serve until killed."""
    DemoHandler.state = DemoState()
    server = ThreadingHTTPServer((host, port), DemoHandler)
    server.daemon_threads = True
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")
    print(f"medkit demo service pid {os.getpid()} on http://{host}:{port}", flush=True)
    server.serve_forever()


def main() -> None:
    """`python -m demo.service --port 8099`."""
    parser = argparse.ArgumentParser(description="medkit's fault-injectable demo service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--pid-file", type=Path)
    args = parser.parse_args()
    serve(args.host, args.port, args.pid_file)


if __name__ == "__main__":
    main()
