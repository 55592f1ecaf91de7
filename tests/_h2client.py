"""
A minimal blocking HTTP/2 client over TLS, on the ``h2`` package that
``Twisted[http2]`` brings, for seeing exactly what a server sends: every
header as it is on the wire (inbound header validation is off, so a
forbidden header is reported, not refused), every DATA frame, and GOAWAY.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events

from ._helpers import Closing


class H2Stream:
    """What arrived on one stream."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.data = b""
        self.ended = False
        self.reset = False

    def header(self, name: bytes) -> list[bytes]:
        """The values of header ``name``."""
        return [value for key, value in self.headers if key == name]


class H2Client(Closing):
    """
    One HTTP/2 connection to ``127.0.0.1:port``, negotiated by ALPN; the
    certificate is not checked (the tests' are self-signed).

    :ivar protocol: The ALPN protocol the server selected.
    :ivar terminated: The GOAWAY event, once the server sent one.
    :ivar closed: Whether the server closed the connection.
    """

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2", "http/1.1"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.protocol = self.sock.selected_alpn_protocol()
        self.connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, validate_inbound_headers=False)
        )
        self.connection.initiate_connection()
        self.sock.sendall(self.connection.data_to_send())
        self.port = port
        self.streams: dict[int, H2Stream] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.closed = False

    def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> H2Stream:
        """Send a request; return its stream, filled in by :meth:`poll`."""
        stream_id = self.connection.get_next_available_stream_id()
        self.connection.send_headers(
            stream_id,
            [
                (":method", method),
                (":path", path),
                (":scheme", "https"),
                (":authority", f"127.0.0.1:{self.port}"),
                *(headers or []),
            ],
            end_stream=not body,
        )
        if body:
            self.connection.send_data(stream_id, body, end_stream=True)
        self.sock.sendall(self.connection.data_to_send())
        stream = self.streams[stream_id] = H2Stream()
        return stream

    def poll(self, timeout: float) -> None:
        """Read and handle what arrives within ``timeout`` seconds."""
        if self.closed:
            return
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        for event in self.connection.receive_data(data):
            self._handle(event)
        outgoing = self.connection.data_to_send()
        if outgoing:
            self.sock.sendall(outgoing)

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event
            return
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if stream is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            stream.headers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            stream.data += event.data
            self.connection.acknowledge_received_data(
                event.flow_controlled_length, event.stream_id
            )
        elif isinstance(event, h2.events.StreamEnded):
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset):
            stream.reset = True

    def until(self, done: Callable[[], object], timeout: float = 10.0) -> bool:
        """Poll until ``done()`` is true or the connection ends; return it."""
        deadline = time.monotonic() + timeout
        while not done() and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.poll(min(left, 0.5))
        return bool(done())

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()
