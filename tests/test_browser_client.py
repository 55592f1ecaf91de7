"""
The browser client, ``/sse.js``, in Debian's headless Chromium against a real
``twistd -n sse``: tabs of one origin share one server stream through a
leader, which another tab replaces when it closes or crashes, without an
event missed or repeated; separate browser profiles hold their own streams;
the fetch transport sends its headers; a reconnection resumes exactly; and a
401 goes to ``onauth``.

The tabs load a small test page of the hub's origin (answered by the
driver, ``tests/js/tabs.mjs``) that imports ``/sse.js`` and opens only
what each test asks for, so that ``/metrics`` counts the streams of the
clients under test and nothing else.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.request
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import jwt
from twisted.trial.unittest import SynchronousTestCase

from ._process import Twistd
from ._proxy import CuttingProxy
from ._publish import publish
from ._tabs import Tabs
from ._tools import require_chromium

TOKEN = "browser-client-publish-token"
#: The hub's JWT secret, given through its environment.
SECRET = secrets.token_urlsafe(32)

#: A page that imports the module and keeps it as ``window.sse``.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>sse.js under test</title>
<script type="module">
  import * as sse from "/sse.js";
  window.sse = sse;
</script>
"""

#: Subscribes ``window.client`` to %(channels)s with %(options)s, recording in
#: ``window.seen``: each event's data and id, each state, the leadership.
SUBSCRIBE = """
(() => {
  window.seen = { data: [], ids: [], states: [], auth: [] };
  const options = %(options)s;
  options.onstatechange = (state) => window.seen.states.push(state);
  window.client = new window.sse.SSEClient("/subscribe", options);
  window.client.subscribe(%(channels)s, (event) => {
    window.seen.data.push(event.data);
    window.seen.ids.push(event.id);
  });
  return true;
})()
"""


def subscribe_js(channels: list[str], options: str = "{}") -> str:
    """The JavaScript that subscribes a tab's client (see :data:`SUBSCRIBE`)."""
    return SUBSCRIBE % {"channels": json.dumps(channels), "options": options}


def streams_open(base: str) -> float:
    """The sum of ``sse_streams_open`` over its labels, from ``/metrics``."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode("utf-8")
    return sum(
        float(match.group(1))
        for match in re.finditer(r"(?m)^sse_streams_open(?:\{[^}]*\})? (\S+)$", text)
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def mint(subscribe: list[str], ttl: float = 300.0) -> str:
    """A token signed with :data:`SECRET` that may read ``subscribe``."""
    claims = {
        "sub": "page-user",
        "exp": int(time.time() + ttl),
        "sse": {"subscribe": subscribe, "publish": []},
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


class _ClientCase(SynchronousTestCase):
    """A hub, a Chromium and helpers to open test pages and publish."""

    #: More ``twistd sse`` options of the case.
    options: tuple[str, ...] = ()
    #: The hub's environment.
    env: dict[str, str] = {}

    def setUp(self) -> None:
        require_chromium()
        self.server = Twistd(
            "--publish-token", TOKEN, "--drain", "0.2", *self.options, env=self.env
        ).start()
        self.addCleanup(self.server.stop)
        self.base = f"http://127.0.0.1:{self.server.port}"
        self.tabs = Tabs.for_test(self)

    def open_page(self, context: int = 0, origin: str | None = None) -> int:
        """A tab on the test page of ``origin`` (the hub's by default)."""
        page = self.tabs.new_page(context)
        url = (origin or self.base) + "/sse-client-test"
        self.assertEqual(self.tabs.goto(page, url, html=PAGE), 200)
        self.tabs.wait(page, "window.sse !== undefined")
        return page

    def publish(self, channel: str, data: str) -> str:
        """Publish ``data`` on ``channel``; return its id."""
        return publish(self.base, channel, TOKEN, data=data)

    def wait_data(self, page: int, data: list[str], timeout: float = 15.0) -> list[str]:
        """Wait until tab ``page`` has at least ``len(data)`` events; return them."""
        self.tabs.wait(
            page,
            f"window.seen.data.length >= {len(data)}",
            timeout=timeout,
            show="window.seen",
        )
        received: list[str] = self.tabs.eval(page, "window.seen.data")
        return received

    def leaders(self, pages: list[int]) -> list[int]:
        """The tabs of ``pages`` whose client holds the connection."""
        return [page for page in pages if self.tabs.eval(page, "window.client.leader")]

    def wait_shared(self, pages: list[int]) -> int:
        """
        Wait until every tab's client is open and exactly one leads; return
        the leader.
        """
        for page in pages:
            self.tabs.wait(page, "window.client.state === 'open'", show="window.seen")
        wait_for(lambda: len(self.leaders(pages)) == 1, "one leader")
        return self.leaders(pages)[0]


class SharingTests(_ClientCase):
    """Tabs of one origin share one stream, and hand it over."""

    def test_five_tabs_one_stream(self) -> None:
        """Five tabs receive every event, over one stream of the server."""
        pages = [self.open_page() for _ in range(5)]
        for page in pages:
            self.tabs.eval(page, subscribe_js(["room"]))
        self.wait_shared(pages)
        sent = [str(n) for n in range(1, 6)]
        for data in sent:
            self.publish("room", data)
        for page in pages:
            self.assertEqual(self.wait_data(page, sent), sent)
        self.assertEqual(streams_open(self.base), 1)

    def handover(self, crash: bool) -> None:
        pages = [self.open_page() for _ in range(4)]
        for page in pages:
            self.tabs.eval(page, subscribe_js(["relay"]))
        leader = self.wait_shared(pages)
        sent = [str(n) for n in range(1, 4)]
        for data in sent:
            self.publish("relay", data)
        for page in pages:
            self.assertEqual(self.wait_data(page, sent), sent)

        # Published while the leader goes and another takes over: each event
        # reaches each remaining tab once, in order.
        self.tabs.close_page(leader, crash=crash)
        rest = [page for page in pages if page != leader]
        for n in range(4, 10):
            sent.append(str(n))
            self.publish("relay", str(n))
        for page in rest:
            self.assertEqual(self.wait_data(page, sent, timeout=10), sent)
        self.wait_shared(rest)
        sent.append("10")
        self.publish("relay", "10")
        for page in rest:
            self.assertEqual(self.wait_data(page, sent), sent)
            ids = self.tabs.eval(page, "window.seen.ids")
            self.assertEqual(len(set(ids)), len(sent), ids)
        wait_for(lambda: streams_open(self.base) == 1, "one stream after the handover")

    def test_leader_closes(self) -> None:
        """When the leading tab closes, another leads, and no event is lost."""
        self.handover(crash=False)

    def test_leader_crashes(self) -> None:
        """When the leading tab's renderer dies, another leads, no event lost."""
        self.handover(crash=True)

    def test_contexts_hold_their_own(self) -> None:
        """Two browser profiles share nothing: two streams, both served."""
        first = [self.open_page(context=0) for _ in range(2)]
        second = [self.open_page(context=1) for _ in range(2)]
        for page in first + second:
            self.tabs.eval(page, subscribe_js(["split"]))
        self.wait_shared(first)
        self.wait_shared(second)
        self.publish("split", "both")
        for page in first + second:
            self.assertEqual(self.wait_data(page, ["both"]), ["both"])
        self.assertEqual(streams_open(self.base), 2)


class ResumeTests(_ClientCase):
    """A client's reconnection after its stream is cut."""

    options = ("--retry", "300")

    def test_resume_exactly(self) -> None:
        """
        Cut while events are published, the client comes back with its
        cursor and gets every event once, in order.
        """
        proxy = CuttingProxy(self.server.port)
        self.addCleanup(proxy.close)
        page = self.open_page(origin=f"http://127.0.0.1:{proxy.port}")
        self.tabs.eval(page, subscribe_js(["resume"]))
        self.tabs.wait(page, "window.client.state === 'open'", show="window.seen")
        sent = [str(n) for n in range(1, 4)]
        for data in sent:
            self.publish("resume", data)
        self.wait_data(page, sent)
        cursor = self.tabs.eval(page, "window.client.cursor")

        proxy.cut(hold=True)
        self.tabs.wait(page, "window.client.state === 'connecting'", show="window.seen")
        for n in range(4, 7):
            sent.append(str(n))
            self.publish("resume", str(n))
        proxy.release()
        sent.append("7")
        self.tabs.wait(page, "window.client.state === 'open'", show="window.seen")
        self.publish("resume", "7")
        self.assertEqual(self.wait_data(page, sent), sent)
        ids = self.tabs.eval(page, "window.seen.ids")
        self.assertEqual(len(set(ids)), len(sent), ids)

        # The reconnection named the cursor the client had before the cut.
        resumed = []
        for head in proxy.requests():
            target = head.split(b" ")[1].decode("latin-1")
            if target.startswith("/subscribe?"):
                query = parse_qs(urlsplit(target).query)
                resumed += query.get("lastEventId", [])
        self.assertIn(cursor, resumed)


class AuthTests(_ClientCase):
    """A hub that verifies signed tokens, and pages holding one in memory."""

    env = {"TWISTED_SSE_JWT_SECRET": SECRET}

    def test_fetch_sends_the_header(self) -> None:
        """With the fetch transport, the Bearer token in headers subscribes."""
        page = self.open_page()
        token = mint(["private.alice"])
        options = (
            "{transport: 'fetch', headers: {Authorization: 'Bearer ' + "
            + json.dumps(token)
            + "}}"
        )
        self.tabs.eval(page, subscribe_js(["private.alice"], options))
        self.tabs.wait(page, "window.client.state === 'open'", show="window.seen")
        self.publish("private.alice", "secret")
        self.assertEqual(self.wait_data(page, ["secret"]), ["secret"])
        # The token was in memory only: the page holds no cookie.
        self.assertEqual(self.tabs.eval(page, "document.cookie"), "")

    def test_onauth_refreshes(self) -> None:
        """A 401 calls onauth; the headers it returns open the stream."""
        page = self.open_page()
        good = mint(["private.bob"])
        options = (
            "{transport: 'fetch', headers: {Authorization: 'Bearer expired'},"
            " onauth: async (status, body) => {"
            "  window.seen.auth.push([status, body]);"
            "  return {Authorization: 'Bearer ' + " + json.dumps(good) + "};"
            "}}"
        )
        self.tabs.eval(page, subscribe_js(["private.bob"], options))
        self.tabs.wait(page, "window.client.state === 'open'", show="window.seen")
        auth = self.tabs.eval(page, "window.seen.auth")
        self.assertEqual(len(auth), 1, auth)
        self.assertEqual(auth[0][0], 401)
        self.assertIn("error", auth[0][1])
        self.publish("private.bob", "after the refresh")
        self.assertEqual(
            self.wait_data(page, ["after the refresh"]), ["after the refresh"]
        )

    def test_onauth_gives_up(self) -> None:
        """Without a token, the EventSource transport ends closed via onauth."""
        page = self.open_page()
        options = (
            "{onauth: (status, body) => {"
            " window.seen.auth.push([status, body]); return false; }}"
        )
        self.tabs.eval(page, subscribe_js(["private.carol"], options))
        self.tabs.wait(page, "window.client.state === 'closed'", show="window.seen")
        auth = self.tabs.eval(page, "window.seen.auth")
        self.assertEqual([status for status, _ in auth], [401])


class DemoPageTests(_ClientCase):
    """The demo page at ``/``, in five tabs, as a visitor would open it."""

    def test_five_tabs_of_the_demo(self) -> None:
        """
        Five tabs of the demo page hold one counter stream and one channel
        stream between them, and every tab shows the count and the channel.
        """
        pages = []
        for _ in range(5):
            page = self.tabs.new_page(0)
            self.assertEqual(self.tabs.goto(page, self.base + "/"), 200)
            pages.append(page)
        for page in pages:
            self.tabs.wait(
                page,
                "Number(document.getElementById('count').textContent) >= 2",
                timeout=20,
            )
        # One counter stream and one /subscribe stream, whatever the tabs.
        wait_for(lambda: streams_open(self.base) == 2, "two streams for five tabs")
        self.publish("demo", "seen in every tab")
        for page in pages:
            self.tabs.wait(
                page,
                "[...document.querySelectorAll('#channel-log li.event .data')]"
                ".some((cell) => cell.textContent === 'seen in every tab')",
            )
        self.assertEqual(streams_open(self.base), 2)
