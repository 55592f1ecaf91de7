"""
One request of ``twisted-sse check`` over HTTP/2, when TLS's ALPN picked
it (as a browser would): the ``h2`` package (``Twisted[http2]``) speaks the
protocol, and the response is reported to a
:class:`~twisted_sse._check._http.Recorder` as it comes, bounded until its
head by :data:`MAX_H2_PREHEAD`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Final, Protocol

from twisted.internet.interfaces import ITransport

from ._http import Head, Recorder, Request

__all__ = ["MAX_H2_PREHEAD", "Carrier", "H2Stream"]

#: The most HTTP/2 bytes read before the response head arrives.
MAX_H2_PREHEAD: Final = 256 * 1024


class Carrier(Protocol):
    """What an :class:`H2Stream` needs of the connection it runs on."""

    @property
    def transport(self) -> ITransport | None:
        """The connection's transport, if it is still there."""

    def fail(self, error: str) -> None:
        """Stop reading, for ``error``, and drop the connection."""

    def complete(self) -> None:
        """The response is whole: end the exchange and the connection."""


class H2Stream:
    """One request over an HTTP/2 connection, with the ``h2`` package."""

    def __init__(self, connection: Carrier, recorder: Recorder) -> None:
        import h2.config
        import h2.connection

        self.connection = connection
        self.recorder = recorder
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.stream_id = 0
        self.prehead = 0
        self.head: Head | None = None
        self.ended = False

    def send(self, request: Request) -> None:
        """Open the connection and send ``request`` on its first stream."""
        from h2.settings import SettingCodes

        self.h2.initiate_connection()
        # No server push: pushed streams would only take up the window.
        self.h2.update_settings({SettingCodes.ENABLE_PUSH: 0})
        self.stream_id = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", request.method.encode("ascii")),
            (b":scheme", request.url.scheme.encode("ascii")),
            (b":authority", request.authority.encode("ascii")),
            (b":path", request.url.target.encode("ascii")),
        ]
        headers += [
            (name.lower().encode("ascii"), value.encode("utf-8"))
            for name, value in request.headers
        ]
        if request.body or request.method == "POST":
            headers.append((b"content-length", str(len(request.body)).encode()))
        self.h2.send_headers(self.stream_id, headers, end_stream=not request.body)
        if request.body:
            self.h2.send_data(self.stream_id, request.body, end_stream=True)
        self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.connection.transport is not None:
            self.connection.transport.write(data)

    def receive(self, data: bytes) -> None:
        """Read the next bytes of the connection."""
        import h2.events

        if self.head is None:
            self.prehead += len(data)
            if self.prehead > MAX_H2_PREHEAD:
                self.connection.fail(
                    f"no HTTP/2 response head in the first {MAX_H2_PREHEAD} bytes"
                )
                return
        try:
            events = self.h2.receive_data(data)
        except Exception as e:  # h2's, hpack's: whatever the server provoked
            self.connection.fail(f"a malformed HTTP/2 response: {e}")
            return
        recorder = self.recorder
        for event in events:
            if isinstance(event, h2.events.DataReceived) and (
                event.stream_id != self.stream_id and event.flow_controlled_length
            ):
                # Data of another stream still counts against the connection.
                with contextlib.suppress(Exception):
                    self.h2.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id or 0
                    )
            if getattr(event, "stream_id", self.stream_id) != self.stream_id:
                continue
            stop: str | None = None
            if isinstance(event, h2.events.ResponseReceived):
                self.head = _h2_head(event.headers or [])
                stop = recorder.head(self.head)
            elif isinstance(event, h2.events.DataReceived):
                if event.flow_controlled_length:
                    self.h2.acknowledge_received_data(
                        event.flow_controlled_length, self.stream_id
                    )
                stop = recorder.body(event.data or b"")
            elif isinstance(event, h2.events.StreamEnded):
                self.ended = True
                self._flush()
                self.connection.complete()
                return
            elif isinstance(event, h2.events.StreamReset):
                code = _code_name(event.error_code)
                stop = f"the server reset the HTTP/2 stream ({code})"
            elif isinstance(event, h2.events.ConnectionTerminated):
                stop = f"the server sent GOAWAY ({_code_name(event.error_code)})"
            if stop is not None:
                self.connection.fail(stop)
                return
        self._flush()

    def lost(self) -> str | None:
        """
        The connection closed.

        :returns: ``None`` if the stream had ended, else what was cut short.
        """
        if self.ended:
            return None
        if self.head is None:
            return "the connection closed without a response"
        return "the connection closed before the HTTP/2 stream ended"


def _h2_head(raw: Sequence[tuple[bytes | str, bytes | str]]) -> Head:
    headers: list[tuple[str, str]] = []
    status = 0
    for name, value in raw:
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if key == ":status":
            status = int(text)
        elif not key.startswith(":"):
            headers.append((key.lower(), text))
    return Head(status=status, version="HTTP/2", headers=tuple(headers), framing="h2")


def _code_name(code: object) -> str:
    """An HTTP/2 error code by name and number, such as ``PROTOCOL_ERROR (1)``."""
    name = getattr(code, "name", None)
    number = int(code) if isinstance(code, int) else code
    return f"{name} ({number})" if name else str(number)
