"""
Tests for L{twisted_sse._check._h2}: one request over HTTP/2, an
L{H2Stream} talking to a real server-side C{h2} connection in memory.
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
)
from h2.settings import SettingCodes
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._check._h2 import MAX_H2_PREHEAD, H2Stream
from twisted_sse._check._http import Head, Recorder, Request
from twisted_sse._url import URL

URL_ = URL.parse("https://example.com:8443/events?topic=a")
SSE = [(b":status", b"200"), (b"content-type", b"text/event-stream")]


class _Carrier:
    """The connection an L{H2Stream} runs on: its transport, how it ended."""

    def __init__(self) -> None:
        self.transport: StringTransport | None = StringTransport()
        self.failed: list[str] = []
        self.completed = 0

    def fail(self, error: str) -> None:
        self.failed.append(error)

    def complete(self) -> None:
        self.completed += 1


class _Recorder(Recorder):
    """Keeps the head and body; stops where told."""

    def __init__(self) -> None:
        self.heads: list[Head] = []
        self.body_bytes = b""
        self.stop_at_head: str | None = None
        self.stop_in_body: str | None = None

    def head(self, head: Head) -> str | None:
        self.heads.append(head)
        return self.stop_at_head

    def body(self, data: bytes) -> str | None:
        self.body_bytes += data
        return self.stop_in_body


class _Exchange:
    """An L{H2Stream} and the server-side C{h2} connection it talks to."""

    def __init__(self) -> None:
        self.carrier = _Carrier()
        self.recorder = _Recorder()
        self.stream = H2Stream(self.carrier, self.recorder)
        self.server = H2Connection(
            H2Configuration(client_side=False, header_encoding=None)
        )
        self.server.initiate_connection()
        #: What the server has heard, in order.
        self.heard: list[Any] = []

    def send(self, request: Request) -> None:
        """The client sends ``request``; the server reads it."""
        self.stream.send(request)
        self.listen()

    def listen(self) -> None:
        """The server reads what the client wrote."""
        transport = self.carrier.transport
        assert transport is not None
        data = transport.value()
        transport.clear()
        self.heard += self.server.receive_data(data)

    def answer(self) -> None:
        """The client reads what the server wrote; the server reads the reply."""
        self.stream.receive(self.server.data_to_send())
        if self.carrier.transport is not None:
            self.listen()

    def respond(self, headers: list[tuple[bytes, bytes]] = SSE) -> None:
        """Open the connection and answer the request with ``headers``."""
        self.send(Request("GET", URL_, ()))
        self.answer()
        self.server.send_headers(1, headers)
        self.answer()

    def body(self, size: int) -> None:
        """Send ``size`` bytes of body, as fast as the client's window allows."""
        sent = 0
        while sent < size:
            room = min(
                self.server.local_flow_control_window(1),
                self.server.max_outbound_frame_size,
                size - sent,
            )
            if not room:
                raise AssertionError(f"the window stayed shut after {sent} bytes")
            self.server.send_data(1, b"x" * room)
            sent += room
            self.answer()


def _unknown_frame(size: int) -> bytes:
    """An HTTP/2 frame of an unknown type (read and ignored) of ``size`` bytes."""
    return size.to_bytes(3, "big") + b"\xfa\x00" + bytes(4) + b"z" * size


class RequestTests(SynchronousTestCase):
    """What the server hears of the request."""

    def test_headers(self) -> None:
        """
        The request goes on stream 1: its pseudo-headers, then its headers
        in lower case; without a body, the headers end the stream.
        """
        exchange = _Exchange()
        exchange.send(
            Request("GET", URL_, (("Accept", "text/event-stream"), ("X-Name", "Zoë")))
        )
        (request,) = [e for e in exchange.heard if isinstance(e, RequestReceived)]
        self.assertEqual(request.stream_id, 1)
        self.assertEqual(
            request.headers,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"example.com:8443"),
                (b":path", b"/events?topic=a"),
                (b"accept", b"text/event-stream"),
                (b"x-name", "Zoë".encode()),
            ],
        )
        self.assertIsInstance(exchange.heard[-1], StreamEnded)

    def test_no_push(self) -> None:
        """The client's settings turn server push off."""
        exchange = _Exchange()
        exchange.send(Request("GET", URL_, ()))
        changed = [
            setting.new_value
            for event in exchange.heard
            if isinstance(event, RemoteSettingsChanged)
            for code, setting in event.changed_settings.items()
            if code == SettingCodes.ENABLE_PUSH
        ]
        self.assertEqual(changed[-1], 0)

    def test_body(self) -> None:
        """A body follows the headers, with its content-length, and ends the stream."""
        exchange = _Exchange()
        exchange.send(Request("POST", URL_, (), b'{"data": "x"}'))
        (request,) = [e for e in exchange.heard if isinstance(e, RequestReceived)]
        self.assertIn((b"content-length", b"13"), request.headers)
        (data,) = [e for e in exchange.heard if isinstance(e, DataReceived)]
        self.assertEqual(data.data, b'{"data": "x"}')
        self.assertIsInstance(exchange.heard[-1], StreamEnded)

    def test_empty_post(self) -> None:
        """A POST without a body says content-length 0 and sends no data."""
        exchange = _Exchange()
        exchange.send(Request("POST", URL_, ()))
        (request,) = [e for e in exchange.heard if isinstance(e, RequestReceived)]
        self.assertIn((b"content-length", b"0"), request.headers)
        self.assertFalse([e for e in exchange.heard if isinstance(e, DataReceived)])
        self.assertIsInstance(exchange.heard[-1], StreamEnded)


class ResponseTests(SynchronousTestCase):
    """What the recorder and the connection are told of the response."""

    def test_head(self) -> None:
        """
        The head is reported with its status and headers in lower case,
        without pseudo-headers, as HTTP/2 framing.
        """
        exchange = _Exchange()
        exchange.respond([*SSE, (b"Cache-Control", b"no-cache")])
        self.assertEqual(
            exchange.recorder.heads,
            [
                Head(
                    status=200,
                    version="HTTP/2",
                    headers=(
                        ("content-type", "text/event-stream"),
                        ("cache-control", "no-cache"),
                    ),
                    framing="h2",
                )
            ],
        )

    def test_long_body(self) -> None:
        """
        Body bytes are acknowledged as they are read: a body of many
        windows, longer than the cap before the head, is read to the end.
        """
        exchange = _Exchange()
        exchange.respond()
        exchange.body(MAX_H2_PREHEAD + 100_000)
        self.assertEqual(len(exchange.recorder.body_bytes), MAX_H2_PREHEAD + 100_000)
        self.assertEqual(exchange.carrier.failed, [])

    def test_prehead_cap(self) -> None:
        """More than MAX_H2_PREHEAD bytes without a response head fail."""
        exchange = _Exchange()
        exchange.send(Request("GET", URL_, ()))
        exchange.answer()
        frame = _unknown_frame(16000)
        fit = (MAX_H2_PREHEAD - exchange.stream.prehead) // len(frame)
        exchange.stream.receive(frame * fit)
        self.assertEqual(exchange.carrier.failed, [])
        exchange.stream.receive(frame)
        self.assertEqual(
            exchange.carrier.failed,
            [f"no HTTP/2 response head in the first {MAX_H2_PREHEAD} bytes"],
        )

    def test_stop_at_head(self) -> None:
        """A recorder that stops at the head fails the connection with its reason."""
        exchange = _Exchange()
        exchange.recorder.stop_at_head = "not an event stream"
        exchange.send(Request("GET", URL_, ()))
        exchange.answer()
        exchange.server.send_headers(1, SSE)
        exchange.server.send_data(1, b"data: x\n\n")
        exchange.answer()
        self.assertEqual(exchange.carrier.failed, ["not an event stream"])
        self.assertEqual(exchange.recorder.body_bytes, b"")

    def test_stop_in_body(self) -> None:
        """A recorder that stops in the body fails the connection with its reason."""
        exchange = _Exchange()
        exchange.recorder.stop_in_body = "dropped: a line too long"
        exchange.respond()
        exchange.server.send_data(1, b"data: x\n\n")
        exchange.answer()
        self.assertEqual(exchange.carrier.failed, ["dropped: a line too long"])

    def test_end(self) -> None:
        """The end of the stream completes the exchange; nothing was cut short."""
        exchange = _Exchange()
        exchange.respond()
        self.assertEqual(exchange.carrier.completed, 0)
        exchange.server.end_stream(1)
        exchange.answer()
        self.assertEqual(exchange.carrier.completed, 1)
        self.assertIsNone(exchange.stream.lost())

    def test_reset(self) -> None:
        """A reset of the stream fails the exchange, with the error code."""
        exchange = _Exchange()
        exchange.respond()
        exchange.server.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
        exchange.answer()
        (error,) = exchange.carrier.failed
        self.assertIn("the server reset the HTTP/2 stream", error)
        self.assertIn(f"INTERNAL_ERROR ({ErrorCodes.INTERNAL_ERROR:d})", error)

    def test_goaway(self) -> None:
        """A GOAWAY fails the exchange, with the error code."""
        exchange = _Exchange()
        exchange.respond()
        exchange.server.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        exchange.answer()
        (error,) = exchange.carrier.failed
        self.assertIn("the server sent GOAWAY", error)
        self.assertIn(f"ENHANCE_YOUR_CALM ({ErrorCodes.ENHANCE_YOUR_CALM:d})", error)

    def test_malformed(self) -> None:
        """Bytes that are not HTTP/2 fail the exchange, saying so."""
        exchange = _Exchange()
        exchange.send(Request("GET", URL_, ()))
        exchange.answer()
        # DATA on stream 0, which HTTP/2 forbids.
        exchange.stream.receive(bytes(9))
        (error,) = exchange.carrier.failed
        self.assertTrue(error.startswith("a malformed HTTP/2 response: "), error)

    def test_lost(self) -> None:
        """A close before the head or before the end of the stream says which."""
        exchange = _Exchange()
        exchange.send(Request("GET", URL_, ()))
        self.assertEqual(
            exchange.stream.lost(), "the connection closed without a response"
        )
        exchange.answer()
        exchange.server.send_headers(1, SSE)
        exchange.answer()
        self.assertEqual(
            exchange.stream.lost(),
            "the connection closed before the HTTP/2 stream ended",
        )

    def test_transport_gone(self) -> None:
        """Bytes read once the transport is gone are read, and nothing is written."""
        exchange = _Exchange()
        exchange.respond()
        exchange.carrier.transport = None
        exchange.server.send_data(1, b"data: x\n\n")
        exchange.server.ping(b"12345678")
        exchange.answer()
        self.assertEqual(exchange.recorder.body_bytes, b"data: x\n\n")
