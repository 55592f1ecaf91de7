"""
A TCP forwarder that can cut every connection it carries: what a client
sees when the server side of its stream goes away (a proxy restart, a
network blip), while the server itself, and its history, stay up.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading

from ._helpers import Closing


class CuttingProxy(Closing):
    """
    Forward ``127.0.0.1:<port>`` to ``127.0.0.1:<target>``, one thread pair
    per connection, recording what clients send.

    With ``strip_prefix`` (``b"/prefix"``), request paths that start with it
    lose it on the way: the server appears mounted under a path prefix, as
    behind a reverse proxy.

    :meth:`cut` closes every open connection and, with ``hold``, keeps new
    ones waiting (accepted, not yet forwarded) until :meth:`release`: a
    client that reconnects at once is held until the test is ready.
    """

    def __init__(self, target: int, strip_prefix: bytes | None = None) -> None:
        self.target = target
        self._prefix = (
            None
            if strip_prefix is None
            else re.compile(rb"(?m)^([A-Z]+ )" + re.escape(strip_prefix) + rb"/")
        )
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._gate = threading.Event()
        self._gate.set()
        self._closed = False
        #: Bytes each connection's client sent, in connection order.
        self.sent: list[bytearray] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            record = bytearray()
            with self._lock:
                if self._closed:
                    client.close()
                    return
                self._open.add(client)
                self.sent.append(record)
            threading.Thread(
                target=self._connect, args=(client, record), daemon=True
            ).start()

    def _connect(self, client: socket.socket, record: bytearray) -> None:
        self._gate.wait()
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            self._drop(client)
            return
        with self._lock:
            if client not in self._open:
                upstream.close()
                return
            self._open.add(upstream)
        threading.Thread(
            target=self._pump, args=(upstream, client, None), daemon=True
        ).start()
        self._pump(client, upstream, record)

    def _pump(
        self, source: socket.socket, sink: socket.socket, record: bytearray | None
    ) -> None:
        try:
            while chunk := source.recv(65536):
                if record is not None:
                    with self._lock:
                        record.extend(chunk)
                    if self._prefix is not None:
                        # A request head arrives in one piece from a browser.
                        chunk = self._prefix.sub(rb"\1/", chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        self._drop(source)
        self._drop(sink)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def requests(self) -> list[bytes]:
        """The request heads clients sent so far, oldest first."""
        with self._lock:
            sent = [bytes(record) for record in self.sent]
        heads = []
        for data in sent:
            for part in data.split(b"\r\n\r\n")[:-1]:
                # Keep request heads; skip bodies sent on the same connection.
                if b" HTTP/1." in part.split(b"\r\n", 1)[0]:
                    heads.append(part)
        return heads

    def cut(self, hold: bool = False) -> None:
        """
        Close every open connection; with ``hold``, new ones wait for
        :meth:`release`.
        """
        if hold:
            self._gate.clear()
        with self._lock:
            victims = list(self._open)
        for sock in victims:
            self._drop(sock)

    def release(self) -> None:
        """Let held and new connections through."""
        self._gate.set()

    def close(self) -> None:
        """Stop listening and close everything."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            # Wakes the accepting thread; close() alone does not on Linux.
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._gate.set()
        self.cut()
        self._accepting.join(5)
