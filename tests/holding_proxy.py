"""A TCP proxy in front of the real Temporal server that holds the server's answers on cue.

It forwards every byte both ways until the client sends a gRPC message `cue` accepts; from then
on it still forwards what the client sends, but holds what the server sends back (every
connection, in order) until `release` is called, then forwards it all. To a worker it looks as
if Temporal took that long to answer the cued call, with no timing involved: a test decides
what happens on the worker's side before the answer arrives.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from temporalio.api.workflowservice.v1 import RespondWorkflowTaskCompletedRequest

from tests.silencing_proxy import CHUNK, ForwardingProxy, GrpcRequests


def workflow_task_heartbeat(namespace: str) -> Callable[[bytes], bool]:
    """A cue for the completion a worker sends to keep a workflow task alive while a local
    activity runs past most of the task's timeout (a workflow task "heartbeat"): it asks for a
    new task at once, and for that task in the answer."""

    def cue(message: bytes) -> bool:
        request = RespondWorkflowTaskCompletedRequest()
        try:
            request.ParseFromString(message)
        except Exception:  # another call's message: not this one
            return False
        return (request.namespace == namespace and bool(request.task_token)
                and request.force_create_new_workflow_task and request.return_new_workflow_task)

    return cue


@dataclass
class HoldingProxy(ForwardingProxy):
    """Forwards both ways; once `cue` accepted a request, the server's bytes wait until
    `release`."""

    cue: Callable[[bytes], bool]
    cued: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        """Forward what the server sent since the cue, and everything after it."""
        self.released.set()

    def _requests(self, source: socket.socket, sink: socket.socket) -> None:
        """Client to server: forward everything; the cue is marked before the request that
        holds it leaves, so its answer is always held."""
        requests = GrpcRequests()
        with contextlib.suppress(OSError):
            while data := source.recv(CHUNK):
                if any(self.cue(message) for message in requests.feed(data)):
                    self.cued.set()
                sink.sendall(data)

    def _answers(self, source: socket.socket, sink: socket.socket) -> None:
        """Server to client: forward, except between the cue and the release."""
        with contextlib.suppress(OSError):
            while data := source.recv(CHUNK):
                if self.cued.is_set():
                    self.released.wait()
                sink.sendall(data)

    def _start_pumps(self, client: socket.socket, server: socket.socket) -> None:
        threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
        threading.Thread(target=self._answers, args=(server, client), daemon=True).start()

    def _closing(self) -> None:
        """Release anything held, so no pump waits on a closed connection."""
        self.released.set()
