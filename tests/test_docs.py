"""
The documentation: its code samples run, its reference pages name every
option, and it builds without a warning.

The samples are real files in ``docs/examples/`` (the pages include them
with ``literalinclude``); they import each other as top-level modules, so
that directory goes on ``sys.path`` here.  Samples that are test cases
themselves (the tutorial's and the testing how-to's) run as part of this
module.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import SkipTest

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from twisted_sse import Event, EventStreamService, MemoryBroker
from twisted_sse._tap import Options
from twisted_sse.testing import SSETestClient

from ._http import SocketClient, http_request
from ._process import Twistd
from ._tools import require_program

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import embed_twisted_web  # noqa: E402
import hub_server  # noqa: E402
import journal  # noqa: E402
import publish  # noqa: E402
import reader  # noqa: E402
import redis_service  # noqa: E402
import slow_clients  # noqa: E402
import tls  # noqa: E402

# The samples that are test cases run here, under trial and pytest alike.
from test_counter import CounterTests  # noqa: E402
from test_dashboard import DashboardTests, HubTests  # noqa: E402

__all__ = ["CounterTests", "DashboardTests", "HubTests"]

TOKEN = "docs-token"


class EmbeddingTests(SynchronousTestCase):
    """docs/howto/embed.rst: a stream in a plain twisted.web site, as a service."""

    def test_service_drains_streams(self) -> None:
        """Stopping the service ends open streams cleanly with a retry hint."""
        reactor = MemoryReactorClock()
        service = embed_twisted_web.make_service(reactor, "tcp:8080")
        service.privilegedStartService()
        service.startService()
        ((port, site, _, _),) = reactor.tcpServers
        self.assertEqual(port, 8080)
        assert isinstance(site, Site)
        client = SSETestClient(site.resource, reactor)
        page = client.get("/")
        response = client.get("/live/counter")
        client.advance(2)

        stopped = service.stopService()
        client.advance(6)

        self.assertEqual(page.raw, b"<p>Hello.</p>")
        self.successResultOf(stopped)
        self.assertEqual([event.data for event in response.events], ["1", "2"])
        self.assertTrue(response.finished)
        assert response.retry is not None
        self.assertTrue(1000 <= response.retry <= 6000, response.retry)
        client.assert_clean(testcase=self)


class PublishTests(SynchronousTestCase):
    """docs/howto/publish.rst: publishing from elsewhere."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker()
        self.hub = hub_server.make_hub(self.clock, self.broker, publish_token=TOKEN)
        self.root = hub_server.make_root(self.hub)
        self.client = SSETestClient(self.root, self.clock)
        self.addCleanup(self.client.disconnect_all)

    def test_treq(self) -> None:
        """publish() posts with treq and returns the id the subscriber sees."""
        subscriber = self.client.get("/channels/news")
        http = StubTreq(self.root)

        published = Deferred.fromCoroutine(
            publish.publish(
                "http://localhost", "news", TOKEN, "hello", "headline", http=http
            )
        )
        http.flush()

        event_id = self.successResultOf(published)
        (event,) = subscriber.events
        self.assertEqual(
            (event.type, event.data, event.last_event_id),
            ("headline", "hello", event_id),
        )

    def test_announce(self) -> None:
        """announce() publishes from Python and returns the event's id."""
        subscriber = self.client.get("/channels/news")
        event_id = self.successResultOf(
            Deferred.fromCoroutine(publish.announce(self.hub, "Hello"))
        )
        (event,) = subscriber.events
        self.assertEqual(
            (event.type, event.data, event.last_event_id),
            ("headline", "Hello", event_id),
        )

    def test_treq_refused(self) -> None:
        """publish() raises when the server refuses the token."""
        http = StubTreq(self.root)
        published = Deferred.fromCoroutine(
            publish.publish("http://localhost", "news", "wrong", "hello", http=http)
        )
        http.flush()
        failure = self.failureResultOf(published, RuntimeError)
        self.assertIn("401", str(failure.value))

    def test_from_thread(self) -> None:
        """report_progress() publishes from a worker thread through the reactor."""
        subscriber = self.client.get("/channels/jobs")
        reactor = _ReactorThread()
        results: list[str] = []
        worker = threading.Thread(
            target=lambda: results.append(
                publish.report_progress(reactor, self.broker, 3)
            )
        )
        worker.start()
        # What the reactor thread does: run the call the worker handed over.
        reactor.run_one()
        worker.join(10)

        (event,) = subscriber.events
        self.assertEqual(
            (event.type, json.loads(event.data)), ("progress", {"done": 3})
        )
        self.assertEqual(results, [event.last_event_id])

    def test_blocking_against_twistd(self) -> None:
        """publish_blocking() reaches a subscriber of a real twistd sse."""
        server = Twistd("--publish-token", TOKEN).start()
        self.addCleanup(server.stop)
        stream = SocketClient(server.port, http_request("/channels/news"))
        self.addCleanup(stream.close)
        stream.read_frame()  # the opening frame

        event_id = publish.publish_blocking(
            f"http://127.0.0.1:{server.port}", "news", TOKEN, "hello", "headline"
        )

        self.assertEqual(
            stream.read_frame(),
            f"id: {event_id}\nevent: headline\ndata: hello\n\n".encode(),
        )


def _code_block(page: Path, name: str) -> str:
    """The text of the ``code-block`` with ``:name: name`` on ``page``."""
    match = re.search(
        rf"^\.\. code-block:: \w+\n   :name: {re.escape(name)}\n\n((?:   .*\n|\n)+)",
        page.read_text("utf-8"),
        re.MULTILINE,
    )
    assert match, f"no code-block named {name} in {page}"
    return textwrap.dedent(match.group(1))


class PublishAnywhereTests(SynchronousTestCase):
    """
    docs/howto/publish-anywhere.rst: each snippet, run as its reader runs it
    (sh, python, node), publishes to a real twistd sse.
    """

    page = DOCS / "howto" / "publish-anywhere.rst"
    frame = 'id: {}\nevent: headline\ndata: {{"title":"Twisted 26 is out"}}\n\n'

    def start(self) -> tuple[str, SocketClient]:
        """A hub on a free port with the page's token, and a news subscriber."""
        server = Twistd("--publish-token", TOKEN).start()
        self.addCleanup(server.stop)
        stream = SocketClient(server.port, http_request("/channels/news"))
        self.addCleanup(stream.close)
        stream.read_frame()  # the opening frame
        return f"http://127.0.0.1:{server.port}", stream

    def run_block(
        self, name: str, argv: list[str], hub: str, token: str = TOKEN
    ) -> subprocess.CompletedProcess[str]:
        """Run the block ``name`` with ``argv``, at ``hub``, with ``token``."""
        source = _code_block(self.page, name).replace("http://localhost:3000", hub)
        return subprocess.run(
            [*argv, source],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "TWISTED_SSE_PUBLISH_TOKEN": token},
        )

    def test_curl(self) -> None:
        """The curl snippet publishes the headline and prints its id."""
        require_program("curl", "apt-get install curl")
        hub, stream = self.start()
        run = self.run_block("publish-anywhere-curl", ["sh", "-c"], hub)
        self.assertEqual(run.returncode, 0, run.stderr)
        event_id = json.loads(run.stdout)["id"]
        self.assertEqual(stream.read_frame(), self.frame.format(event_id).encode())

    def test_curl_refused(self) -> None:
        """With a wrong token, curl exits 22 and prints the hub's reason."""
        require_program("curl", "apt-get install curl")
        hub, _ = self.start()
        run = self.run_block("publish-anywhere-curl", ["sh", "-c"], hub, "wrong")
        self.assertEqual(run.returncode, 22, run.stderr)
        self.assertEqual(
            json.loads(run.stdout),
            {"error": "a valid Authorization: Bearer token is required"},
        )

    def test_python(self) -> None:
        """The Python snippet, a program of its own, publishes and prints the id."""
        hub, stream = self.start()
        run = self.run_block("publish-anywhere-python", [sys.executable, "-c"], hub)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(
            stream.read_frame(), self.frame.format(run.stdout.strip()).encode()
        )

    def test_python_errors(self) -> None:
        """The error-handling snippet prints the line the page shows for a bad token."""
        hub, _ = self.start()
        run = self.run_block(
            "publish-anywhere-errors", [sys.executable, "-c"], hub, "wrong"
        )
        self.assertEqual(
            (run.returncode, run.stdout, run.stderr),
            (
                1,
                "",
                "not published: 401 a valid Authorization: Bearer token is required\n",
            ),
        )
        self.assertIn(run.stderr.strip(), self.page.read_text("utf-8"))

    def test_python_errors_hub_down(self) -> None:
        """With no hub listening, the error-handling snippet says so."""
        with socket.create_server(("127.0.0.1", 0)) as probe:
            hub = f"http://127.0.0.1:{probe.getsockname()[1]}"
        run = self.run_block("publish-anywhere-errors", [sys.executable, "-c"], hub)
        self.assertEqual(run.returncode, 1)
        self.assertTrue(run.stderr.startswith("no answer from the hub: "), run.stderr)

    def test_fetch(self) -> None:
        """The JavaScript snippet, an ES module in node, publishes and logs the id."""
        node = require_program("node", "apt-get install nodejs")
        hub, stream = self.start()
        run = self.run_block(
            "publish-anywhere-fetch", [node, "--input-type=module", "-e"], hub
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(
            stream.read_frame(), self.frame.format(run.stdout.strip()).encode()
        )


@implementer(IReactorFromThreads)
class _ReactorThread:
    """Stands in for the reactor: the test thread runs what workers hand over."""

    def __init__(self) -> None:
        self.calls: queue.Queue[Callable[[], object]] = queue.Queue()

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None:
        self.calls.put(lambda: callable(*args, **kwargs))

    def run_one(self) -> None:
        self.calls.get(timeout=10)()


class ResumeTests(SynchronousTestCase):
    """docs/howto/resume.rst: resuming, history and its loss."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = hub_server.make_hub(self.clock, MemoryBroker(history=3))
        self.root = hub_server.make_root(self.hub)
        self.agent = RequestTraversalAgent(self.root)

    def publish(self, *texts: str) -> None:
        for text in texts:
            self.successResultOf(self.hub.publish("news", Event(data=text)))
        self.agent.flush()

    def start(self, last_event_id: str = "") -> reader.NewsReader:
        news = reader.NewsReader(
            "http://localhost/channels/news",
            last_event_id,
            reactor=self.clock,
            agent=self.agent,
        )
        self.addCleanup(news.stop)
        self.clock.advance(0)
        self.agent.flush()
        return news

    def stop(self, news: reader.NewsReader) -> str:
        news.stop()
        self.agent.flush()
        return news.last_event_id

    def test_resume_after_restart(self) -> None:
        """A reader restarted from its saved id gets what it missed, once."""
        first = self.start()
        self.publish("a", "b")
        saved = self.stop(first)
        self.publish("c", "d")

        second = self.start(saved)
        self.publish("e")

        self.assertEqual(first.items, ["a", "b"])
        self.assertEqual(second.items, ["c", "d", "e"])
        self.assertEqual(second.lost, [])

    def test_new_reader_has_a_position(self) -> None:
        """A reader that saw no event yet still resumes without a gap."""
        first = self.start()
        saved = self.stop(first)
        self.publish("a")

        second = self.start(saved)

        self.assertNotEqual(saved, "")
        self.assertEqual(second.items, ["a"])

    def test_history_lost(self) -> None:
        """Away for longer than the history, a reader is told, then goes live."""
        first = self.start()
        saved = self.stop(first)
        self.publish("a", "b", "c", "d", "e")

        second = self.start(saved)
        self.publish("f")

        self.assertEqual(second.lost, ["trimmed"])
        self.assertEqual(second.items, ["f"])

    def test_history_lost_header(self) -> None:
        """The response to a resume that cannot be exact says why in a header."""
        client = SSETestClient(self.root, self.clock)
        response = client.get("/channels/news", last_event_id="not-an-id")
        self.assertEqual(response.header("SSE-History-Lost"), "malformed")
        self.assertEqual([event.type for event in response.events], ["history-lost"])
        response.disconnect()
        client.assert_clean(self.hub.registry, testcase=self)


class JournalTests(SynchronousTestCase):
    """docs/howto/resume.rst: resumption in a stream of your own."""

    def test_resume(self) -> None:
        """A client back with Last-Event-ID gets what it missed, once."""
        clock = Clock()
        entries = journal.Journal(clock)
        client = SSETestClient(entries.resource, clock)
        entries.add("one")
        first = client.get("/")
        entries.add("two")
        first.disconnect()
        entries.add("three")

        second = client.get("/", last_event_id=first.last_event_id)
        strange = client.get("/", last_event_id="99")

        self.assertEqual([e.data for e in first.events], ["one", "two"])
        self.assertEqual([e.data for e in second.events], ["three"])
        self.assertEqual([e.data for e in strange.events], ["one", "two", "three"])
        client.disconnect_all()
        client.assert_clean(testcase=self)


class SlowClientTests(SynchronousTestCase):
    """docs/howto/slow-clients.rst: the policies at work."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = slow_clients.make_hub(self.clock)
        self.client = SSETestClient(hub_server.make_root(self.hub), self.clock)
        self.addCleanup(self.client.disconnect_all)

    def test_latest_keeps_newest_per_key(self) -> None:
        """A stalled prices reader gets only the newest price per symbol."""
        response = self.client.get("/channels/prices")
        response.pause_reading()
        for symbol, price in [("AAPL", 1.0), ("AAPL", 2.0), ("MSFT", 7.0)]:
            self.successResultOf(slow_clients.publish_price(self.hub, symbol, price))
        self.successResultOf(slow_clients.publish_price(self.hub, "AAPL", 3.0))

        response.resume_reading()

        prices = [json.loads(event.data) for event in response.events]
        self.assertEqual(
            prices,
            [{"symbol": "MSFT", "price": 7.0}, {"symbol": "AAPL", "price": 3.0}],
        )

    def test_disconnect_then_resume(self) -> None:
        """A reader 100 events behind is cut off, and loses nothing by resuming."""
        response = self.client.get("/channels/news")
        response.pause_reading()
        for number in range(101):
            self.hub.publish("news", Event(data=str(number)))

        self.assertFalse(response.connected)
        again = self.client.get("/channels/news", last_event_id=response.last_event_id)
        self.assertEqual(
            [event.data for event in again.events], [str(n) for n in range(101)]
        )

    def test_own_stream_conflates(self) -> None:
        """PriceFeed keeps the newest queued price per symbol."""
        feed = slow_clients.PriceFeed(self.clock)
        client = SSETestClient(feed.resource, self.clock)
        response = client.get("/")
        response.pause_reading()
        for symbol, price in [("AAPL", 1.0), ("AAPL", 2.0), ("MSFT", 7.0)]:
            feed.quote(symbol, price)
        feed.quote("AAPL", 3.0)

        response.resume_reading()

        self.assertEqual(
            [json.loads(event.data)["price"] for event in response.events], [7.0, 3.0]
        )
        response.disconnect()
        client.assert_clean(testcase=self)


class TLSTests(SynchronousTestCase):
    """docs/howto/tls-http2.rst: the TLS endpoint."""

    def test_tls_endpoint(self) -> None:
        """tls_endpoint() listens with the key and certificate, even in odd paths."""
        try:
            from ._certs import self_signed
        except ImportError as error:  # pragma: no cover
            raise SkipTest(f"no certificate maker: {error}") from None
        if importlib.util.find_spec("OpenSSL") is None:
            raise SkipTest("TLS needs Twisted[tls] (the tls extra)")
        directory = Path(tempfile.mkdtemp(prefix="twisted-sse-docs-"))
        self.addCleanup(shutil.rmtree, directory, True)
        odd = directory / "with:colon"
        odd.mkdir()
        key, cert = self_signed(odd)
        reactor = MemoryReactorClock()
        site = Site(Resource())

        self.successResultOf(
            tls.tls_endpoint(reactor, str(key), str(cert)).listen(site)
        )

        ((port, factory, _, _, _),) = reactor.sslServers
        self.assertEqual((port, factory), (8443, site))
        if importlib.util.find_spec("h2") is not None:
            self.assertIn(b"h2", site.acceptableProtocols())


class RedisServiceTests(SynchronousTestCase):
    """docs/howto/redis-nginx.rst: the hub on Redis in your own service."""

    def test_before_redis_answers(self) -> None:
        """Until Redis answers, POST gets 503 and GET a retry hint."""
        reactor = MemoryReactorClock()
        service = redis_service.make_service(
            reactor, "redis://127.0.0.1:6379/0", TOKEN, "tcp:8080"
        )
        (server,) = [s for s in service if isinstance(s, EventStreamService)]
        client = SSETestClient(server.site.resource, reactor)

        posted = client.request(
            "POST", "/channels/news", {"Authorization": f"Bearer {TOKEN}"}, b"hi"
        )
        subscribed = client.get("/channels/news")

        self.assertEqual(posted.code, 503)
        self.assertEqual(subscribed.code, 200)
        self.assertTrue(subscribed.finished)
        self.assertIsNotNone(subscribed.retry)
        client.assert_clean(testcase=self)


# The reference pages


def _options_block(text: str, name: str) -> str:
    """The text of the ``.. option::`` entry for ``name``, up to the next one."""
    match = re.search(
        rf"^\.\. option:: [^\n]*{re.escape(name)}(?![\w-])[^\n]*\n(.*?)(?=^\.\. |\Z)",
        text,
        re.MULTILINE | re.DOTALL,
    )
    return match.group(0) if match else ""


def _default_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class ReferenceTests(SynchronousTestCase):
    """The reference pages cover what the code offers."""

    def test_every_twistd_option(self) -> None:
        """Every twistd sse option has an entry, with its default, in twistd.rst."""
        text = (DOCS / "reference" / "twistd.rst").read_text("utf-8")
        names: dict[str, object] = {}
        for long, short, default, *_ in Options.optParameters:
            names[long] = default
            if short:
                self.assertTrue(
                    re.search(
                        rf"^\.\. option:: -{short} .*--{long}(?![\w-])",
                        text,
                        re.MULTILINE,
                    ),
                    f"-{short} is not given with --{long}",
                )
        for flag in Options.optFlags:
            names[str(flag[0])] = None
        inherited = set(dir(usage.Options))
        for attribute in dir(Options):
            if attribute.startswith("opt_") and attribute not in inherited:
                names[attribute[4:].replace("_", "-")] = None
        self.assertGreater(len(names), 15)
        for name, default in names.items():
            block = _options_block(text, f"--{name}")
            self.assertTrue(block, f"--{name} has no '.. option::' entry")
            if default is not None:
                self.assertIn(
                    f"Default: ``{_default_text(default)}``",
                    " ".join(block.split()),
                    f"--{name}: the default is not {default!r}",
                )

    def test_every_cli_option(self) -> None:
        """Every option of twisted-sse listen has an entry in cli.rst."""
        from twisted_sse.__main__ import build_parser

        text = (DOCS / "reference" / "cli.rst").read_text("utf-8")
        (commands,) = [
            action
            for action in build_parser()._actions
            if isinstance(action, argparse._SubParsersAction)
        ]
        listen: argparse.ArgumentParser = commands.choices["listen"]
        for action in listen._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    self.assertTrue(
                        _options_block(text, option),
                        f"{option} has no '.. option::' entry",
                    )


class BuildTests(SynchronousTestCase):
    """The documentation builds."""

    def test_sphinx_build(self) -> None:
        """Sphinx builds the HTML with warnings as errors."""
        missing = [
            name
            for name in ("sphinx", "myst_parser")
            if importlib.util.find_spec(name) is None
        ]
        if missing:
            message = (
                f"{' and '.join(missing)} not installed: "
                "pip install -e '.[docs]' to build the documentation"
            )
            if os.environ.get("CI") == "true":
                self.fail(message)
            raise SkipTest(message)
        output = tempfile.mkdtemp(prefix="twisted-sse-docs-")
        self.addCleanup(shutil.rmtree, output, True)
        command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q"]
        result = subprocess.run(
            [*command, "-b", "html", str(DOCS), output],
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(result.returncode, 0, result.stderr + result.stdout)
        self.assertTrue((Path(output) / "index.html").exists())
