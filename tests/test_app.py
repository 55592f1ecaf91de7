"""
Tests for L{twisted_sse._app}: the Klein app that C{twistd sse} serves, its
routes (C{/}, C{/events}, C{/healthz}, C{/metrics}, C{/channels/{name}})
and its errors in JSON, through L{twisted_sse.testing.SSETestClient} and a
L{Clock}, over both of its transports.

The figures of C{/metrics} are L{tests.test_metrics}'; C{twistd -n sse} as
a real process is in test_twistd.py.
"""

from __future__ import annotations

from importlib.resources import files

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests._transports import TransportCase, over_both_transports
from twisted_sse._app import SSEApp
from twisted_sse._memory import MemoryBroker
from twisted_sse._stream import SlowClientPolicy
from twisted_sse.testing import SSETestResponse

from ._helpers import EPOCH, TOKEN, answer, data


class _DownBroker(MemoryBroker):
    """A broker that cannot serve (Redis is down)."""

    available = False


@over_both_transports
class RoutesTests(TransportCase):
    """The routes of the app, as a browser and a publisher meet them."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = SSEApp(
            self.clock, heartbeat=0, interval=0.5, retry=2500, publish_token=TOKEN
        )
        self.client = self.client_for(self.app.resource(), self.clock)

    def tearDown(self) -> None:
        self.client.disconnect_all()
        self.client.assert_clean(self.app.registry, self.app.heartbeat, testcase=self)

    def test_index(self) -> None:
        """/ is the page whose EventSource opens the counter, as HTML; HEAD too."""
        page = files("twisted_sse").joinpath("static/index.html").read_bytes()
        response = self.client.get("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("Content-Type"), "text/html; charset=utf-8")
        self.assertEqual(response.raw, page)
        self.assertIn(b'from "./sse.js"', page)
        self.assertIn(b'new SSEStream("events")', page)
        head = self.client.request("HEAD", "/")
        self.assertEqual((head.code, head.raw), (200, b""))

    def test_counter(self) -> None:
        """
        /events sends its retry first, then counts every interval, each
        connection from 1.
        """
        first = self.client.get("/events")
        self.assertEqual((first.code, first.retry, data(first)), (200, 2500, []))
        self.client.advance(0.5)
        self.assertEqual(data(first), ["1"])
        self.client.advance(0.5)
        second = self.client.get("/events")
        self.client.advance(0.5)
        self.assertEqual((data(first), data(second)), (["1", "2", "3"], ["1"]))

    def test_healthz(self) -> None:
        """/healthz: 200 while the broker works, in JSON, never cached; HEAD too."""
        response = self.client.get("/healthz")
        self.assertEqual(response.code, 200)
        self.assertEqual(answer(response), {"status": "ok", "broker": "up"})
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(response.header("Cache-Control"), "no-store")
        head = self.client.request("HEAD", "/healthz")
        self.assertEqual((head.code, head.raw), (200, b""))

    def test_healthz_down(self) -> None:
        """/healthz: 503 while the broker does not work."""
        app = SSEApp(self.clock, broker=_DownBroker(), heartbeat=0)
        response = self.client_for(app.resource(), self.clock).get("/healthz")
        self.assertEqual(response.code, 503)
        self.assertEqual(answer(response), {"status": "unavailable", "broker": "down"})

    def test_allow_origin(self) -> None:
        """The counter and the channels carry allow_origin ("*" by default)."""
        for response in [self.client.get("/events"), self.client.get("/channels/a")]:
            self.assertEqual(response.header("Access-Control-Allow-Origin"), "*")
        app = SSEApp(self.clock, heartbeat=0, allow_origin=None)
        client = self.client_for(app.resource(), self.clock)
        for response in [client.get("/events"), client.get("/channels/a")]:
            self.assertIsNone(response.header("Access-Control-Allow-Origin"))
        client.disconnect_all()

    def test_channels(self) -> None:
        """/channels/{name} is the hub: a publish there reaches its subscribers."""
        clock = Clock()
        broker = MemoryBroker(epoch=EPOCH)
        app = SSEApp(clock, broker=broker, publish_token=TOKEN)
        client = self.client_for(app.resource(), clock)
        subscriber = client.get("/channels/news")
        posted = client.request(
            "POST",
            "/channels/news",
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"},
            b"via klein",
        )
        self.assertEqual(answer(posted), {"id": f"{EPOCH}-1"})
        self.assertEqual(data(subscriber), ["via klein"])
        client.disconnect_all()
        client.assert_clean(
            app.registry, app.heartbeat, brokers=[broker], testcase=self
        )


class OptionsTests(SynchronousTestCase):
    """What the app's options reach."""

    def test_counter_takes_queue_options(self) -> None:
        """The counter's streams get the hub's queue bounds and policy."""
        app = SSEApp(
            Clock(),
            max_queue_events=7,
            max_queue_bytes=700,
            policy=SlowClientPolicy.LATEST,
        )
        self.assertEqual(app.events.max_queue_events, 7)
        self.assertEqual(app.events.max_queue_bytes, 700)
        self.assertEqual(app.events.policy, SlowClientPolicy.LATEST)


# The app's errors


class _FailingBroker(MemoryBroker):
    """A broker of the user's whose health cannot be read."""

    @property
    def available(self) -> bool:  # type: ignore[override]
        raise RuntimeError("cannot tell")


NO_CHANNEL = "no channel here: a channel is /channels/{name}, one path segment"
NOT_FOUND = (
    "not found: this server answers /, /events, /healthz, /metrics, /subscribe, "
    "/sse.js, /sse.d.ts, /channels/{name} and /presence/{channel}"
)


@over_both_transports
class AppErrorTests(TransportCase):
    """Every error of the app twistd sse serves is JSON, never an HTML page."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = SSEApp(self.clock, heartbeat=0, publish_token=TOKEN)
        self.client = self.client_for(self.app.resource(), self.clock)

    def tearDown(self) -> None:
        self.client.disconnect_all()
        self.client.assert_clean(self.app.registry, self.app.heartbeat, testcase=self)

    def assert_error(
        self, response: SSETestResponse, code: int, reason: str
    ) -> SSETestResponse:
        self.assertEqual(response.code, code)
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(answer(response), {"error": reason})
        return response

    def test_unknown_paths(self) -> None:
        """A path that no route serves: 404 listing the routes."""
        for path in ("/nope", "/events/1", "/healthz/", "/index.html"):
            self.assert_error(self.client.get(path), 404, NOT_FOUND)
            self.assert_error(self.client.request("POST", path), 404, NOT_FOUND)

    def test_paths_without_a_channel(self) -> None:
        """/channels, /channels/ and deeper paths: the hub's own 404."""
        for path in ("/channels", "/channels/", "/channels/a/b", "/channels/a/"):
            self.assert_error(self.client.get(path), 404, NO_CHANNEL)

    def test_head_of_unknown_path(self) -> None:
        """HEAD of an unknown path: 404 with the JSON type, no body."""
        response = self.client.request("HEAD", "/nope")
        self.assertEqual(response.code, 404)
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(response.raw, b"")

    def test_methods_not_allowed(self) -> None:
        """A method a route does not answer: 405 with Allow, in JSON."""
        for method, path, allowed in [
            ("POST", "/", "GET, HEAD"),
            ("DELETE", "/healthz", "GET, HEAD"),
            ("POST", "/events", "GET, HEAD, OPTIONS"),
            ("PUT", "/events", "GET, HEAD, OPTIONS"),
            ("POST", "/metrics", "GET, HEAD"),
            ("PUT", "/channels/news", "GET, HEAD, OPTIONS, POST"),
        ]:
            response = self.assert_error(
                self.client.request(method, path),
                405,
                f"method {method} not allowed here: use {allowed}",
            )
            self.assertEqual(response.header("Allow"), allowed)

    def test_metrics_off(self) -> None:
        """With metrics off, /metrics is a JSON 404, and 404s no longer list it."""
        app = SSEApp(self.clock, heartbeat=0, metrics=False)
        client = self.client_for(app.resource(), self.clock)
        self.assert_error(
            client.get("/metrics"), 404, "metrics are turned off on this server"
        )
        self.assert_error(
            client.get("/nope"),
            404,
            "not found: this server answers /, /events, /healthz, /subscribe, "
            "/sse.js, /sse.d.ts, /channels/{name} and /presence/{channel}",
        )

    def test_url_not_utf8(self) -> None:
        """A URL that is not UTF-8 once decoded: 400 in JSON, no traceback."""
        for path in ("/%FF", "/channels/%FF", "/channels/%C3"):
            self.assert_error(self.client.get(path), 400, "the URL is not UTF-8")
        self.assertEqual(self.flushLoggedErrors(), [])
        # UTF-8 goes on to the routes: here, a channel name that is not ASCII.
        self.assert_error(
            self.client.get("/channels/caf%C3%A9"), 400, "invalid channel name: 'café'"
        )

    def test_unexpected_error(self) -> None:
        """An exception in a route: 500 internal error in JSON, logged once."""
        app = SSEApp(self.clock, broker=_FailingBroker(), heartbeat=0)
        client = self.client_for(app.resource(), self.clock)
        self.assert_error(client.get("/healthz"), 500, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
