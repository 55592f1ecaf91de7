"""
The connection guard in a real ``twistd sse`` process: slow request heads
cut at ``--header-timeout``, a flood of idle connections against a 256
descriptor limit, HTTP/2 and TLS under a short deadline, and the listen
backlog of a bare ``--port``.  Each takes a few seconds (``-m slow``).
"""

from __future__ import annotations

import re
import resource
import select
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from twisted.trial.unittest import SynchronousTestCase

from . import _process
from ._http import SocketClient, http_request
from ._process import Twistd
from ._tools import require_program
from .test_tls_http2 import h2_client, tls_server

pytestmark = pytest.mark.slow

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def _healthz(port: int) -> SocketClient:
    return SocketClient(port, http_request("/healthz", "Connection: close"))


class _Client:
    """A raw socket, with all it has received and when the server closed it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        self.received = b""
        self.closed_at: float | None = None

    def send(self, data: bytes) -> None:
        if self.closed_at is None:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed_at = time.monotonic()

    def read(self) -> None:
        while self.closed_at is None:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.closed_at = time.monotonic()
                return
            self.received += data

    def close(self) -> None:
        self.sock.close()


class SlowHeadTests(SynchronousTestCase):
    """``--header-timeout`` against clients that send a head slowly."""

    def test_slowloris(self) -> None:
        """
        Twenty clients sending a header line every 0.5 s are answered 408
        and closed at the 2 s deadline, while a normal client is served.
        """
        server = Twistd("--header-timeout", "2").start()
        self.addCleanup(server.stop)
        began = time.monotonic()
        clients = [_Client(server.port) for _ in range(20)]
        for client in clients:
            self.addCleanup(client.close)
            client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        served = None
        line = 0
        while time.monotonic() - began < 8 and any(
            c.closed_at is None for c in clients
        ):
            time.sleep(0.5)
            line += 1
            for client in clients:
                client.send(b"X-Slow-%d: yes\r\n" % line)
                client.read()
            if served is None:
                served = _healthz(server.port)
                self.addCleanup(served.close)
        assert served is not None
        self.assertEqual(served.code, 200)
        for client in clients:
            self.assertIsNotNone(client.closed_at)
            assert client.closed_at is not None
            # Cut by the deadline (2 s from the connection), give or take a
            # poll of this loop; without it they would hold for --timeout.
            self.assertGreater(client.closed_at - began, 1.5)
            self.assertLess(client.closed_at - began, 4.5)
            self.assertTrue(
                client.received.startswith(b"HTTP/1.1 408 Request Timeout\r\n"),
                client.received,
            )

    def test_idle_connection(self) -> None:
        """A connection that sends nothing is closed without an answer."""
        with Twistd("--header-timeout", "1") as server:
            client = _Client(server.port)
            self.addCleanup(client.close)
            deadline = time.monotonic() + 5
            while client.closed_at is None and time.monotonic() < deadline:
                select.select([client.sock], [], [], 0.5)
                client.read()
            self.assertIsNotNone(client.closed_at)
            self.assertEqual(client.received, b"")


class TLSTests(SynchronousTestCase):
    """The deadline over TLS: handshakes are covered, HTTP/2 is not cut."""

    def setUp(self) -> None:
        self.server = tls_server(self, "--header-timeout", "1", "--interval", "0.2")

    def test_stalled_handshake(self) -> None:
        """A TCP connection that never starts its TLS handshake is closed."""
        client = _Client(self.server.port)
        self.addCleanup(client.close)
        deadline = time.monotonic() + 5
        while client.closed_at is None and time.monotonic() < deadline:
            select.select([client.sock], [], [], 0.5)
            client.read()
        self.assertIsNotNone(client.closed_at)

    def test_h2_stream_outlives_deadline(self) -> None:
        """An HTTP/2 stream goes on well past the 1 s head deadline."""
        client = h2_client(self, self.server)
        self.assertEqual(client.protocol, "h2")
        stream = client.request("GET", "/events")
        self.assertTrue(client.until(lambda: b"data: 15\n\n" in stream.data, 15))
        self.assertFalse(client.closed)
        self.assertIsNone(client.terminated)
        self.assertFalse(stream.ended)

    def test_idle_h2_connection_kept(self) -> None:
        """
        An HTTP/2 connection with no stream open is not cut by the head
        deadline (its idle timer is --timeout's), and serves a request later.
        """
        client = h2_client(self, self.server)
        self.assertFalse(client.until(lambda: client.closed, 2.5))
        stream = client.request("GET", "/healthz")
        self.assertTrue(client.until(lambda: stream.ended, 10))
        self.assertEqual(stream.header(b":status"), [b"200"])


#: twistd with its descriptor limit, soft and hard, set to 256 first.
_LIMITED_TWISTD = [
    sys.executable,
    "-c",
    "import resource; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)); "
    "from twisted.scripts.twistd import run; run()",
]


class DescriptorTests(SynchronousTestCase):
    """Idle connections cannot take all of the server's descriptors."""

    def setUp(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < 1024:
            if hard != resource.RLIM_INFINITY and hard < 1024:
                self.skipTest(f"this process may open only {hard} descriptors")
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))

    def test_idle_flood(self) -> None:
        """
        With 256 descriptors, 300 connections that send nothing leave room
        for GET /healthz; one line says so; all works once they have gone.
        """
        self.patch(_process, "TWISTD", _LIMITED_TWISTD)
        # No head deadline: only the descriptor budget closes them here.
        server = Twistd(
            "--header-timeout",
            "0",
            "--interval",
            "0.2",
            port="tcp:0:interface=127.0.0.1:backlog=1024",
        ).start()
        self.addCleanup(server.stop)
        idle = []
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            self.addCleanup(sock.close)
            idle.append(sock)
        began = time.monotonic()
        first = _healthz(server.port)
        self.addCleanup(first.close)
        self.assertEqual(first.code, 200)
        self.assertLess(time.monotonic() - began, 2.0)
        log = server.output.decode(errors="replace")
        self.assertIn("File descriptor limit: 256", log)
        self.assertEqual(log.count("Short of file descriptors"), 1, log)
        # Room was made before accept could fail.
        self.assertNotIn("EMFILE", log)
        self.assertNotIn("Could not accept", log)
        for sock in idle:
            sock.close()
        time.sleep(0.5)
        second = _healthz(server.port)
        self.addCleanup(second.close)
        self.assertEqual(second.code, 200)
        stream = SocketClient(server.port, http_request("/events"))
        self.addCleanup(stream.close)
        self.assertEqual(
            stream.read_body(len(b"retry: 1000\n\ndata: 1\n\n")),
            b"retry: 1000\n\ndata: 1\n\n",
        )
        self.assertEqual(server.output.decode().count("Short of file descriptors"), 1)
        # /metrics counts the episode and the connections closed for it.
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{server.port}/metrics", timeout=5
        ).read()
        self.assertIn(b"sse_fd_shortages_total 1.0", metrics)
        evicted = re.search(rb"^sse_connections_evicted_total (\S+)$", metrics, re.M)
        assert evicted is not None, metrics
        self.assertGreaterEqual(float(evicted.group(1)), 32)


def _somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as file:
        return int(file.read())


def _listen_backlog(port: int) -> int:
    """The backlog of the socket listening on ``port``: ``ss``'s Send-Q."""
    ss = require_program("ss", "apt-get install iproute2")
    output = subprocess.run(
        [ss, "-ltnH", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    (line,) = output.splitlines()
    return int(line.split()[2])


class BacklogTests(SynchronousTestCase):
    """The listen backlog, as the kernel reports it."""

    def test_bare_port(self) -> None:
        """``--port N`` listens with a backlog of 1024 (or somaxconn, logged)."""
        with Twistd(port="0") as server:
            expected = min(1024, _somaxconn())
            self.assertEqual(_listen_backlog(server.port), expected)
            capped = re.search(
                r"Listen backlog 1024 is capped to (\d+)", server.log().decode()
            )
            if expected < 1024:
                assert capped is not None
                self.assertEqual(int(capped.group(1)), expected)
            else:
                self.assertIsNone(capped)

    def test_description(self) -> None:
        """An endpoint description keeps Twisted's backlog, or its own."""
        with Twistd() as server:
            self.assertEqual(_listen_backlog(server.port), 50)
        with Twistd(port="tcp:0:interface=127.0.0.1:backlog=7") as server:
            self.assertEqual(_listen_backlog(server.port), 7)
