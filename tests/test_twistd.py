"""
End-to-end tests of ``twistd -n sse`` as a real process on a real socket.
"""

from __future__ import annotations

import signal
import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from ._http import SocketClient, http_request
from ._process import USAGE_EXITS_NONZERO, Twistd, run_twistd


class TwistdSSETests(SynchronousTestCase):
    """``twistd -n sse`` serves the seed's counter and page."""

    def setUp(self) -> None:
        self.server = Twistd("--interval", "0.2").start()
        self.addCleanup(self.server.stop)

    def get(self, path: str, *headers: str, method: str = "GET") -> SocketClient:
        response = SocketClient(
            self.server.port, http_request(path, *headers, method=method)
        )
        self.addCleanup(response.close)
        return response

    def test_headers(self) -> None:
        """GET /events answers 200 with the stream headers and no length."""
        response = self.get("/events")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertEqual(response.header("Cache-Control"), "no-cache")
        self.assertEqual(response.header("X-Accel-Buffering"), "no")
        self.assertEqual(response.header("Access-Control-Allow-Origin"), "*")
        self.assertEqual(response.header("Connection"), "keep-alive")
        self.assertIsNone(response.header("Content-Length"))

    def test_first_frames(self) -> None:
        """The stream is retry: 1000, then data: 1, 2, 3 one interval apart."""
        response = self.get("/events")
        self.assertEqual(response.read_frame(), b"retry: 1000\n\n")
        stamps = []
        for number in (1, 2, 3):
            self.assertEqual(response.read_frame(), b"data: %d\n\n" % number)
            stamps.append(time.monotonic())
        # Each connection counts from 1.
        second = self.get("/events")
        self.assertEqual(
            second.read_body(len(b"retry: 1000\n\ndata: 1\n\n")),
            b"retry: 1000\n\ndata: 1\n\n",
        )
        self.assertGreater(stamps[2] - stamps[0], 0.2)

    def test_head(self) -> None:
        """HEAD /events answers the headers and finishes the response."""
        response = self.get("/events", method="HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertTrue(response.complete)
        # The response is complete: the connection can carry another request,
        # whose answer follows the first head (the strict reader stops at
        # its bytes, kept on the wire).
        response.sock.sendall(
            b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        self.assertTrue(response.at_eof())
        self.assertIsNotNone(response.error)
        _, _, after = response.wire.partition(b"\r\n\r\n")
        self.assertTrue(after.startswith(b"HTTP/1.1 200"), after)

    def test_post_not_allowed(self) -> None:
        """POST /events gets 405 with Allow."""
        response = self.get("/events", method="POST")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.header("Allow"), "GET, HEAD, OPTIONS")

    def test_page(self) -> None:
        """GET / serves the page that opens an EventSource on events."""
        response = self.get("/", "Connection: close")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("Content-Type"), "text/html; charset=utf-8")
        response.at_eof()
        self.assertIn(b'new SSEStream("events")', response.body)

    def _check_signal_ends_streams(self, signal_number: int) -> None:
        responses = [self.get("/events") for _ in range(3)]
        for response in responses:
            self.assertEqual(response.read_frame(), b"retry: 1000\n\n")
        took = self.server.terminate(signal_number)
        self.assertLess(took, 2.0)
        for response in responses:
            frames = []
            while (frame := response.read_frame()) != b"":
                frames.append(frame)
            # The response ended with its last chunk, not a cut connection.
            self.assertTrue(response.complete)
            # The last frame is a jittered reconnection hint: 1000 ms plus up
            # to the drain window (5 s by default).
            hint = frames.pop()
            self.assertRegex(hint, rb"^retry: [0-9]+\n\n$")
            self.assertTrue(1000 <= int(hint[7:-2]) <= 6000, hint)
            for frame in frames:
                self.assertTrue(frame.startswith(b"data: "), frame)
            self.assertTrue(response.at_eof())

    def test_sigterm_ends_streams(self) -> None:
        """SIGTERM ends a few open streams cleanly and exits within 2 s."""
        self._check_signal_ends_streams(signal.SIGTERM)

    def test_sigint_ends_streams(self) -> None:
        """SIGINT (Ctrl-C) ends open streams cleanly and exits within 2 s."""
        self._check_signal_ends_streams(signal.SIGINT)


class TwistdOptionsTests(SynchronousTestCase):
    """``twistd sse`` options, and start-up failures in one line."""

    def test_options(self) -> None:
        """--retry, --allow-origin and --interval shape the stream."""
        with Twistd(
            "--retry",
            "2500",
            "--allow-origin",
            "https://a.example",
            "--interval",
            "0.05",
        ) as server:
            response = SocketClient(server.port, http_request("/events"))
            self.addCleanup(response.close)
            self.assertEqual(
                response.header("Access-Control-Allow-Origin"), "https://a.example"
            )
            expected = b"retry: 2500\n\ndata: 1\n\n"
            self.assertEqual(response.read_body(len(expected)), expected)

    def test_port_in_use(self) -> None:
        """A port in use fails with one line on stderr and exit code 1."""
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_twistd("--port", f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual(result.returncode, 1)
        lines = result.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("cannot listen", lines[0])
        self.assertIn("Address already in use", lines[0])
        self.assertNotIn(b"Traceback", result.stdout + result.stderr)

    def test_bad_endpoint(self) -> None:
        """A bad endpoint string fails with one line and a non-zero exit."""
        result = run_twistd("--port", "nonsense:1")
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("not a valid endpoint", lines[0])
        self.assertNotIn(b"Traceback", result.stdout + result.stderr)

    def test_bad_interval(self) -> None:
        """A non-positive --interval is refused with a message naming it."""
        result = run_twistd("--interval", "0")
        if USAGE_EXITS_NONZERO:
            self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"--interval must be a positive number", result.stdout)
        self.assertNotIn(b"Traceback", result.stdout + result.stderr)
