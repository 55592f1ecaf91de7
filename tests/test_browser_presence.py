"""
The page of docs/howto/presence.rst, ``docs/examples/presence.html``, in
Debian's headless Chromium (through ``tests/_tabs.py``) against a real
``twistd -n sse`` that verifies signed tokens: each user's page is a tab
of a browser context of its own (a profile: its own cookies), served as
the how-to serves it, by a static server on another port of the host.  The
pages show the users as they arrive and drop the one whose tab closes, and
the count they show is the one ``GET /presence/{channel}`` answers.

The page's script is the one the how-to shows, excerpt by excerpt
(:class:`HowToTests`).
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from twisted.trial.unittest import SynchronousTestCase

from ._process import Twistd
from ._tabs import Tabs
from ._tools import require_chromium

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
PAGE = EXAMPLES / "presence.html"
HOWTO = ROOT / "docs" / "howto" / "presence.rst"

#: The hub's secret, given to it in its environment.
SECRET = secrets.token_urlsafe(32)
#: The channel the pages follow.
CHANNEL = "room"
#: Seconds between the page's own asks for the count (its REFRESH_SECONDS),
#: and then some: how long a test waits for a count that no event changes.
REFRESHED = 25.0


def mint(subject: str, channels: list[str] | None = None) -> str:
    """A token of ``subject`` that may read ``channels`` (the room)."""
    claims = {
        "sub": subject,
        "exp": int(time.time() + 300),
        "sse": {"subscribe": channels if channels is not None else [CHANNEL]},
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


class _Quiet(SimpleHTTPRequestHandler):
    """docs/examples as a static site, without a log line per request."""

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


def serve_examples(case: SynchronousTestCase) -> str:
    """Serve docs/examples on a port of its own; return its origin."""
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(EXAMPLES))
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    case.addCleanup(stop)
    return f"http://127.0.0.1:{server.server_address[1]}"


#: What a tab shows: its status line, the members listed, the counts.
_SHOWN = """
({
  status: document.getElementById("status").textContent,
  members: [...document.querySelectorAll("#members li")].map((li) => li.textContent),
  online: Number(document.getElementById("online").textContent),
  count: Number(document.getElementById("count").textContent),
})
"""


@pytest.mark.slow
class PresencePageTests(SynchronousTestCase):
    """Users' pages, each in a browser context of its own, on one hub."""

    def setUp(self) -> None:
        require_chromium()
        self.origin = serve_examples(self)
        self.hub = Twistd(
            "--retry",
            "1000",
            "--drain",
            "0.2",
            "--allow-origin",
            self.origin,
            env={"TWISTED_SSE_JWT_SECRET": SECRET},
        ).start()
        self.addCleanup(self.hub.stop)
        self.base = f"http://127.0.0.1:{self.hub.port}"
        self.tabs = Tabs.for_test(self)
        self.reader = mint("reader")

    def url(self, token: str | None) -> str:
        """The page's address, with ``token`` after the ``#`` if given."""
        query = urlencode({"hub": self.base, "channel": CHANNEL})
        address = f"{self.origin}/presence.html?{query}"
        return address if token is None else f"{address}#token={token}"

    def open(self, user: str | None, context: int) -> int:
        """A tab of ``context`` on the page, with ``user``'s token if given."""
        page = self.tabs.new_page(context)
        token = mint(user) if user is not None else None
        self.assertEqual(self.tabs.goto(page, self.url(token)), 200)
        return page

    def shown(self, page: int) -> dict[str, Any]:
        """What tab ``page`` shows."""
        shown: dict[str, Any] = self.tabs.eval(page, _SHOWN)
        return shown

    def wait_members(
        self, page: int, members: list[str], timeout: float = 15.0
    ) -> None:
        """Wait until tab ``page`` is live and lists ``members``."""
        expected = json.dumps(members, separators=(",", ":"))
        self.tabs.wait(
            page,
            f"document.getElementById('status').textContent === 'Live' && "
            f"JSON.stringify([...document.querySelectorAll('#members li')]"
            f".map((li) => li.textContent)) === {json.dumps(expected)}",
            timeout=timeout,
            show=_SHOWN,
        )

    def presence(self) -> dict[str, Any]:
        """What ``GET /presence/room`` answers."""
        request = urllib.request.Request(
            f"{self.base}/presence/{CHANNEL}",
            headers={"Authorization": f"Bearer {self.reader}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.load(response)
        return answer

    def wait_count(self, pages: list[int], count: int, timeout: float = 15.0) -> None:
        """
        Wait until the hub counts ``count`` connections, and each of
        ``pages`` shows that count.
        """
        wait_for(
            lambda: self.presence()["count"] == count,
            f"GET /presence counts {count}: {self.presence()}",
        )
        for page in pages:
            self.tabs.wait(
                page,
                f"document.getElementById('count').textContent === '{count}'",
                timeout=timeout,
                show=_SHOWN,
            )

    def test_users_arrive_and_leave(self) -> None:
        """
        Each user's page lists the users as they arrive, in any page, and
        drops the one whose tab closes; the counts are the hub's.  A page
        without a token or cookie is refused, and counts nowhere; with the
        ``sse_token`` cookie it is carol's.
        """
        alice = self.open("alice", context=0)
        self.wait_members(alice, ["alice"])
        self.assertEqual(self.shown(alice)["count"], 1)
        bob = self.open("bob", context=1)
        for page in (alice, bob):
            self.wait_members(page, ["alice", "bob"])
        self.wait_count([alice, bob], 2)

        # Carol's context has no cookie yet: her page is refused.
        carol = self.open(None, context=2)
        self.tabs.wait(
            carol,
            "document.getElementById('status').textContent.startsWith('Refused')",
            show=_SHOWN,
        )
        self.assertEqual(self.presence()["count"], 2)
        # Signed in (the application sets the cookie), her page opens with it.
        self.tabs.eval(
            carol,
            f"document.cookie = 'sse_token={mint('carol')}; path=/; SameSite=Lax'",
        )
        self.assertEqual(self.tabs.goto(carol, self.url(None)), 200)
        for page in (alice, bob, carol):
            self.wait_members(page, ["alice", "bob", "carol"])
        self.wait_count([alice, bob, carol], 3)
        self.assertEqual(
            self.presence(),
            {
                "channel": CHANNEL,
                "count": 3,
                "members": [
                    {"sub": "alice", "connections": 1},
                    {"sub": "bob", "connections": 1},
                    {"sub": "carol", "connections": 1},
                ],
            },
        )

        # Carol closes her tab: a leave, on every page.
        self.tabs.close_page(carol)
        for page in (alice, bob):
            self.wait_members(page, ["alice", "bob"])
        self.wait_count([alice, bob], 2)
        self.assertEqual(self.shown(alice)["online"], 2)

    def test_another_tab_of_a_user(self) -> None:
        """
        A second tab of bob's counts one connection more, and lists no one
        more; when it closes, bob is still there (no leave), until his last
        tab closes.  The pages learn of the count by asking for it.
        """
        alice = self.open("alice", context=0)
        bob = self.open("bob", context=1)
        for page in (alice, bob):
            self.wait_members(page, ["alice", "bob"])
        again = self.open("bob", context=1)
        self.wait_members(again, ["alice", "bob"])
        self.assertEqual(
            self.presence()["members"],
            [{"sub": "bob", "connections": 2}, {"sub": "alice", "connections": 1}],
        )
        self.wait_count([alice, bob, again], 3, timeout=REFRESHED)

        self.tabs.close_page(again)
        self.wait_count([alice, bob], 2, timeout=REFRESHED)
        for page in (alice, bob):
            self.assertEqual(self.shown(page)["members"], ["alice", "bob"])

        self.tabs.close_page(bob)
        self.wait_members(alice, ["alice"])
        self.wait_count([alice], 1)


def _excerpt(name: str) -> str:
    """The block of the how-to named ``name``, as written."""
    match = re.search(
        rf"^   :name: {re.escape(name)}\n\n((?:   .*\n|\n)+)",
        HOWTO.read_text("utf-8"),
        re.MULTILINE,
    )
    assert match is not None, f"no {name} block in {HOWTO}"
    return textwrap.dedent(match.group(1)).strip("\n")


class HowToTests(SynchronousTestCase):
    """The how-to shows the page's own script."""

    def test_excerpts_are_the_page(self) -> None:
        """Each excerpt of the page in the how-to is in the page, as it is."""
        page = PAGE.read_text("utf-8")
        names = re.findall(
            r"^   :name: (presence-page-[\w-]+)$",
            HOWTO.read_text("utf-8"),
            re.MULTILINE,
        )
        self.assertGreaterEqual(len(names), 2)
        for name in names:
            self.assertIn(textwrap.indent(_excerpt(name), "  "), page, name)
