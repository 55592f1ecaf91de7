"""
``twistd -n sse`` in a real browser: Debian's headless Chromium, driven by
playwright-core (``tests/js/browser.mjs``), against the server as a child
process.  What is checked is what a page's ``EventSource`` sees.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from ._browser import Browser
from ._process import Twistd
from ._proxy import CuttingProxy
from ._publish import publish
from ._tools import artifact_path, require_chromium

TOKEN = "browser-test-token"

#: Opens an EventSource on the URL in ``url`` and records what it sees in
#: ``window.seen``: every message (data and lastEventId), each open, and the
#: readyState at each error.
RECORD = """
(() => {
  window.seen = { messages: [], opens: 0, errors: [] };
  const source = new EventSource(%s);
  window.recorded = source;
  source.onopen = () => { window.seen.opens += 1; };
  source.onmessage = (event) => {
    window.seen.messages.push([event.data, event.lastEventId]);
  };
  source.onerror = () => { window.seen.errors.push(source.readyState); };
  return true;
})()
"""


def record(url: str) -> str:
    """The JavaScript that records an EventSource on ``url``."""
    return RECORD % json.dumps(url)


def text_of(element_id: str) -> str:
    """The JavaScript expression for an element's text."""
    return f"document.getElementById({json.dumps(element_id)}).textContent"


class _BlankPage(BaseHTTPRequestHandler):
    """Serves an empty page: the other origin of the cross-origin tests."""

    def do_GET(self) -> None:
        body = b"<!doctype html><title>another origin</title><p>another origin"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


def other_origin(case: SynchronousTestCase) -> str:
    """Serve a blank page on another port; return its origin."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BlankPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    case.addCleanup(stop)
    return f"http://127.0.0.1:{server.server_address[1]}"


class DemoPageTests(SynchronousTestCase):
    """The page at ``/`` in Chromium."""

    def setUp(self) -> None:
        require_chromium()
        self.server = Twistd(
            "--interval", "0.2", "--publish-token", TOKEN, "--drain", "0.2"
        ).start()
        self.addCleanup(self.server.stop)
        self.base = f"http://127.0.0.1:{self.server.port}"
        self.browser = Browser.for_test(self)

    def test_counter_arrives(self) -> None:
        """The page shows data: 1, 2, 3 from its EventSource, in order."""
        self.assertEqual(self.browser.goto(self.base + "/"), 200)
        self.browser.wait(f"Number({text_of('count')}) >= 3")
        messages = [
            line.removeprefix("log: message ")
            for line in self.browser.console()
            if line.startswith("log: message ")
        ]
        self.assertEqual(messages[:3], ["1", "2", "3"])
        self.assertEqual(self.browser.eval(text_of("counter-state")), "open")
        self.assertEqual(self.browser.eval(text_of("counter-reconnects")), "0")

    def test_channel_log(self) -> None:
        """Events published on the page's channel appear in its log."""
        self.browser.goto(self.base + "/#lobby")
        self.browser.wait(f"{text_of('channel-state')} === 'open'")
        publish(self.base, "lobby", TOKEN, data="hello")
        publish(self.base, "lobby", TOKEN, data="two\nlines")
        self.browser.wait(f"{text_of('channel-count')} === '2'")
        rows = self.browser.eval(
            "[...document.querySelectorAll('#channel-log li.event')].map("
            "(li) => [li.dataset.type, li.querySelector('.data').textContent])"
        )
        self.assertEqual(rows, [["message", "two\nlines"], ["message", "hello"]])
        # Each event's id is the page's cursor on /subscribe, not the channel's.
        ids = self.browser.eval(
            "[...document.querySelectorAll('#channel-log li.event')]"
            ".map((li) => li.dataset.id)"
        )
        self.assertEqual(len(set(ids)), 2, ids)
        self.assertEqual(self.browser.eval(text_of("channel-last-id")), ids[0])

    def test_publish_form(self) -> None:
        """The page's form publishes with the token the user typed."""
        self.browser.goto(self.base + "/#form")
        self.browser.wait(f"{text_of('channel-state')} === 'open'")
        self.browser.eval(
            "document.getElementById('publish').open = true;"
            "document.getElementById('publish-data').value = 'from the page';"
            "document.getElementById('publish-event').value = 'note';"
            f"document.getElementById('publish-token').value = {json.dumps(TOKEN)};"
            "document.getElementById('publish-go').click()"
        )
        self.browser.wait(f"{text_of('channel-count')} === '1'")
        row = self.browser.eval(
            "(() => { const li = document.querySelector('#channel-log li.event');"
            " return [li.dataset.type, li.querySelector('.data').textContent]; })()"
        )
        self.assertEqual(row, ["note", "from the page"])
        # The event may reach the page's stream before the publish's own
        # answer reaches its form: wait for that answer too.
        self.browser.wait(f"{text_of('publish-result')}.startsWith('Published as')")
        self.assertRegex(
            self.browser.eval(text_of("publish-result")), r"^Published as \S+$"
        )
        # A wrong token is refused, and the page says so.
        self.browser.eval(
            "document.getElementById('publish-token').value = 'wrong';"
            "document.getElementById('publish-go').click()"
        )
        self.browser.wait(f"{text_of('publish-result')}.includes('Bearer')")
        self.assertEqual(self.browser.eval(text_of("channel-count")), "1")

    def test_under_a_path_prefix(self) -> None:
        """Behind a proxy that mounts it at /sse/, every URL stays under it."""
        proxy = CuttingProxy(self.server.port, strip_prefix=b"/sse")
        self.addCleanup(proxy.close)
        prefixed = f"http://127.0.0.1:{proxy.port}/sse/"
        self.assertEqual(self.browser.goto(prefixed + "#deep"), 200)
        self.browser.wait(f"Number({text_of('count')}) >= 2")
        self.browser.wait(f"{text_of('channel-state')} === 'open'")
        publish(self.base, "deep", TOKEN, data="through the prefix")
        self.browser.wait(f"{text_of('channel-count')} === '1'")
        paths = [head.split(b" ")[1].decode() for head in proxy.requests()]
        self.assertIn("/sse/events", paths)
        self.assertIn("/sse/sse.js", paths)
        self.assertTrue(
            any(p.startswith("/sse/subscribe?channel=deep&") for p in paths), paths
        )
        for path in paths:
            self.assertTrue(path.startswith("/sse/"), path)
        self.assertEqual(
            self.browser.eval(text_of("curl-counter")), f"curl -N {prefixed}events"
        )

    def test_screenshot(self) -> None:
        """The page renders without errors; a screenshot is saved to look at."""
        self.browser.goto(self.base + "/#demo")
        self.browser.wait(f"{text_of('channel-state')} === 'open'")
        publish(self.base, "demo", TOKEN, data="hello from a test")
        publish(self.base, "demo", TOKEN, data={"temperature": 21.5, "unit": "C"})
        publish(self.base, "demo", TOKEN, data="first line\nsecond line")
        self.browser.wait(f"{text_of('channel-count')} === '3'")
        self.browser.wait(f"Number({text_of('count')}) >= 8")
        path = self.browser.screenshot(str(artifact_path("demo-page.png")), True)
        with open(path, "rb") as png:
            self.assertEqual(png.read(8), b"\x89PNG\r\n\x1a\n")
        sys.stderr.write(f"\nscreenshot of the demo page: {path}\n")
        errors = [
            line
            for line in self.browser.console()
            if line.startswith(("pageerror:", "error:"))
        ]
        self.assertEqual(errors, [])


class SubscribeTokenTests(SynchronousTestCase):
    """The page on a server started with --subscribe-token."""

    def setUp(self) -> None:
        require_chromium()
        self.server = Twistd(
            "--publish-token", TOKEN, "--subscribe-token", "reader-1", "--drain", "0.2"
        ).start()
        self.addCleanup(self.server.stop)
        self.base = f"http://127.0.0.1:{self.server.port}"
        self.browser = Browser.for_test(self)

    def test_token_from_the_address(self) -> None:
        """The page passes on its own access_token to the channel's stream."""
        self.browser.goto(self.base + "/?access_token=reader-1#lobby")
        self.browser.wait(f"{text_of('channel-state')} === 'open'")
        publish(self.base, "lobby", TOKEN, data="for readers")
        self.browser.wait(f"{text_of('channel-count')} === '1'")

    def test_refused_without(self) -> None:
        """Without it, the channel's stream is refused and not retried."""
        self.browser.goto(self.base + "/#lobby")
        self.browser.wait(f"{text_of('channel-state')} === 'closed'")


class ResumeTests(SynchronousTestCase):
    """A page's EventSource on a channel across a server-side disconnect."""

    def test_resume_without_loss(self) -> None:
        """
        Cut by the server side, the EventSource reconnects with
        Last-Event-ID and gets the events it missed, each once, in order.
        """
        require_chromium()
        server = Twistd("--publish-token", TOKEN, "--retry", "500").start()
        self.addCleanup(server.stop)
        base = f"http://127.0.0.1:{server.port}"
        proxy = CuttingProxy(server.port)
        self.addCleanup(proxy.close)
        browser = Browser.for_test(self)
        # The demo page subscribes to the same channel: its log is checked too.
        browser.goto(f"http://127.0.0.1:{proxy.port}/#resume")
        browser.eval(record("channels/resume"))
        browser.wait("window.seen.opens === 1", show="window.seen")
        browser.wait(f"{text_of('channel-state')} === 'open'")

        ids = [publish(base, "resume", TOKEN, data=str(n)) for n in (1, 2, 3)]
        browser.wait("window.seen.messages.length === 3", show="window.seen")

        # The streams end; reconnections wait in the proxy while 4-6 are
        # published, so they can only arrive by replay.
        proxy.cut(hold=True)
        browser.wait(
            "window.recorded.readyState === EventSource.CONNECTING", show="window.seen"
        )
        ids += [publish(base, "resume", TOKEN, data=str(n)) for n in (4, 5, 6)]
        proxy.release()
        browser.wait("window.seen.opens === 2", show="window.seen")
        ids.append(publish(base, "resume", TOKEN, data="7"))
        browser.wait("window.seen.messages.length >= 7", show="window.seen")

        seen = browser.eval("window.seen")
        self.assertEqual(
            seen["messages"],
            [[str(n), event_id] for n, event_id in zip(range(1, 8), ids, strict=True)],
        )
        self.assertEqual(seen["errors"], [0])
        # The page's own stream may reconnect a moment after the recorder's:
        # wait until it has every event before counting the resumes.
        browser.wait(f"{text_of('channel-count')} === '7'")
        # The page's client (sse.js on /subscribe) resumes with a cursor in
        # its URL: the one after 3, or, if the cut took 1 to 3 before they
        # reached the page, the one its stream opened with.
        cursors = {
            parse_qs(urlsplit(head.split(b" ")[1].decode()).query).get(
                "lastEventId", [""]
            )[0]
            for head in proxy.requests()
            if head.startswith(b"GET /subscribe?")
        }
        cursors.discard("")
        self.assertEqual(len(cursors), 1, proxy.requests())
        resumed = [
            head
            for head in proxy.requests()
            if head.startswith(b"GET /channels/resume ")
            and re.search(
                rb"(?im)^last-event-id: " + re.escape(ids[2].encode()) + rb"\r?$", head
            )
        ]
        # The recorder's reconnection resumed after 3.
        self.assertEqual(len(resumed), 1, proxy.requests())
        # The page shows the reconnect and logs every event once.
        self.assertEqual(browser.eval(text_of("channel-reconnects")), "1")
        # The counter's client reconnects after its own jittered back-off.
        browser.wait(f"{text_of('counter-reconnects')} === '1'")
        logged = browser.eval(
            "[...document.querySelectorAll('#channel-log li.event')]"
            ".map((li) => li.querySelector('.data').textContent).reverse()"
        )
        self.assertEqual(logged, [str(n) for n in range(1, 8)])


class CrossOriginTests(SynchronousTestCase):
    """A page of another origin, with and without ``--allow-origin``."""

    def setUp(self) -> None:
        require_chromium()
        self.origin = other_origin(self)

    def open_from_other_origin(self, *options: str) -> Browser:
        server = Twistd("--interval", "0.2", *options).start()
        self.addCleanup(server.stop)
        browser = Browser.for_test(self)
        browser.goto(self.origin + "/")
        browser.eval(record(f"http://127.0.0.1:{server.port}/events"))
        return browser

    def test_allowed(self) -> None:
        """With --allow-origin set to the page's origin, the stream works."""
        browser = self.open_from_other_origin("--allow-origin", self.origin)
        browser.wait("window.seen.messages.length >= 3")
        seen = browser.eval("window.seen")
        self.assertEqual([data for data, _ in seen["messages"][:3]], ["1", "2", "3"])
        self.assertEqual(seen["opens"], 1)
        self.assertEqual(seen["errors"], [])

    def assert_refused(self, browser: Browser) -> None:
        # A CORS failure fails the EventSource for good: CLOSED, no retry.
        browser.wait("window.recorded.readyState === EventSource.CLOSED")
        seen = browser.eval("window.seen")
        self.assertEqual(seen, {"messages": [], "opens": 0, "errors": [2]})
        self.assertTrue(
            any("CORS" in line for line in browser.console()), browser.console()
        )

    def test_refused_without_allow_origin(self) -> None:
        """With --allow-origin '', the browser refuses the stream."""
        self.assert_refused(self.open_from_other_origin("--allow-origin", ""))

    def test_refused_for_another_origin(self) -> None:
        """With --allow-origin naming another origin, it is refused too."""
        self.assert_refused(
            self.open_from_other_origin("--allow-origin", "http://elsewhere.example")
        )
