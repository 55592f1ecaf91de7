"""
Cookie authorisation across origins in a real browser: Debian's headless
Chromium (through ``tests/_browser.py``), a ``twistd -n sse`` child that
verifies signed tokens, and an application on another port of the same
host that signs its users in and sets the ``sse_token`` cookie.

Cookies belong to a host, not to a port, so the application's cookie goes
with the page's requests to the hub, a different origin of the same site
(as ``app.example.com`` and ``hub.example.com`` are).  The application's
page runs the script of docs/howto/per-user-channels.rst as it is written
there.
"""

from __future__ import annotations

import json
import re
import secrets
import textwrap
import threading
import time
from collections.abc import Sequence
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from twisted.trial.unittest import SynchronousTestCase

from ._browser import Browser
from ._process import Twistd
from ._publish import publish
from ._tools import require_chromium

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "howto" / "per-user-channels.rst"

#: The hub's and the application's shared secret.
SECRET = secrets.token_urlsafe(32)
#: Where the documented page script finds the hub.
DOCUMENTED_HUB = "https://hub.example.com"


def mint(
    subject: str,
    subscribe: Sequence[str] = (),
    publish: Sequence[str] = (),
    ttl: float = 60.0,
) -> str:
    """A token signed with :data:`SECRET`, expiring ``ttl`` seconds from now."""
    claims = {
        "sub": subject,
        "exp": int(time.time() + ttl),
        "sse": {"subscribe": list(subscribe), "publish": list(publish)},
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


def page_script() -> str:
    """The browser script that the how-to shows (its ``per-user-channels-page``)."""
    match = re.search(
        r"^   :name: per-user-channels-page\n\n((?:   .*\n|\n)+)",
        PAGE.read_text("utf-8"),
        re.MULTILINE,
    )
    assert match is not None, f"no per-user-channels-page block in {PAGE}"
    return textwrap.dedent(match.group(1))


#: Before the documented script: what the page shows goes to
#: ``window.seen``, and every EventSource the page makes is kept in
#: ``window.sources`` with the readyState at each of its errors.
_RECORDER = """
window.seen = { messages: [], opens: 0, errors: [] };
window.sources = [];
window.showMessage = (message) => { window.seen.messages.push(message); };
window.EventSource = class extends window.EventSource {
  constructor(url, init) {
    super(url, init);
    window.sources.push(this);
    this.addEventListener("open", () => { window.seen.opens += 1; });
    this.addEventListener("error", () => { window.seen.errors.push(this.readyState); });
  }
};
"""


class _AppServer(ThreadingHTTPServer):
    """The application: its sessions, the hub its page uses, what it was asked."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _App)
        self.hub = ""
        #: Seconds the sse_token cookies it sets last.
        self.ttl = 60.0
        #: Session id -> user.
        self.sessions: dict[str, str] = {}
        #: (method, path, names of the cookies it came with), in order.
        self.requests: list[tuple[str, str, frozenset[str]]] = []
        self.lock = threading.Lock()

    @property
    def origin(self) -> str:
        """Its origin, as a page of it has it."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def asked(self, method: str, path: str) -> list[frozenset[str]]:
        """The cookie names of each request for ``method`` ``path``."""
        with self.lock:
            return [names for m, p, names in self.requests if (m, p) == (method, path)]


class _App(BaseHTTPRequestHandler):
    """
    ``GET /login?user=alice`` signs in (a session cookie and an
    ``sse_token``) and goes to ``/``; ``GET /`` is the page, for the user
    of ``?as=`` or of the session; ``POST /sse-token`` sets a fresh
    ``sse_token`` for the session's user.
    """

    server: _AppServer

    def cookies(self) -> dict[str, str]:
        jar = SimpleCookie(self.headers.get("Cookie", ""))
        return {name: morsel.value for name, morsel in jar.items()}

    def record(self) -> tuple[str, dict[str, list[str]]]:
        url = urlsplit(self.path)
        with self.server.lock:
            self.server.requests.append(
                (self.command, url.path, frozenset(self.cookies()))
            )
        return url.path, parse_qs(url.query)

    def token_cookie(self, user: str) -> str:
        token = mint(user, subscribe=[f"user.{user}"], ttl=self.server.ttl)
        return f"sse_token={token}; Path=/; SameSite=Lax; HttpOnly"

    def do_GET(self) -> None:
        path, query = self.record()
        if path == "/login":
            user = query["user"][0]
            session = secrets.token_urlsafe(16)
            with self.server.lock:
                self.server.sessions[session] = user
            self.send_response(303)
            self.send_header("Location", "/")
            self.send_header(
                "Set-Cookie", f"session={session}; Path=/; SameSite=Lax; HttpOnly"
            )
            self.send_header("Set-Cookie", self.token_cookie(user))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/":
            user = query.get("as", [self.user() or "nobody"])[0]
            self.answer(200, self.page(user), "text/html; charset=utf-8")
        else:
            self.answer(404, b"not here", "text/plain")

    def do_POST(self) -> None:
        path, _ = self.record()
        user = self.user()
        if path != "/sse-token":
            self.answer(404, b"not here", "text/plain")
        elif user is None:
            self.answer(401, b"not signed in", "text/plain")
        else:
            self.send_response(204)
            self.send_header("Set-Cookie", self.token_cookie(user))
            self.end_headers()

    def user(self) -> str | None:
        with self.server.lock:
            return self.server.sessions.get(self.cookies().get("session", ""))

    def page(self, user: str) -> bytes:
        script = page_script().replace(DOCUMENTED_HUB, self.server.hub)
        return (
            '<!doctype html><meta charset="utf-8"><title>the application</title>'
            f'<body data-user="{user}">'
            f"<script>{_RECORDER}</script><script>{script}</script>"
        ).encode()

    def answer(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


def serve_app(case: SynchronousTestCase) -> _AppServer:
    """An application on a port of its own, stopped when ``case`` ends."""
    server = _AppServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    case.addCleanup(stop)
    return server


def start_hub(case: SynchronousTestCase, *options: str) -> Twistd:
    """
    ``twistd -n sse`` verifying tokens signed with :data:`SECRET`, given
    to it in its environment; stopped when ``case`` ends.
    """
    hub = Twistd(
        "--retry",
        "1000",
        "--drain",
        "0.2",
        *options,
        env={"TWISTED_SSE_JWT_SECRET": SECRET},
    ).start()
    case.addCleanup(hub.stop)
    return hub


#: What the page's fetch of a hub URL, with its cookies, was answered
#: (its body left unread: a stream's would never end).
_STATUS = """
(async () => {
  const controller = new AbortController();
  const response = await fetch(%s, {
    credentials: "include",
    signal: controller.signal,
  });
  controller.abort();
  return response.status;
})()
"""


class CookieAcrossOriginsTests(SynchronousTestCase):
    """
    A page of the application at one port reads a user's channel from the
    hub at another, with the cookie the application set.
    """

    def setUp(self) -> None:
        require_chromium()
        self.app = serve_app(self)
        self.hub = start_hub(
            self, "--public", "news.*", "--allow-origin", self.app.origin
        )
        self.base = f"http://127.0.0.1:{self.hub.port}"
        self.app.hub = self.base
        self.backend = mint("backend", publish=["user.*", "news.*"])
        self.browser = Browser.for_test(self)

    def sign_in(self, user: str = "alice") -> None:
        """Sign in on the application's page; wait for the page's stream."""
        self.assertEqual(self.browser.goto(f"{self.app.origin}/login?user={user}"), 200)
        self.browser.wait("window.seen.opens >= 1", show="window.seen")

    def status(self, url: str) -> int:
        """The status of the page's credentialed fetch of ``url``."""
        status: int = self.browser.eval(_STATUS % json.dumps(url))
        return status

    def messages(self) -> list[list[str]]:
        """The channel and data of each message the page showed."""
        seen = self.browser.eval("window.seen.messages")
        return [[message["channel"], message["data"]] for message in seen]

    def assert_nothing_read(self) -> None:
        """The page's EventSource failed for good without reading anything."""
        self.browser.wait(
            "window.sources[0].readyState === EventSource.CLOSED", show="window.seen"
        )
        self.assertEqual(
            self.browser.eval("window.seen"),
            {"messages": [], "opens": 0, "errors": [2]},
        )

    def assert_no_secret_logged(self) -> None:
        """The hub's output holds neither the secret nor a token."""
        output = self.hub.output.decode("utf-8", "replace")
        self.assertNotIn(SECRET, output)
        self.assertNotIn("eyJ", output)

    def test_subscribes_with_the_cookie(self) -> None:
        """
        Signed in, the page reads its user's channel and the public news
        from the hub's origin; the cookie went to the hub with the stream.
        """
        self.sign_in()
        publish(self.base, "user.alice", self.backend, data="for alice")
        self.browser.wait("window.seen.messages.length >= 1", show="window.seen")
        publish(self.base, "news.eu", self.backend, data="for everyone")
        self.browser.wait("window.seen.messages.length >= 2", show="window.seen")
        self.assertEqual(
            self.messages(), [["user.alice", "for alice"], ["news.eu", "for everyone"]]
        )
        self.assertEqual(self.browser.eval("window.seen.errors"), [])
        # The application's own requests carried both of its cookies.
        self.assertEqual(
            self.app.asked("GET", "/"), [frozenset({"session", "sse_token"})]
        )
        self.assert_no_secret_logged()

    def test_refused_without_the_cookie(self) -> None:
        """Not signed in, the page's stream is refused (401) and reads nothing."""
        self.assertEqual(self.browser.goto(f"{self.app.origin}/?as=alice"), 200)
        self.assert_nothing_read()
        self.assertEqual(self.app.asked("GET", "/"), [frozenset()])
        # The refusal reaches the page: the hub allows its origin.
        self.assertEqual(self.status(f"{self.base}/subscribe?channel=user.alice"), 401)
        # A refused stream is not retried: the page asked for no new cookie.
        self.assertEqual(self.app.asked("POST", "/sse-token"), [])

    def test_another_origin_reads_nothing(self) -> None:
        """
        A page of an origin the hub does not allow reads nothing, though
        the browser sends it the same cookie: the browser withholds the
        stream, which has no Access-Control-Allow-Origin for that page.
        """
        self.sign_in()
        other = serve_app(self)
        other.hub = self.base
        self.assertEqual(self.browser.goto(f"{other.origin}/?as=alice"), 200)
        # The cookie is the host's, whatever the port: the other origin
        # got it too, and so did the hub.
        self.assertEqual(other.asked("GET", "/"), [frozenset({"session", "sse_token"})])
        self.assert_nothing_read()
        self.assertTrue(
            any("CORS" in line for line in self.browser.console()),
            self.browser.console(),
        )
        publish(self.base, "user.alice", self.backend, data="not for that page")
        self.assertEqual(self.browser.eval("window.seen.messages"), [])

    def test_another_user_channel_is_refused(self) -> None:
        """
        The cookie's token covers user.alice, not user.bob: a page asking
        for user.bob is refused (403) and gets none of bob's events, while
        user.alice is read.
        """
        self.sign_in()
        self.assertEqual(self.status(f"{self.base}/subscribe?channel=user.bob"), 403)
        self.assertEqual(self.status(f"{self.base}/subscribe?channel=user.alice"), 200)
        self.browser.goto(f"{self.app.origin}/?as=bob")
        self.assertEqual(self.app.asked("GET", "/")[-1], {"session", "sse_token"})
        self.assert_nothing_read()
        publish(self.base, "user.bob", self.backend, data="for bob")
        # Back on alice's page, her channel is read.
        self.browser.goto(f"{self.app.origin}/")
        self.browser.wait("window.seen.opens === 1", show="window.seen")
        publish(self.base, "user.alice", self.backend, data="for alice")
        self.browser.wait("window.seen.messages.length >= 1", show="window.seen")
        self.assertEqual(self.messages(), [["user.alice", "for alice"]])

    def test_page_renews_an_expired_cookie(self) -> None:
        """
        With tokens of a few seconds, the stream ends at the token's exp;
        the page asks for a fresh cookie, and its EventSource reconnects
        with it and reads what is published after.
        """
        self.app.ttl = 3.0
        self.sign_in()
        publish(self.base, "user.alice", self.backend, data="before")
        self.browser.wait("window.seen.messages.length >= 1", show="window.seen")
        # The hub ends the stream at exp; the page renews its cookie and
        # the same EventSource opens again.
        self.browser.wait("window.seen.opens >= 2", show="window.seen")
        self.assertGreaterEqual(len(self.app.asked("POST", "/sse-token")), 1)
        publish(self.base, "user.alice", self.backend, data="after")
        self.browser.wait("window.seen.messages.length >= 2", show="window.seen")
        self.assertEqual(
            self.messages(), [["user.alice", "before"], ["user.alice", "after"]]
        )
        seen: dict[str, Any] = self.browser.eval("window.seen")
        # Each error was the end of a stream, followed by a reconnection.
        self.assertEqual(set(seen["errors"]), {0})
        self.assertEqual(self.browser.eval("window.sources.length"), 1)
        self.assertIn(b"its credentials expired", self.hub.output)
        self.assert_no_secret_logged()
