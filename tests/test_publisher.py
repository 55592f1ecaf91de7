"""
``twisted_sse.publish``, the standard-library publisher, as a Django view or
a cron job calls it: against a real ``twistd -n sse`` (the event reaches a
subscriber with the id it returned; a wrong token, a hub that is down), and
against a fake HTTP server on a plain socket for the answers a hub never
gives (redirects, proxies' pages, silence, a flood).

No reactor runs in the test process: the helper blocks, as it does for its
users.  The tests are the same under trial and pytest.
"""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import (
    MAX_KEY_LENGTH,
    MAX_PUBLISH_ANSWER_BYTES,
    MAX_RETRY,
    EventParser,
    HubUnreachable,
    MessageEvent,
    PublishError,
    PublishRefused,
    publish,
)

from ._process import Twistd

TOKEN = "T-publisher-0123"


class FakeServer:
    """
    An HTTP server on a plain socket on 127.0.0.1: for each connection it
    reads the request, keeps it, and does what ``answer`` says (write bytes,
    say nothing, close).  A cleanup of ``case`` stops it.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        answer: bytes | Callable[[socket.socket], object],
    ) -> None:
        self.answer = answer
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        case.addCleanup(self.stop)

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.done.is_set():
                conn.close()
                return
            self.connections += 1
            with conn:
                conn.settimeout(10)
                self.requests.append(_read_request(conn))
                if callable(self.answer):
                    self.answer(conn)
                else:
                    conn.sendall(self.answer)

    def stop(self) -> None:
        self.done.set()
        # A connection wakes the thread up from accept().
        with socket.create_connection(self.listener.getsockname(), timeout=10):
            pass
        self.thread.join(10)
        self.listener.close()

    @property
    def request(self) -> tuple[bytes, dict[str, str], bytes]:
        """The one request received: its request line, headers and body."""
        (request,) = self.requests
        return request


def _read_request(conn: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    line, *lines = head.split(b"\r\n")
    headers = {}
    for raw in lines:
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return line, headers, body


def response(
    status: str, body: bytes, content_type: str = "application/json", **extra: str
) -> bytes:
    """An HTTP/1.1 response with ``body``."""
    headers = [
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name.replace('_', '-')}: {value}" for name, value in extra.items()),
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body


OK = response("200 OK", b'{"id": "1795649300774-7"}\n')


class RequestTests(SynchronousTestCase):
    """What publish() sends, and what it returns."""

    def test_request(self) -> None:
        """A POST to /channels/{name} with the JSON body and the bearer token."""
        server = FakeServer(self, OK)

        event_id = publish(server.url, "news", "hello", token=TOKEN)

        line, headers, body = server.request
        self.assertEqual(event_id, "1795649300774-7")
        self.assertEqual(line, b"POST /channels/news HTTP/1.1")
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["authorization"], f"Bearer {TOKEN}")
        self.assertEqual(json.loads(body), {"data": "hello"})

    def test_no_token(self) -> None:
        """Without a token, no Authorization header is sent."""
        server = FakeServer(self, OK)
        publish(server.url, "news", "hello")
        _, headers, _ = server.request
        self.assertNotIn("authorization", headers)

    def test_fields(self) -> None:
        """event, retry and key go into the body as the hub's fields."""
        server = FakeServer(self, OK)
        publish(server.url, "news", "hi", event="headline", retry=5000, key="k1")
        _, _, body = server.request
        self.assertEqual(
            json.loads(body),
            {"data": "hi", "event": "headline", "retry": 5000, "key": "k1"},
        )

    def test_json_data(self) -> None:
        """A dict or list is sent as compact JSON text in the data field."""
        server = FakeServer(self, OK)
        publish(server.url, "news", {"title": "Ünïcode", "n": [1, 2]})
        publish(server.url, "news", [1, "two"])
        sent = [json.loads(body)["data"] for _, _, body in server.requests]
        self.assertEqual(sent, ['{"title":"Ünïcode","n":[1,2]}', '[1,"two"]'])

    def test_bytes_data(self) -> None:
        """UTF-8 bytes are sent as their text."""
        server = FakeServer(self, OK)
        publish(server.url, "news", "café".encode())
        _, _, body = server.request
        self.assertEqual(json.loads(body), {"data": "café"})

    def test_hub_under_a_path(self) -> None:
        """A hub mounted under a path is reached below it, a trailing / or not."""
        server = FakeServer(self, OK)
        publish(server.url + "/sse/", "a.b:c@d-e_f", "x")
        publish(server.url + "/sse", "news", "x")
        lines = [line for line, _, _ in server.requests]
        self.assertEqual(
            lines,
            [
                b"POST /sse/channels/a.b:c@d-e_f HTTP/1.1",
                b"POST /sse/channels/news HTTP/1.1",
            ],
        )


class RefusedTests(SynchronousTestCase):
    """Answers that are not an id raise PublishRefused with what the server said."""

    def refused(self, answer: bytes) -> PublishRefused:
        server = FakeServer(self, answer)
        with self.assertRaises(PublishRefused) as raised:
            publish(server.url, "news", "x", token=TOKEN)
        error: PublishRefused = raised.exception
        self.assertEqual(error.url, f"{server.url}/channels/news")
        return error

    def test_hub_error(self) -> None:
        """The status and the error field of the hub's JSON answer."""
        error = self.refused(
            response("503 Service Unavailable", b'{"error": "broker unavailable: x"}')
        )
        self.assertEqual(
            (error.status, error.reason, error.answer),
            (503, "broker unavailable: x", {"error": "broker unavailable: x"}),
        )
        self.assertIn("503 broker unavailable: x", str(error))
        self.assertIsInstance(error, PublishError)

    def test_reason_field(self) -> None:
        """An answer with only a reason field gives that reason."""
        error = self.refused(response("404 Not Found", b'{"reason": "no such path"}'))
        self.assertEqual((error.status, error.reason), (404, "no such path"))

    def test_not_json(self) -> None:
        """A proxy's page gives the reason phrase and the start of the body."""
        page = b"<html>\n<h1>502   Bad Gateway</h1>" + b"." * 1000 + b"</html>"
        error = self.refused(response("502 Bad Gateway", page, "text/html"))
        self.assertEqual(error.status, 502)
        self.assertTrue(
            error.reason.startswith("Bad Gateway: '<html> <h1>502 Bad Gateway</h1>..."),
            error.reason,
        )
        self.assertLess(len(error.reason), 300)
        self.assertIsNone(error.answer)

    def test_success_without_id(self) -> None:
        """A 200 that is not the hub's answer is no id."""
        error = self.refused(response("200 OK", b"<p>Welcome</p>", "text/html"))
        self.assertEqual(error.status, 200)
        self.assertIn("not a hub's answer: '<p>Welcome</p>'", error.reason)

    def test_redirect_not_followed(self) -> None:
        """A redirect is reported with where it leads, and not followed."""
        server = FakeServer(
            self,
            response(
                "301 Moved Permanently",
                b"",
                "text/plain",
                Location="https://hub.example/channels/news",
            ),
        )
        with self.assertRaises(PublishRefused) as raised:
            publish(server.url, "news", "x")
        self.assertEqual(raised.exception.status, 301)
        self.assertIn(
            "redirected to https://hub.example/channels/news", str(raised.exception)
        )
        self.assertEqual(server.connections, 1)

    def test_answer_read_is_bounded(self) -> None:
        """Of an endless answer, publish reads its bound and stops."""

        def flood(conn: socket.socket) -> None:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000000\r\n\r\n"
                + b" "
                * (MAX_PUBLISH_ANSWER_BYTES + 1)
            )
            # Then nothing more: a reader that wanted more would wait for
            # its timeout and raise HubUnreachable instead.
            server.done.wait(30)

        server = FakeServer(self, flood)
        with self.assertRaises(PublishRefused) as raised:
            publish(server.url, "news", "x", timeout=30)
        self.assertEqual(raised.exception.status, 200)

    def test_pickles(self) -> None:
        """PublishRefused survives pickling (a Celery result backend stores it)."""
        error = PublishRefused("http://h/channels/c", 401, "no", {"error": "no"})
        copy = pickle.loads(pickle.dumps(error))
        self.assertEqual(
            (copy.url, copy.status, copy.reason, copy.answer, str(copy)),
            (error.url, 401, "no", {"error": "no"}, str(error)),
        )


class UnreachableTests(SynchronousTestCase):
    """No answer raises HubUnreachable."""

    def test_refused_connection(self) -> None:
        """Nothing listening: the connection error, with its cause."""
        with socket.create_server(("127.0.0.1", 0)) as probe:
            url = f"http://127.0.0.1:{probe.getsockname()[1]}"
        with self.assertRaises(HubUnreachable) as raised:
            publish(url, "news", "x")
        self.assertIsInstance(raised.exception.__cause__, OSError)
        self.assertIn("refused", str(raised.exception).lower())
        self.assertIsInstance(raised.exception, PublishError)

    def test_timeout(self) -> None:
        """A server that says nothing: timed out."""
        server = FakeServer(self, lambda conn: server.done.wait(30))
        with self.assertRaises(HubUnreachable) as raised:
            publish(server.url, "news", "x", timeout=0.2)
        self.assertEqual(raised.exception.reason, "timed out")

    def test_closed_without_answer(self) -> None:
        """A server that closes the connection without an answer."""
        server = FakeServer(self, b"")
        with self.assertRaises(HubUnreachable) as raised:
            publish(server.url, "news", "x")
        self.assertEqual(
            raised.exception.reason,
            "the server closed the connection without an answer",
        )

    def test_pickles(self) -> None:
        """HubUnreachable survives pickling."""
        error = HubUnreachable("http://h/channels/c", "timed out")
        copy = pickle.loads(pickle.dumps(error))
        self.assertEqual(
            (copy.url, copy.reason, str(copy)), (error.url, "timed out", str(error))
        )


class ArgumentTests(SynchronousTestCase):
    """Wrong arguments are refused before any request, naming the argument."""

    def setUp(self) -> None:
        self.server = FakeServer(self, OK)

    def refused(
        self, kind: type[Exception], name: str, *args: Any, **kwargs: Any
    ) -> None:
        arguments: dict[str, Any] = {
            "hub_url": self.server.url,
            "channel": "news",
            "data": "x",
        }
        arguments.update(zip(arguments, args, strict=False))
        with self.assertRaises(kind) as raised:
            publish(**arguments, **kwargs)
        self.assertTrue(
            str(raised.exception).startswith(name), f"{name}: {raised.exception}"
        )
        self.assertEqual(self.server.connections, 0)

    def test_hub_url(self) -> None:
        """The hub URL follows the rules of every URL the package takes."""
        port = self.server.url.rsplit(":", 1)[1]
        for url in [
            f"127.0.0.1:{port}",
            f"ftp://127.0.0.1:{port}",
            f"http://user:pw@127.0.0.1:{port}",
            "http://127.0.0.1:0",
            "http://127.0.0.1:70000",
            f"http://127.0.0.1 :{port}",
            f"http://127.0.0.1:{port}/\n",
            f"http://127.0.0.1:{port}/?x=1",
            f"http://127.0.0.1:{port}/#top",
            "http://300.1.1.1",
        ]:
            self.refused(ValueError, "hub_url", url)
        self.refused(TypeError, "hub_url", b"http://127.0.0.1")

    def test_channel(self) -> None:
        """A channel name the hub would refuse."""
        for channel in ["", "a b", "-x", "a/b", "é", "x" * 129, None]:
            self.refused(ValueError, "channel", self.server.url, channel)

    def test_data(self) -> None:
        """Data that is not text, bytes, a dict or a list, or cannot be sent."""
        wrong: list[object] = [3, None, 1.5, ("a",), {"a"}]
        for data in wrong:
            self.refused(TypeError, "data", self.server.url, "news", data)
        unsendable: list[object] = [b"\xff", "\ud800", {"x": float("nan")}]
        for data in unsendable:
            self.refused(ValueError, "data", self.server.url, "news", data)
        self.refused(TypeError, "data", self.server.url, "news", {"when": object()})

    def test_event(self) -> None:
        """An event type that is not one line of text."""
        for event in ["a\rb", "a\nb", "a\0b", "\udc80"]:
            self.refused(ValueError, "event", event=event)
        self.refused(TypeError, "event", event=1)

    def test_retry(self) -> None:
        """A retry that is not a non-negative integer of milliseconds."""
        for retry in [-1, MAX_RETRY + 1, True, 1.5, "1000"]:
            self.refused(ValueError, "retry", retry=retry)

    def test_key(self) -> None:
        """A key the hub would refuse."""
        for key in ["", "x" * (MAX_KEY_LENGTH + 1), "a\nb"]:
            self.refused(ValueError, "key", key=key)

    def test_token(self) -> None:
        """A token that cannot go into a header; the message does not show it."""
        for token in ["", "secret\r\nX-Evil: 1", "sécret"]:
            self.refused(ValueError, "token", token=token)
            with self.assertRaises(ValueError) as raised:
                publish(self.server.url, "news", "x", token=token)
            self.assertNotIn("ecret", str(raised.exception))

    def test_timeout(self) -> None:
        """A timeout that is not a positive number of seconds."""
        for timeout in [0, -1, float("nan"), float("inf"), None, True]:
            self.refused(ValueError, "timeout", timeout=timeout)


class ImportTests(SynchronousTestCase):
    """Importing the helper leaves the program's choice of reactor alone."""

    def test_no_reactor_no_klein(self) -> None:
        """from twisted_sse import publish installs no reactor and imports no Klein."""
        code = (
            "import sys\n"
            "from twisted_sse import publish\n"
            "print(sorted(m for m in ('twisted.internet.reactor', 'klein')"
            " if m in sys.modules))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        self.assertEqual(result.stdout, "[]\n")


class Subscriber:
    """A subscriber to a channel of a real hub, reading with urllib."""

    def __init__(self, case: SynchronousTestCase, url: str, channel: str) -> None:
        self.response = urllib.request.urlopen(f"{url}/channels/{channel}", timeout=10)
        case.addCleanup(self.response.close)
        self.parser = EventParser()
        self.events: list[MessageEvent] = []

    def next_event(self) -> MessageEvent:
        """The next event published on the channel."""
        while not self.events:
            chunk = self.response.read1(65536)
            if not chunk:
                raise AssertionError("the stream ended")
            self.events.extend(self.parser.feed(chunk))
        return self.events.pop(0)


class RealHubTests(SynchronousTestCase):
    """publish() against twistd -n sse, as a user's program meets it."""

    def hub(self, *args: str) -> str:
        server = Twistd(*args).start()
        self.addCleanup(server.stop)
        return f"http://127.0.0.1:{server.port}"

    def test_publish_text(self) -> None:
        """A subscriber gets the text as a message, with the id publish returned."""
        url = self.hub("--publish-token", TOKEN)
        subscriber = Subscriber(self, url, "news")

        event_id = publish(url, "news", "hello\nworld", token=TOKEN)

        event = subscriber.next_event()
        self.assertEqual(
            (event.type, event.data, event.last_event_id),
            ("message", "hello\nworld", event_id),
        )

    def test_publish_json_with_type(self) -> None:
        """A dict arrives as JSON text, with its event type and the returned id."""
        url = self.hub("--publish-token", TOKEN)
        subscriber = Subscriber(self, url, "prices")

        event_id = publish(
            url, "prices", {"symbol": "TWSD", "price": 26.5}, token=TOKEN, event="quote"
        )

        event = subscriber.next_event()
        self.assertEqual((event.type, event.last_event_id), ("quote", event_id))
        self.assertEqual(json.loads(event.data), {"symbol": "TWSD", "price": 26.5})

    def test_wrong_token(self) -> None:
        """A wrong token, or none, is a 401 with the hub's reason."""
        url = self.hub("--publish-token", TOKEN)
        for token in ["wrong", None]:
            with self.assertRaises(PublishRefused) as raised:
                publish(url, "news", "hello", token=token)
            self.assertEqual(
                (raised.exception.status, raised.exception.reason),
                (401, "a valid Authorization: Bearer token is required"),
            )

    def test_publishing_off(self) -> None:
        """A hub without a publish token answers 403, saying how to turn it on."""
        url = self.hub()
        with self.assertRaises(PublishRefused) as raised:
            publish(url, "news", "hello", token=TOKEN)
        self.assertEqual(raised.exception.status, 403)
        self.assertIn("--publish-token", raised.exception.reason)

    def test_too_large(self) -> None:
        """A body over the hub's --max-event-bytes is a 413."""
        url = self.hub("--publish-token", TOKEN, "--max-event-bytes", "1000")
        with self.assertRaises(PublishRefused) as raised:
            publish(url, "news", "x" * 2000, token=TOKEN)
        self.assertEqual(raised.exception.status, 413)

    def test_hub_down(self) -> None:
        """A hub that has stopped: HubUnreachable."""
        server = Twistd("--publish-token", TOKEN).start()
        self.addCleanup(server.stop)
        url = f"http://127.0.0.1:{server.port}"
        server.terminate()
        with self.assertRaises(HubUnreachable) as raised:
            publish(url, "news", "hello", token=TOKEN)
        self.assertIn("refused", raised.exception.reason.lower())
