"""
``twistd -n sse --port ssl:...`` over TLS, and HTTP/2 negotiated by ALPN:
what curl, a raw HTTP/2 client and Chromium see.  Each test makes its own
self-signed certificate.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.trial.unittest import SynchronousTestCase

from ._browser import Browser
from ._certs import self_signed
from ._process import ClientProcess, Twistd
from ._publish import OPENING, publish
from ._tools import curl_features, require, require_chromium, require_module

if TYPE_CHECKING:
    from ._h2client import H2Client, H2Stream

TOKEN = "tls-test-token"

#: Headers HTTP/2 forbids in a response (RFC 9113, section 8.2.2): a client
#: must treat a response carrying one as malformed.
CONNECTION_SPECIFIC = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
}

COUNTER = b"retry: 1000\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n"


def tls_server(case: SynchronousTestCase, *options: str) -> Twistd:
    """Start ``twistd sse`` on a TLS port with a new self-signed certificate."""
    require_module("OpenSSL", "Twisted[tls] (the tls extra)")
    directory = Path(tempfile.mkdtemp(prefix="twisted-sse-tls-"))
    case.addCleanup(shutil.rmtree, directory, True)
    key, cert = self_signed(directory)
    server = Twistd(
        "--publish-token",
        TOKEN,
        *options,
        port=f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1",
    ).start()
    case.addCleanup(server.stop)
    return server


def h2_client(case: SynchronousTestCase, server: Twistd) -> H2Client:
    """An HTTP/2 connection to ``server``, closed by a cleanup."""
    require_module("h2", "Twisted[http2] (the http2 extra)")
    from ._h2client import H2Client

    client = H2Client(server.port)
    case.addCleanup(client.close)
    return client


def curl(*arguments: str) -> list[str]:
    """The argv of a curl that trusts the test certificates."""
    path = shutil.which("curl")
    assert path is not None
    return [path, "-sS", "-k", "-N", "--max-time", "30", *arguments]


class TLSTests(SynchronousTestCase):
    """The server over TLS, HTTP/1.1 and HTTP/2."""

    def setUp(self) -> None:
        self.server = tls_server(self, "--interval", "0.1")
        self.base = f"https://127.0.0.1:{self.server.port}"

    def test_https_http11(self) -> None:
        """Over TLS with HTTP/1.1, curl reads the counter's exact bytes."""
        require("SSL" in curl_features(), "curl has no TLS support")
        child = ClientProcess(curl("--http1.1", "-D", "-", self.base + "/events"), self)
        output = child.read_until(re.compile(rb"data: 3\n\n"))
        head, _, body = output.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertIn(b"\r\nTransfer-Encoding: chunked", head)
        self.assertEqual(body, COUNTER)

    def test_alpn_negotiates_h2(self) -> None:
        """A client offering h2 and http/1.1 gets h2."""
        self.assertEqual(h2_client(self, self.server).protocol, "h2")

    def test_h2_stream(self) -> None:
        """Over HTTP/2 the counter streams with the event-stream headers."""
        client = h2_client(self, self.server)
        stream = client.request("GET", "/events")
        self.assertTrue(client.until(lambda: stream.data.endswith(b"data: 3\n\n")))
        self.assertEqual(stream.data, COUNTER)
        self.assertEqual(stream.header(b":status"), [b"200"])
        self.assertEqual(
            stream.header(b"content-type"), [b"text/event-stream; charset=utf-8"]
        )
        self.assertEqual(stream.header(b"cache-control"), [b"no-cache"])
        self.assertEqual(stream.header(b"x-accel-buffering"), [b"no"])
        self.assertEqual(stream.header(b"content-length"), [])
        self.assertFalse(stream.ended)

    def test_h2_no_connection_specific_headers(self) -> None:
        """No response over HTTP/2 carries a connection-specific header."""
        client = h2_client(self, self.server)
        auth = [("authorization", f"Bearer {TOKEN}")]
        json_body = [("content-type", "application/json"), *auth]
        streams = {
            "GET /": client.request("GET", "/"),
            "GET /events": client.request("GET", "/events"),
            "HEAD /events": client.request("HEAD", "/events"),
            "OPTIONS /events": client.request(
                "OPTIONS", "/events", [("origin", "https://a.example")]
            ),
            "POST /events": client.request("POST", "/events", body=b"x"),
            "GET /channels/news": client.request("GET", "/channels/news"),
            "GET /channels/news after an unknown id": client.request(
                "GET", "/channels/news", [("last-event-id", "1-999999")]
            ),
            "POST /channels/news": client.request(
                "POST", "/channels/news", json_body, b'{"data": "hi"}'
            ),
            "POST /channels/news without a token": client.request(
                "POST", "/channels/news", body=b"hi"
            ),
            "GET /nowhere": client.request("GET", "/nowhere"),
        }
        self.assertTrue(
            client.until(lambda: all(s.headers for s in streams.values())),
            {name: s.headers for name, s in streams.items()},
        )
        for name, stream in streams.items():
            names = {key.lower() for key, _ in stream.headers}
            self.assertEqual(names & CONNECTION_SPECIFIC, set(), name)
        self.assertEqual(streams["GET /channels/news"].header(b":status"), [b"200"])
        self.assertEqual(streams["POST /channels/news"].header(b":status"), [b"200"])

    def test_curl_http2(self) -> None:
        """curl --http2 negotiates h2 and reads the counter's exact bytes."""
        require("HTTP2" in curl_features(), "curl has no HTTP/2 support")
        child = ClientProcess(curl("--http2", "-D", "-", self.base + "/events"), self)
        output = child.read_until(re.compile(rb"data: 3\n\n"))
        head, _, body = output.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/2 200"), head)
        self.assertEqual(body, COUNTER)

    def test_curl_http2_channel(self) -> None:
        """curl --http2 reads published events from a channel, with ids."""
        require("HTTP2" in curl_features(), "curl has no HTTP/2 support")
        child = ClientProcess(curl("--http2", self.base + "/channels/h2"), self)
        opening = child.read_until(OPENING)
        ids = [
            publish(self.base, "h2", TOKEN, data="über h2"),
            publish(self.base, "h2", TOKEN, data="two\nlines", event="note"),
        ]
        frames = (
            f"id: {ids[0]}\ndata: über h2\n\n"
            f"id: {ids[1]}\nevent: note\ndata: two\ndata: lines\n\n"
        ).encode()
        self.assertEqual(
            child.read_until(re.compile(re.escape(frames) + rb"$")), opening + frames
        )


class DrainTests(SynchronousTestCase):
    """SIGTERM ends TLS streams cleanly, over HTTP/1.1 and HTTP/2."""

    def assert_drained(self, version: str) -> None:
        require("HTTP2" in curl_features(), "curl has no HTTP/2 support")
        server = tls_server(self, "--drain", "0.5")
        url = f"https://127.0.0.1:{server.port}"
        clients = [
            ClientProcess(curl(version, url + path), self)
            for path in ("/events", "/channels/a", "/channels/b")
        ]
        for client in clients:
            client.read_until(re.compile(rb"^retry: 1000\n"))
        server.terminate()
        for client in clients:
            # curl fails (exit 18) on a stream cut before its end: a chunked
            # body without its last chunk, an HTTP/2 stream without
            # END_STREAM.  Each ends with a jittered reconnection hint.
            self.assertRegex(client.wait(), rb"\nretry: 1[0-9]{3}\n\n\Z")

    def test_https(self) -> None:
        """Over HTTPS/1.1, each stream gets its retry hint and its end."""
        self.assert_drained("--http1.1")

    def test_http2(self) -> None:
        """Over HTTP/2, each stream gets its retry hint and END_STREAM."""
        self.assert_drained("--http2")


class IdleTimeoutTests(SynchronousTestCase):
    """
    Twisted's HTTP/2 idle timer is not suspended while a stream is open
    (twisted#9532): it cuts a connection whose streams stay silent for
    ``--timeout`` seconds.  The long default keeps silent streams alive.
    """

    def silent_stream(self, *options: str) -> tuple[Twistd, H2Client, H2Stream]:
        server = tls_server(self, *options)
        client = h2_client(self, server)
        stream = client.request("GET", "/channels/quiet")
        self.assertTrue(client.until(lambda: stream.data.startswith(b"retry: ")))
        return server, client, stream

    def assert_alive(self, server: Twistd, client: H2Client, stream: H2Stream) -> None:
        """The stream outlives 5 s of silence and still delivers events."""
        self.assertFalse(client.until(lambda: client.terminated or client.closed, 5))
        base = f"https://127.0.0.1:{server.port}"
        event_id = publish(base, "quiet", TOKEN, data="still here")
        frame = f"id: {event_id}\ndata: still here\n\n".encode()
        self.assertTrue(client.until(lambda: stream.data.endswith(frame)))
        self.assertIsNone(client.terminated)

    def test_short_timeout_cuts_a_silent_stream(self) -> None:
        """With --timeout 2 and no heartbeats, a silent h2 stream is cut."""
        _, client, _ = self.silent_stream("--timeout", "2", "--heartbeat", "0")
        self.assertTrue(client.until(lambda: client.terminated or client.closed, 20))
        # Twisted says goodbye with GOAWAY before it closes.
        self.assertIsNotNone(client.terminated)

    def test_default_timeout_keeps_a_silent_stream(self) -> None:
        """With the default --timeout, a silent h2 stream stays open."""
        self.assert_alive(*self.silent_stream("--heartbeat", "0"))

    def test_heartbeats_keep_a_stream(self) -> None:
        """
        Heartbeats more frequent than --timeout keep an h2 stream open:
        Twisted resets the idle timer when it sends data.
        """
        server, client, stream = self.silent_stream(
            "--timeout", "2", "--heartbeat", "1"
        )
        self.assert_alive(server, client, stream)
        self.assertIn(b"\n:\n\n", stream.data)


class ChromiumHTTP2Tests(SynchronousTestCase):
    """Chromium on the demo page over HTTPS, which it speaks as HTTP/2."""

    def test_many_streams_over_h2(self) -> None:
        """
        A page over h2 holds more than 6 streams open at once (HTTP/1.1
        allows 6 per origin): 8 channels, each gets its own event.
        """
        require_chromium()
        server = tls_server(self, "--interval", "0.2")
        base = f"https://127.0.0.1:{server.port}"
        browser = Browser.for_test(self, ignore_https_errors=True)
        self.assertEqual(browser.goto(base + "/#lobby"), 200)
        self.assertEqual(
            browser.eval(
                "performance.getEntriesByType('navigation')[0].nextHopProtocol"
            ),
            "h2",
        )
        browser.eval(
            """(() => {
              window.got = {};
              window.sources = [];
              for (let n = 0; n < 8; n++) {
                const source = new EventSource("channels/c" + n);
                source.onmessage = (event) => { window.got[n] = event.data; };
                window.sources.push(source);
              }
              return true;
            })()"""
        )
        # With the page's own two, 10 streams share the connection.
        browser.wait(
            "window.sources.every((s) => s.readyState === EventSource.OPEN)"
            " && document.getElementById('channel-state').textContent === 'open'"
        )
        for n in range(8):
            publish(base, f"c{n}", TOKEN, data=f"for c{n}")
        browser.wait("Object.keys(window.got).length === 8")
        self.assertEqual(
            browser.eval("window.got"), {str(n): f"for c{n}" for n in range(8)}
        )
        browser.wait("Number(document.getElementById('count').textContent) >= 2")
        self.assertEqual(
            browser.eval("document.getElementById('counter-state').textContent"),
            "open",
        )
