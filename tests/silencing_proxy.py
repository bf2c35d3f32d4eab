"""A TCP proxy in front of the real Temporal server that falls silent on cue.

It forwards every byte both ways until the client has sent `marker` for the `nth` time; from
then on it forwards nothing either way (that request included) and keeps every connection open,
so to the client Temporal stops answering after it connected, as a frozen server or a network
partition looks: its calls, its health check included, simply never get an answer. The cue is
a string inside a request (the proxy reads the gRPC messages out of the HTTP/2 frames and
ungzips them, as the SDK compresses them), so a test can silence Temporal exactly when one
chosen call is sent, with no timing involved.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Self

from tests.conftest import free_port

CHUNK = 65536
_PREFACE = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
_FRAME_HEADER = 9
_DATA, _PADDED = 0x0, 0x8


class GrpcRequests:
    """The gRPC messages a client sends over one HTTP/2 connection, fed its bytes as they come."""

    def __init__(self) -> None:
        self._buffer = b""
        self._preface_left = _PREFACE
        self._streams: dict[int, bytes] = {}

    def feed(self, data: bytes) -> list[bytes]:
        """The messages (ungzipped) that `data` completes."""
        self._buffer += data
        skipped = min(self._preface_left, len(self._buffer))
        self._buffer, self._preface_left = self._buffer[skipped:], self._preface_left - skipped
        messages: list[bytes] = []
        while len(self._buffer) >= _FRAME_HEADER:
            length = int.from_bytes(self._buffer[:3])
            if len(self._buffer) < _FRAME_HEADER + length:
                break
            kind, flags = self._buffer[3], self._buffer[4]
            stream = int.from_bytes(self._buffer[5:9]) & 0x7FFFFFFF
            payload = self._buffer[_FRAME_HEADER:_FRAME_HEADER + length]
            self._buffer = self._buffer[_FRAME_HEADER + length:]
            if kind == _DATA:
                if flags & _PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                messages += self._messages(stream, payload)
        return messages

    def _messages(self, stream: int, payload: bytes) -> list[bytes]:
        """The length-prefixed gRPC messages one stream's DATA completes."""
        pending = self._streams.get(stream, b"") + payload
        messages: list[bytes] = []
        while len(pending) >= 5 and len(pending) >= 5 + int.from_bytes(pending[1:5]):
            size = int.from_bytes(pending[1:5])
            body = pending[5:5 + size]
            messages.append(gzip.decompress(body) if pending[0] else body)
            pending = pending[5 + size:]
        self._streams[stream] = pending
        return messages


@dataclass
class ForwardingProxy:
    """Listens on 127.0.0.1:`port` and gives each client its own connection to `upstream`
    (host:port), with one pump each way (`_start_pumps`, which subclasses define)."""

    upstream: str
    port: int = field(default_factory=free_port, kw_only=True)
    _sockets: list[socket.socket] = field(default_factory=list, kw_only=True)

    @property
    def address(self) -> str:
        """Where clients connect."""
        return f"127.0.0.1:{self.port}"

    def _start_pumps(self, client: socket.socket, server: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self, listener: socket.socket) -> None:
        """Accept clients; each gets its own upstream connection and two pumps."""
        host, port = self.upstream.rsplit(":", 1)
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.create_connection((host, int(port)))
                self._sockets += [client, server]
                self._start_pumps(client, server)

    def _closing(self) -> None:
        """Called as the block of `running` ends, before the connections close."""

    @contextlib.contextmanager
    def running(self) -> Iterator[Self]:
        """Serve until the block ends, then close every connection."""
        listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets.append(listener)
        threading.Thread(target=self._serve, args=(listener,), daemon=True).start()
        try:
            yield self
        finally:
            self._closing()
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@dataclass
class SilencingProxy(ForwardingProxy):
    """Forwards until cued: once the client has sent `marker` `nth` times, nothing more."""

    marker: bytes
    nth: int = 1
    silent: threading.Event = field(default_factory=threading.Event)
    _seen: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _cued(self, requests: GrpcRequests, data: bytes) -> bool:
        """Whether the requests sent so far hold the marker `nth` times."""
        found = sum(message.count(self.marker) for message in requests.feed(data))
        with self._lock:
            self._seen += found
            if self._seen >= self.nth:
                self.silent.set()
        return self.silent.is_set()

    def _pump(self, source: socket.socket, sink: socket.socket,
              requests: GrpcRequests | None) -> None:
        """Copy `source` to `sink` until either closes or the proxy falls silent; `requests`
        reads what a client sends."""
        with contextlib.suppress(OSError):
            while data := source.recv(CHUNK):
                if (requests is not None and self._cued(requests, data)) or self.silent.is_set():
                    return
                sink.sendall(data)

    def _start_pumps(self, client: socket.socket, server: socket.socket) -> None:
        for source, sink, requests in ((client, server, GrpcRequests()), (server, client, None)):
            threading.Thread(target=self._pump, args=(source, sink, requests), daemon=True).start()
