"""
Quiet logs: with ``stream_log=False`` (``twistd sse --stream-log off``) no
stream logs its opening, its end or its credentials' expiry, and with
``CappedSite(access_log=False)`` (``--access-log off``) no request gets an
access-log line; neither is even built.  Warnings and errors are logged
either way.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests._transports import TransportCase, over_both_transports
from twisted_sse import (
    AuthRequest,
    EventStream,
    EventStreamResource,
    Grant,
    _resource,
    access_log_formatter,
    counter,
)
from twisted_sse._app import SSEApp
from twisted_sse._site import CappedSite
from twisted_sse._tap import Options

from ._helpers import TOKEN, HubFixture, data
from ._http import SocketClient, http_request
from ._process import USAGE_EXITS_NONZERO, Twistd, run_twistd

#: The beginnings of the lines a stream logs at info level.
STREAM_LINES = ("Stream opened", "Stream closed", "Ending a stream")


@implementer(ILogObserver)
class Logs:
    """The log events emitted while it is installed."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def stream_lines(self) -> list[str]:
        """The formats of the per-stream info events."""
        return [
            format
            for event in self.events
            if (format := str(event.get("log_format") or "")).startswith(STREAM_LINES)
        ]

    def texts(self) -> list[str]:
        """Every event as text."""
        return [formatEvent(event) for event in self.events]


def count_info_calls(case: SynchronousTestCase) -> list[str]:
    """
    Record each call of the resources' ``_info`` (which builds a stream's
    log event), then let it build the event: what is never called was never
    built.
    """
    calls: list[str] = []
    real = _resource._info

    def info(format: str, **fields: object) -> None:
        calls.append(format)
        real(format, **fields)

    case.patch(_resource, "_info", info)
    return calls


@over_both_transports
class StreamLogTests(TransportCase):
    """``stream_log=False`` builds no line when a stream opens or closes."""

    def serve_counter(self, **options: Any) -> list[str]:
        clock = Clock()
        resource = EventStreamResource(counter(1), clock=clock, heartbeat=0, **options)
        client = self.client_for(resource, clock=clock)
        response = client.get("/events")
        client.advance(2)
        self.assertEqual(data(response), ["1", "2"])
        response.disconnect()
        client.flush()
        self.assertEqual(resource.streams, set())
        return self.logs.stream_lines()

    def setUp(self) -> None:
        self.logs = Logs(self)
        self.built = count_info_calls(self)

    def test_on_by_default(self) -> None:
        """By default a stream logs its opening and its end."""
        lines = self.serve_counter()
        self.assertEqual([line.split(" ")[1] for line in lines], ["opened", "closed"])
        self.assertEqual(len(self.built), 2)

    def test_off(self) -> None:
        """With stream_log=False the stream works and no line is built."""
        lines = self.serve_counter(stream_log=False)
        self.assertEqual(lines, [])
        self.assertEqual(self.built, [])

    def test_handler_failure_still_logged(self) -> None:
        """A failing handler is still logged, with its traceback."""

        def broken(stream: EventStream) -> None:
            raise RuntimeError("the handler broke")

        clock = Clock()
        resource = EventStreamResource(broken, clock=clock, stream_log=False)
        client = self.client_for(resource, clock=clock)
        response = client.get("/events")
        client.flush()
        self.assertTrue(response.finished)
        self.assertEqual(self.built, [])
        (failure,) = [e for e in self.logs.events if "log_failure" in e]
        self.assertIn("Stream handler for {path} failed", failure["log_format"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_hub_off_slow_client_still_logged(self) -> None:
        """The hub's streams log nothing but a slow client cut off."""
        hub = HubFixture(self, max_queue_events=2, stream_log=False)
        fast = hub.subscribe()
        slow = hub.subscribe()
        slow.pause_reading()
        # Over TCP, Twisted buffers 64 KiB before it pauses the stream.
        for n in range(8):
            hub.publish(str(n) * 30_000)
        self.assertFalse(slow.connected)
        self.assertEqual(data(fast), [str(n) * 30_000 for n in range(8)])
        hub.client.disconnect_all()
        hub.client.flush()
        self.assertEqual(self.logs.stream_lines(), [])
        self.assertEqual(self.built, [])
        cut = [t for t in self.logs.texts() if t.startswith("Disconnecting")]
        self.assertEqual(len(cut), 1, self.logs.texts())

    def expire(self, **options: Any) -> list[str]:
        def hook(asked: AuthRequest) -> Deferred[Grant | None]:
            return succeed(Grant(identity="carol", subscribe=["news"], expires=20))

        hub = HubFixture(self, auth_hook=hook, **options)
        response = hub.subscribe()
        self.assertEqual(response.code, 200)
        hub.client.advance(20)
        self.assertTrue(response.finished)
        return self.logs.stream_lines()

    def test_expiry_logged_by_default(self) -> None:
        """By default a stream whose credentials expire says so."""
        self.assertEqual(
            [line.split(" ")[0] for line in self.expire()],
            ["Stream", "Ending", "Stream"],
        )

    def test_expiry_off(self) -> None:
        """With stream_log=False the stream still ends at expiry, silently."""
        self.assertEqual(self.expire(stream_log=False), [])
        self.assertEqual(self.built, [])

    def serve_app(self, **options: Any) -> SSEApp:
        clock = Clock()
        app = SSEApp(clock, heartbeat=0, publish_token=TOKEN, **options)
        client = self.client_for(app.resource(), clock=clock)
        counting = client.get("/events")
        channel = client.get("/channels/news")
        several = client.get("/subscribe?channel=news")
        client.advance(1)
        self.assertEqual(data(counting), ["1"])
        for response in (channel, several):
            self.assertEqual(response.code, 200)
        client.disconnect_all()
        client.flush()
        return app

    def test_app_on_by_default(self) -> None:
        """SSEApp's streams log by default: three streams, six lines."""
        self.serve_app()
        self.assertEqual(len(self.logs.stream_lines()), 6)

    def test_app_off(self) -> None:
        """SSEApp(stream_log=False) reaches the counter, channels and /subscribe."""
        app = self.serve_app(stream_log=False)
        self.assertEqual(self.logs.stream_lines(), [])
        self.assertEqual(self.built, [])
        self.assertFalse(app.events.stream_log)
        self.assertFalse(app.hub.stream_options(app.hub.policy)["stream_log"])


class _Formatter:
    """The access-log formatter of twistd sse, counting the lines it makes."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, timestamp: str, request: Any) -> str:
        line = access_log_formatter(timestamp, request)
        self.lines.append(line)
        return line


#: What a line of the access log holds for the requests served below.
_REQUEST_LINE = re.compile(r'"(GET|POST) /(healthz|channels/news)[^"]* HTTP/1\.1" ')


@over_both_transports
class AccessLogTests(TransportCase):
    """``CappedSite(access_log=False)`` formats no access-log line."""

    def serve(self, **site_options: Any) -> tuple[_Formatter, list[str]]:
        logs = Logs(self)
        clock = Clock()
        app = SSEApp(clock, heartbeat=0, publish_token=TOKEN)
        formatter = _Formatter()
        site = CappedSite(
            app.resource(),
            max_body=1024,
            hub=app.hub,
            reactor=clock,
            logFormatter=formatter,
            **site_options,
        )
        # Started as a listening port starts it: its lines go to the log.
        site.startFactory()
        self.addCleanup(site.stopFactory)
        client = self.client_for(app.resource(), clock=clock)
        client.site = site
        self.assertEqual(client.get("/healthz").code, 200)
        reader = client.get("/channels/news")
        published = client.request(
            "POST",
            "/channels/news",
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            json.dumps({"data": "hello"}).encode(),
        )
        self.assertEqual(published.code, 200)
        self.assertEqual(data(reader), ["hello"])
        # A stream whose client leaves gets its line when it ends.
        reader.disconnect()
        client.flush()
        client.disconnect_all()
        lines = [
            t for t in (formatEvent(e) for e in logs.events) if _REQUEST_LINE.search(t)
        ]
        return formatter, lines

    def test_on_by_default(self) -> None:
        """By default the health check, the publish and the stream are logged."""
        formatter, lines = self.serve()
        self.assertEqual(len(formatter.lines), 3)
        self.assertEqual(len(lines), 3, lines)

    def test_off(self) -> None:
        """With access_log=False no line is formatted nor logged."""
        formatter, lines = self.serve(access_log=False)
        self.assertEqual(formatter.lines, [])
        self.assertEqual(lines, [])

    def test_refusal_still_logged(self) -> None:
        """A publish refused on its head is still logged with the access log off."""
        logs = Logs(self)
        hub = HubFixture(self)
        formatter = _Formatter()
        reactor = MemoryReactorClock()
        site = CappedSite(
            hub.client.resource,
            max_body=64,
            hub=hub.hub,
            reactor=reactor,
            logFormatter=formatter,
            access_log=False,
        )
        site.startFactory()
        self.addCleanup(site.stopFactory)
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        protocol.dataReceived(
            b"POST /channels/news HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "))
        refused = [t for t in logs.texts() if t.startswith("Refused a request body")]
        self.assertEqual(len(refused), 1, logs.texts())
        self.assertEqual(formatter.lines, [])


class OptionTests(SynchronousTestCase):
    """``--access-log`` and ``--stream-log`` take on or off."""

    def parse(self, *arguments: str) -> Options:
        options = Options()
        options.parseOptions(list(arguments))
        return options

    def test_defaults(self) -> None:
        """Both logs are on unless turned off."""
        options = self.parse()
        self.assertEqual((options["access-log"], options["stream-log"]), ("on", "on"))

    def test_values(self) -> None:
        """on and off, in either case, with spaces around."""
        options = self.parse("--access-log", "OFF", "--stream-log", " off ")
        self.assertEqual((options["access-log"], options["stream-log"]), ("off", "off"))
        options = self.parse("--access-log=On", "--stream-log=on")
        self.assertEqual((options["access-log"], options["stream-log"]), ("on", "on"))

    def test_bad_value(self) -> None:
        """Anything else is a usage error naming the option and the value."""
        for name in ("access-log", "stream-log"):
            for value in ("no", "0", "", "false"):
                error = self.assertRaises(
                    usage.UsageError, self.parse, f"--{name}", value
                )
                self.assertIn(f"--{name} must be on or off, not {value!r}", str(error))

    def test_bad_value_process(self) -> None:
        """twistd sse --access-log maybe prints the reason, not a traceback."""
        result = run_twistd("--access-log", "maybe")
        if USAGE_EXITS_NONZERO:
            self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"--access-log must be on or off, not 'maybe'", result.stdout)
        self.assertNotIn(b"Traceback", result.stdout + result.stderr)


def _wait(until: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _streams_open(server: Twistd) -> float:
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sse_streams_open{")
    )


class QuietTwistdTests(SynchronousTestCase):
    """``twistd -n sse --access-log off --stream-log off`` as a real process."""

    def serve(self, *options: str) -> str:
        """
        Subscribe, publish, read the event, leave; then, once the stream is
        gone, have a publish refused on its head, whose line (always
        logged) comes after every line of what went before.  The log.
        """
        with Twistd("--publish-token", TOKEN, "--heartbeat", "0", *options) as server:
            reader = SocketClient(server.port, http_request("/channels/news"))
            self.addCleanup(reader.close)
            self.assertEqual(reader.code, 200)
            body = json.dumps({"data": "hello"}).encode()
            publish = SocketClient(
                server.port,
                http_request(
                    "/channels/news",
                    f"Authorization: Bearer {TOKEN}",
                    "Content-Type: application/json",
                    "Connection: close",
                    method="POST",
                    body=body,
                ),
            )
            self.addCleanup(publish.close)
            self.assertEqual(publish.code, 200)
            frame = reader.read_frame()
            while not frame.startswith(b"id:"):
                frame = reader.read_frame()
            self.assertIn(b"data: hello\n", frame)
            reader.close()
            _wait(lambda: _streams_open(server) == 0, "the stream to end")
            refused = SocketClient(
                server.port,
                http_request(
                    "/channels/news", "Connection: close", method="POST", body=body
                ),
            )
            self.addCleanup(refused.close)
            self.assertEqual(refused.code, 401)
            _wait(lambda: b"Refused a request body" in server.output, "the refusal")
            return server.output.decode(errors="replace")

    def test_default_logs(self) -> None:
        """By default the requests and the stream's two lines are logged."""
        log = self.serve()
        self.assertIn('"POST /channels/news HTTP/1.1" 200', log)
        self.assertIn('"GET /channels/news HTTP/1.1" 200', log)
        self.assertIn('"GET /metrics HTTP/1.1" 200', log)
        self.assertIn("Stream opened for", log)
        self.assertIn("Stream closed for", log)

    def test_quiet(self) -> None:
        """With both off: the stream and publish work, and neither is logged."""
        log = self.serve("--access-log", "off", "--stream-log", "off")
        self.assertNotIn("/channels/news HTTP/1.1", log)
        self.assertNotIn("/metrics HTTP/1.1", log)
        self.assertNotIn("Stream opened", log)
        self.assertNotIn("Stream closed", log)
        self.assertIn("Refused a request body", log)

    def test_access_log_off_only(self) -> None:
        """--access-log off alone keeps the stream's lines."""
        log = self.serve("--access-log", "off")
        self.assertNotIn("/channels/news HTTP/1.1", log)
        self.assertIn("Stream opened for", log)
        self.assertIn("Stream closed for", log)
