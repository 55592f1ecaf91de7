"""
Tests for C{twisted-sse presence} (L{twisted_sse.__main__.presence} and
L{twisted_sse._presence_cli}): its options and usage errors, the URL it
asks, what it prints of answers and refusals, run in memory on a fake agent
and a L{Clock}; then as a user runs it, a real process against a small
twisted.web server in another (no reactor runs in the test process: the
same under trial and pytest), and against a real C{twistd sse}.

Also C{twisted-sse listen} printing the presence events of a hub's stream
(C{presence}, C{join}, C{leave}) as it prints any other.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import jwt
import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from tests._client_fakes import FakeAgent, FakeRequest, FakeResponse
from tests._http import SocketClient, http_request
from tests._process import start_healthy
from tests.test_cli import BAD_URLS, Listener, Output
from twisted_sse.__main__ import build_parser, main, presence
from twisted_sse._presence_cli import (
    MAX_ANSWER_BYTES,
    Answer,
    ask,
    presence_url,
    printable,
    read_presence,
    render_table,
)

HUB = "http://hub.example"
JSON = "application/json"

#: The hub's answer for three connections of two identities on "news".
NEWS: dict[str, Any] = {
    "channel": "news",
    "count": 3,
    "members": [{"sub": "alice", "connections": 2}, {"sub": "bob", "connections": 1}],
}
NEWS_TABLE = "news: 3 connections, 2 members\n  alice  2\n  bob    1\n"


def usage(*argv: str) -> tuple[int, str]:
    """Run C{main(argv)} where it stops before the reactor; return code, stderr."""
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


def body(document: object) -> bytes:
    """A JSON body."""
    return json.dumps(document).encode("utf-8")


class Asker:
    """C{presence} on a fake agent and a clock."""

    def __init__(self, *argv: str) -> None:
        self.options = build_parser().parse_args(["presence", *argv])
        self.clock = Clock()
        self.agent = FakeAgent()
        self.out = Output()
        self.err = Output()
        self.done: Deferred[int] = Deferred.fromCoroutine(
            presence(self.clock, self.options, self.out, self.err, self.agent)
        )

    @property
    def request(self) -> FakeRequest:
        """The request (there is only ever one)."""
        [request] = self.agent.requests
        return request

    def answer(
        self,
        code: int = 200,
        data: bytes = body(NEWS),
        content_type: str | None = JSON,
        headers: dict[str, str] | None = None,
    ) -> FakeResponse:
        """Answer the request with ``data``, the whole body."""
        response = self.request.respond(code, content_type, headers)
        response.send(data)
        response.end()
        return response

    def result(self, case: SynchronousTestCase) -> int:
        """The exit status, which must be there, and no timer left."""
        code = int(case.successResultOf(self.done))
        case.assertEqual(self.clock.getDelayedCalls(), [])
        return code

    def error(self, case: SynchronousTestCase) -> str:
        """The one line on stderr, after an exit 1 with nothing on stdout."""
        case.assertEqual(self.result(case), 1)
        case.assertEqual(self.out.getvalue(), "")
        [line] = self.err.lines()
        return line


class OptionTests(SynchronousTestCase):
    """The options, and the usage errors said before anything connects."""

    def test_defaults(self) -> None:
        """A table, the hub's limit, no token, 10 s for the whole answer."""
        options = build_parser().parse_args(["presence", HUB, "news"])
        self.assertEqual(
            (
                options.url,
                options.channel,
                options.json,
                options.limit,
                options.token,
                options.timeout,
            ),
            (HUB, "news", False, None, None, 10.0),
        )

    def test_values(self) -> None:
        """Each option is taken."""
        options = build_parser().parse_args(
            [
                "presence",
                HUB,
                "news",
                "--json",
                "--limit",
                "10000",
                "--token",
                "t.k.n",
                "--timeout",
                "2.5",
            ]
        )
        self.assertEqual(
            (options.json, options.limit, options.token, options.timeout),
            (True, 10000, "t.k.n", 2.5),
        )

    def test_help(self) -> None:
        """--help exits 0."""
        self.assertEqual(usage("presence", "--help")[0], 0)

    def test_missing(self) -> None:
        """The URL and the channel are both needed."""
        self.assertEqual(usage("presence")[0], 2)
        self.assertEqual(usage("presence", HUB)[0], 2)

    def test_bad_numbers(self) -> None:
        """--limit is 0 to 10000, --timeout a positive number of seconds."""
        for argv in [
            ["--limit", "-1"],
            ["--limit", "10001"],
            ["--limit", "1.5"],
            ["--limit", "x"],
            ["--timeout", "0"],
            ["--timeout", "-1"],
            ["--timeout", "nan"],
            ["--timeout", "inf"],
        ]:
            code, err = usage("presence", HUB, "news", *argv)
            self.assertEqual(code, 2, argv)
            self.assertIn(argv[0], err)

    def test_bad_channel(self) -> None:
        """
        A channel that is not a channel name is one line naming it, exit 2;
        a pattern is told apart.
        """
        for name in ["a b", "", "_x", "x" * 129, "news/eu", "é"]:
            code, err = usage("presence", HUB, name)
            self.assertEqual(code, 2, name)
            self.assertEqual(
                err.splitlines(),
                [
                    f"twisted-sse: bad CHANNEL {name!r}: not a channel name: 1 to "
                    "128 ASCII letters, digits and '_.:@-', starting with a "
                    "letter or digit"
                ],
            )
        for pattern in ["news.*", "*"]:
            code, err = usage("presence", HUB, pattern)
            self.assertEqual(code, 2, pattern)
            self.assertEqual(
                err,
                f"twisted-sse: bad CHANNEL {pattern!r}: presence is of one "
                "channel, not a pattern\n",
            )

    def test_not_a_base_url(self) -> None:
        """
        A URL that already names a presence, a channel or /subscribe is a
        usage error naming the base URL to give instead.
        """
        for url, what, base in [
            ("http://h:8080/presence/news", "a presence URL", "http://h:8080"),
            ("http://h:8080/presence/", "a presence URL", "http://h:8080"),
            ("http://h/hub/presence/news?limit=3", "a presence URL", "http://h/hub"),
            ("http://h/channels/news", "a channel's URL", "http://h"),
            ("http://h/channels", "a channel's URL", "http://h"),
            ("http://h/channels/presence", "a channel's URL", "http://h"),
            (
                "https://h/hub/subscribe?channel=a",
                "the URL of /subscribe",
                "https://h/hub",
            ),
        ]:
            code, err = usage("presence", url, "news")
            self.assertEqual(code, 2, url)
            self.assertEqual(
                err,
                f"twisted-sse: bad URL {url!r}: it is {what}, not a hub's base "
                f"URL: give the base URL ({base}) and the channel apart\n",
            )

    def test_bad_url(self) -> None:
        """Every URL the other commands refuse, presence refuses alike."""
        for url, words in BAD_URLS.items():
            code, err = usage("presence", url, "news")
            self.assertEqual(code, 2, url)
            lines = err.splitlines()
            self.assertEqual(len(lines), 1, err)
            self.assertTrue(lines[0].startswith(f"twisted-sse: bad URL {url!r}: "))
            self.assertIn(words, lines[0])

    def test_bad_token(self) -> None:
        """An empty token, or one with a control character, is refused."""
        for token in ["", " ", "a\nb", "a\rb", "a\0b", "a\x7fb"]:
            code, err = usage("presence", HUB, "news", "--token", token)
            self.assertEqual(code, 2, repr(token))
            self.assertEqual(
                err,
                "twisted-sse: bad --token: it is empty, or holds a control character\n",
            )

    def test_usage_error_asks_nothing(self) -> None:
        """Run directly, a usage error exits 2 before any request."""
        for argv in [["ftp://h/", "news"], [HUB, "news.*"], [f"{HUB}/channels/a", "a"]]:
            asker = Asker(*argv)
            self.assertEqual(asker.result(self), 2)
            self.assertEqual(len(asker.err.lines()), 1)
            self.assertEqual(asker.agent.requests, [])


class URLTests(SynchronousTestCase):
    """L{presence_url}: the hub's base URL and a channel."""

    def test_urls(self) -> None:
        """
        The path gets /presence/CHANNEL, with or without a trailing slash;
        a prefix and the query's parameters are kept, the fragment dropped;
        the limit is a parameter after them.
        """
        for base, channel, limit, url in [
            ("http://h:8080", "news", None, "http://h:8080/presence/news"),
            ("http://h:8080/", "news", None, "http://h:8080/presence/news"),
            ("http://h:8080//", "news", 5, "http://h:8080/presence/news?limit=5"),
            ("https://h/hub", "a.b", None, "https://h/hub/presence/a.b"),
            ("https://h/hub/", "a", 1, "https://h/hub/presence/a?limit=1"),
            (
                "http://h/?access_token=t&",
                "eu@orders:x_1-2",
                10000,
                "http://h/presence/eu@orders:x_1-2?access_token=t&limit=10000",
            ),
            ("http://[::1]:9/#top", "n", None, "http://[::1]:9/presence/n"),
        ]:
            self.assertEqual(presence_url(base, channel, limit), url)

    def test_refused(self) -> None:
        """What the command refuses, the function raises ValueError for."""
        for base, channel, limit in [
            ("ftp://h/", "news", None),
            ("http://h/presence/news", "news", None),
            ("http://h/", "news.*", None),
            ("http://h/", "a b", None),
            ("http://h/", "news", -1),
            ("http://h/", "news", 10001),
        ]:
            with self.assertRaises(ValueError):
                presence_url(base, channel, limit)


class PresenceTests(SynchronousTestCase):
    """What the command asks, prints, and exits with."""

    def test_table(self) -> None:
        """
        GET URL/presence/CHANNEL asking for JSON, without credentials; the
        answer printed as a table; exit 0, nothing on stderr, no timer
        left.
        """
        asker = Asker(HUB, "news")
        request = asker.request
        self.assertEqual(
            (request.method, request.uri), (b"GET", b"http://hub.example/presence/news")
        )
        self.assertEqual(request.header("Accept"), JSON)
        self.assertIsNone(request.header("Authorization"))
        asker.answer()
        self.assertEqual(asker.result(self), 0)
        self.assertEqual(asker.out.getvalue(), NEWS_TABLE)
        self.assertGreaterEqual(asker.out.flushes, 1)
        self.assertEqual(asker.err.getvalue(), "")

    def test_options_applied(self) -> None:
        """--limit is a parameter of the query, --token a Bearer header."""
        asker = Asker(f"{HUB}/hub/?x=1", "news", "--limit", "7", "--token", "abc.def")
        self.assertEqual(
            asker.request.uri, b"http://hub.example/hub/presence/news?x=1&limit=7"
        )
        self.assertEqual(asker.request.header("Authorization"), "Bearer abc.def")
        asker.answer()
        self.assertEqual(asker.result(self), 0)

    def test_json(self) -> None:
        """--json prints the hub's object on one line, members it adds kept."""
        document = {**NEWS, "truncated": True, "more": [1, "é"]}
        asker = Asker(HUB, "news", "--json")
        asker.answer(data=body(document))
        self.assertEqual(asker.result(self), 0)
        [line] = asker.out.lines()
        self.assertEqual(json.loads(line), document)
        self.assertEqual(asker.out.getvalue(), json.dumps(document) + "\n")

    def test_truncated(self) -> None:
        """A truncated answer says that more members exist than are listed."""
        asker = Asker(HUB, "news", "--limit", "2")
        asker.answer(data=body({**NEWS, "count": 9, "truncated": True}))
        self.assertEqual(asker.result(self), 0)
        self.assertEqual(
            asker.out.lines(),
            [
                "news: 9 connections, more than 2 members",
                "  alice  2",
                "  bob    1",
                "  ... and more members, not listed (see --limit)",
            ],
        )

    def test_count_only(self) -> None:
        """--limit 0: the count, and that members are not listed."""
        asker = Asker(HUB, "news", "--limit", "0")
        asker.answer(
            data=body({"channel": "news", "count": 3, "members": [], "truncated": True})
        )
        self.assertEqual(asker.result(self), 0)
        self.assertEqual(
            asker.out.getvalue(), "news: 3 connections, members not listed\n"
        )

    def test_nobody(self) -> None:
        """Nobody there: the first line alone; singulars for one."""
        asker = Asker(HUB, "news")
        asker.answer(data=body({"channel": "news", "count": 0, "members": []}))
        self.assertEqual(asker.result(self), 0)
        self.assertEqual(asker.out.getvalue(), "news: 0 connections, 0 members\n")
        one = {"channel": "news", "count": 1, "members": [NEWS["members"][1]]}
        self.assertEqual(render_table(one), "news: 1 connection, 1 member\n  bob  1\n")

    def test_refusals(self) -> None:
        """
        Each refusal is one line on stderr, the status and the hub's reason,
        and exit 1; a 503 says how long to wait, a 401 without a token that
        none was given.
        """
        for code, reason, headers, argv, line in [
            (400, "invalid channel name", {}, [], "400 invalid channel name"),
            (
                401,
                "a token is needed",
                {"WWW-Authenticate": 'Bearer realm="x"'},
                [],
                "401 a token is needed (no --token given)",
            ),
            (
                401,
                "the token is not valid",
                {},
                ["--token", "t"],
                "401 the token is not valid",
            ),
            (403, "not allowed", {}, ["--token", "t"], "403 not allowed"),
            (404, "presence is turned off", {}, [], "404 presence is turned off"),
            (
                503,
                "broker unavailable: gone",
                {"Retry-After": "5"},
                [],
                "503 broker unavailable: gone (retry after 5 s)",
            ),
            (
                503,
                "broker unavailable",
                {"Retry-After": "soon"},
                [],
                "503 broker unavailable",
            ),
            (500, "internal error", {}, [], "500 internal error"),
        ]:
            asker = Asker(HUB, "news", *argv)
            asker.answer(code, body({"error": reason}), headers=headers)
            self.assertEqual(asker.error(self), f"twisted-sse presence: {line}", code)

    def test_refusal_without_json(self) -> None:
        """
        A refusal without a JSON reason is said with its status line's; a
        404 then asks whether URL is a hub's; a redirect says where to.
        """
        asker = Asker(HUB, "news")
        asker.answer(404, b"<html>Not here</html>", "text/html")
        self.assertEqual(
            asker.error(self),
            "twisted-sse presence: 404 Whatever (is URL the base URL of a hub?)",
        )
        asker = Asker(HUB, "news")
        asker.answer(502, b'{"error": 42}')
        self.assertEqual(asker.error(self), "twisted-sse presence: 502 Whatever")
        asker = Asker(HUB, "news")
        asker.answer(301, b"", None, {"Location": "https://hub.example/presence/news"})
        self.assertEqual(
            asker.error(self),
            "twisted-sse presence: 301 Whatever (to https://hub.example/presence/news)",
        )
        asker = Asker(HUB, "news")
        asker.answer(204, b"", None)
        self.assertEqual(asker.error(self), "twisted-sse presence: 204 Whatever")

    def test_reason_made_printable(self) -> None:
        """
        The hub's reason cannot move the terminal: control characters are
        escaped, and a long one is cut.
        """
        asker = Asker(HUB, "news")
        asker.answer(403, body({"error": "no\x1b[2J\nway\r"}))
        self.assertEqual(
            asker.error(self), "twisted-sse presence: 403 no\\x1b[2J\\nway"
        )
        asker = Asker(HUB, "news")
        asker.answer(403, body({"error": "x" * 1000}))
        line = asker.error(self)
        self.assertEqual(line, "twisted-sse presence: 403 " + "x" * 197 + "...")

    def test_members_made_printable(self) -> None:
        """Identities and the channel are printed escaped in the table."""
        document = {
            "channel": "news",
            "count": 2,
            "members": [
                {"sub": "a\x1b]0;owned\x07", "connections": 1},
                {"sub": "b\nc", "connections": 1},
            ],
        }
        self.assertEqual(
            render_table(document).splitlines(),
            [
                "news: 2 connections, 2 members",
                "  a\\x1b]0;owned\\x07  1",
                "  b\\nc" + " " * 15 + "1",
            ],
        )
        self.assertEqual(printable("é ok\t"), "é ok\\t")

    def test_not_presence(self) -> None:
        """A 200 that is not presence JSON is said, exit 1, nothing printed."""
        for content_type, data, words in [
            ("text/html", b"<html></html>", "the answer is text/html, not JSON"),
            (None, body(NEWS), "the answer is no Content-Type, not JSON"),
            (JSON, b"{nope", "the answer is not valid JSON"),
            (JSON, b"[1]", "the answer is not presence"),
            (JSON, body({**NEWS, "count": "3"}), "the answer is not presence"),
            (JSON, body({**NEWS, "count": True}), "the answer is not presence"),
            (JSON, body({**NEWS, "count": -1}), "the answer is not presence"),
            (JSON, body({**NEWS, "channel": None}), "the answer is not presence"),
            (JSON, body({**NEWS, "members": {}}), "the answer is not presence"),
            (
                JSON,
                body({**NEWS, "members": [{"sub": 1}]}),
                "the answer is not presence",
            ),
            (
                JSON,
                body({**NEWS, "members": [{"sub": "a", "connections": 1.5}]}),
                "the answer is not presence",
            ),
            (JSON, body({**NEWS, "truncated": "yes"}), "the answer is not presence"),
        ]:
            asker = Asker(HUB, "news")
            asker.answer(data=data, content_type=content_type)
            line = asker.error(self)
            self.assertTrue(line.startswith("twisted-sse presence: "), line)
            self.assertIn(words, line)

    def test_json_with_parameters(self) -> None:
        """application/json with a charset, in any case, is JSON."""
        asker = Asker(HUB, "news")
        asker.answer(content_type="Application/JSON; charset=utf-8")
        self.assertEqual(asker.result(self), 0)
        self.assertEqual(asker.out.getvalue(), NEWS_TABLE)

    def test_too_long(self) -> None:
        """
        A body longer than 1 MiB is refused as it passes the cap: the
        connection is dropped, exit 1.
        """
        asker = Asker(HUB, "news")
        response = asker.request.respond(200, JSON)
        piece = b" " * 65536
        for _ in range(MAX_ANSWER_BYTES // len(piece)):
            response.send(piece)
        self.assertNoResult(asker.done)
        self.assertFalse(response.transport.disconnecting)
        response.send(b"{")
        self.assertTrue(response.transport.disconnecting)
        self.assertEqual(
            asker.error(self),
            "twisted-sse presence: the answer is longer than 1048576 bytes",
        )

    def test_too_long_announced(self) -> None:
        """A Content-Length over 1 MiB is refused unread."""
        asker = Asker(HUB, "news")
        response = FakeResponse(200, Headers({b"Content-Type": [JSON.encode()]}))
        response.length = MAX_ANSWER_BYTES + 1  # type: ignore[assignment]
        asker.request.deferred.callback(response)
        self.assertTrue(response.stopped)
        self.assertEqual(
            asker.error(self),
            "twisted-sse presence: the answer is longer than 1048576 bytes",
        )

    def test_refusal_too_long(self) -> None:
        """A refusal with a body over the cap is said by its status line."""
        asker = Asker(HUB, "news")
        asker.answer(503, b'{"error": "' + b"x" * MAX_ANSWER_BYTES + b'"}')
        self.assertEqual(asker.error(self), "twisted-sse presence: 503 Whatever")

    def test_connection_refused(self) -> None:
        """A connection that fails is one line naming the hub, exit 1."""
        asker = Asker(HUB, "news")
        asker.request.fail()
        line = asker.error(self)
        self.assertTrue(
            line.startswith("twisted-sse presence: cannot reach http://hub.example: "),
            line,
        )
        self.assertIn("refused", line)

    def test_no_answer(self) -> None:
        """
        No answer within --timeout: the request is cancelled, one line says
        so, exit 1.
        """
        asker = Asker(HUB, "news")
        asker.clock.advance(9.9)
        self.assertNoResult(asker.done)
        asker.clock.advance(0.1)
        self.assertTrue(asker.request.cancelled)
        self.assertEqual(
            asker.error(self),
            "twisted-sse presence: no answer from http://hub.example within 10 s",
        )

    def test_body_too_slow(self) -> None:
        """
        --timeout is for the whole answer: a body still coming when it is up
        is dropped.
        """
        asker = Asker(HUB, "news", "--timeout", "2.5")
        response = asker.request.respond(200, JSON)
        response.send(b'{"channel": ')
        asker.clock.advance(2.5)
        self.assertTrue(response.transport.disconnecting)
        self.assertEqual(
            asker.error(self),
            "twisted-sse presence: no answer from http://hub.example within 2.5 s",
        )

    def test_cancelled(self) -> None:
        """
        Cancelled (as a signal does), it drops the request and ends without
        a word or a timer left.
        """
        asker = Asker(HUB, "news")
        asker.done.cancel()
        self.failureResultOf(asker.done, CancelledError)
        self.assertTrue(asker.request.cancelled)
        self.assertEqual(asker.err.getvalue(), "")
        self.assertEqual(asker.out.getvalue(), "")
        self.assertEqual(asker.clock.getDelayedCalls(), [])

    def test_cancelled_while_reading(self) -> None:
        """Cancelled in the middle of the body, it drops the connection quietly."""
        asker = Asker(HUB, "news")
        response = asker.request.respond(200, JSON)
        response.send(b"{")
        asker.done.cancel()
        self.failureResultOf(asker.done, CancelledError)
        self.assertTrue(response.transport.disconnecting)
        self.assertEqual(asker.err.getvalue(), "")
        self.assertEqual(asker.clock.getDelayedCalls(), [])

    def test_broken_pipe(self) -> None:
        """A closed stdout ends it quietly with 0."""
        asker = Asker(HUB, "news")
        asker.out.broken = True
        asker.answer()
        self.assertEqual(asker.result(self), 0)
        self.assertEqual(asker.err.getvalue(), "")


class AskTests(SynchronousTestCase):
    """L{ask}: the request and the bounded read."""

    def asked(self, size: int) -> Answer:
        agent = FakeAgent()
        done = Deferred.fromCoroutine(ask(agent, f"{HUB}/presence/é x", "tok"))
        [request] = agent.requests
        self.assertEqual(request.uri, b"http://hub.example/presence/%C3%A9%20x")
        self.assertEqual(request.header("Authorization"), "Bearer tok")
        response = request.respond(200, JSON)
        response.send(b"x" * size)
        if not response.transport.disconnecting:
            response.end()
        return self.successResultOf(done)

    def test_at_the_cap(self) -> None:
        """A body of exactly the cap is read whole."""
        self.assertEqual(self.asked(MAX_ANSWER_BYTES).body, b"x" * MAX_ANSWER_BYTES)

    def test_past_the_cap(self) -> None:
        """A byte more and it is not kept."""
        answer = self.asked(MAX_ANSWER_BYTES + 1)
        self.assertEqual((answer.code, answer.body), (200, None))
        with self.assertRaises(ValueError):
            read_presence(answer)


class ListenPresenceEventTests(SynchronousTestCase):
    """C{listen} prints presence events as it prints any other."""

    def test_join_leave_presence(self) -> None:
        """
        A hub stream's presence, join and leave events come out as JSON
        lines with their type; having no id, they keep the last one.
        """
        listener = Listener(f"{HUB}/channels/news?presence=1")
        self.assertEqual(
            listener.request.uri, b"http://hub.example/channels/news?presence=1"
        )
        response = listener.request.respond()
        snapshot = json.dumps(NEWS, separators=(",", ":"))
        response.send(
            b"retry: 1000\nid: 7-0\n\n"
            + f"event: presence\ndata: {snapshot}\n\n".encode()
            + b'event: join\ndata: {"channel": "news", "sub": "carol"}\n\n'
            + b"id: 8-0\ndata: hello\n\n"
            + b'event: leave\ndata: {"channel": "news", "sub": "bob"}\n\n'
        )
        origin = "http://hub.example"
        self.assertEqual(
            listener.events(),
            [
                {
                    "type": "presence",
                    "data": snapshot,
                    "lastEventId": "7-0",
                    "origin": origin,
                },
                {
                    "type": "join",
                    "data": '{"channel": "news", "sub": "carol"}',
                    "lastEventId": "7-0",
                    "origin": origin,
                },
                {
                    "type": "message",
                    "data": "hello",
                    "lastEventId": "8-0",
                    "origin": origin,
                },
                {
                    "type": "leave",
                    "data": '{"channel": "news", "sub": "bob"}',
                    "lastEventId": "8-0",
                    "origin": origin,
                },
            ],
        )
        self.assertEqual(listener.err.getvalue(), "")

    def test_subscribe_keeps_presence(self) -> None:
        """--channel keeps the URL's presence=1 in the /subscribe it reads."""
        listener = Listener(f"{HUB}/?presence=1", "--channel", "news")
        self.assertEqual(
            listener.request.uri,
            b"http://hub.example/subscribe?presence=1&channel=news",
        )


#: A server for L{ProcessTests}, printing its port: C{/presence/NAME}
#: answers by NAME ("news" the table of L{NEWS}, cut to C{limit}; "private"
#: with a 401 unless the Bearer token is "s3cret"; "down" a 503; "big" a body
#: of 2 MiB without a length; "slow" never), and prints each presence
#: request's URI and Authorization; C{/channels/news} streams a presence
#: event, a join and a leave, and stays open.
SERVER = """
import json
import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

NEWS = json.loads(sys.argv[1])


def error(request, code, reason):
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"error": reason}).encode()


class Presence(Resource):
    isLeaf = True

    def render_GET(self, request):
        auth = request.getHeader(b"authorization") or b"-"
        print(request.uri.decode(), auth.decode(), flush=True)
        [name] = request.postpath
        if name == b"private" and auth != b"Bearer s3cret":
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="test"')
            return error(request, 401, "a token is needed")
        if name == b"down":
            request.setHeader(b"Retry-After", b"7")
            return error(request, 503, "broker unavailable")
        if name == b"big":
            request.setHeader(b"Content-Type", b"application/json")
            for _ in range(32):
                request.write(b" " * 65536)
            request.finish()
            return NOT_DONE_YET
        if name == b"slow":
            return NOT_DONE_YET
        limit = int(request.args.get(b"limit", [b"100"])[0])
        answer = dict(NEWS, channel=name.decode(), members=NEWS["members"][:limit])
        if limit < len(NEWS["members"]):
            answer["truncated"] = True
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(answer).encode()


class Channel(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.write(
            b"retry: 60000\\nid: 1-0\\n\\n"
            b'event: presence\\ndata: {"channel":"news","count":0,"members":[]}\\n\\n'
            b'event: join\\ndata: {"channel":"news","sub":"alice"}\\n\\n'
            b'event: leave\\ndata: {"channel":"news","sub":"alice"}\\n\\n'
        )
        return NOT_DONE_YET


root = Resource()
root.putChild(b"presence", Presence())
channels = Resource()
channels.putChild(b"news", Channel())
root.putChild(b"channels", channels)
port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""

#: Seconds a process may take; only a hung one gets near it.
PROCESS_TIMEOUT = 60
#: What the command's lines on stderr begin with (a usage error's, with
#: "twisted-sse: ", as every command's).
PREFIX = "twisted-sse presence: "
ROOT = Path(__file__).resolve().parent.parent


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


class Command:
    """C{twisted-sse ARGV} started as a user starts it; L{wait} for its end."""

    def __init__(self, *argv: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "twisted_sse", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tempfile.mkdtemp(prefix="twisted-sse-cli-"),
            env=_environment(),
        )

    def wait(self) -> tuple[int, str, str]:
        """The exit status, stdout and stderr."""
        out, err = self.process.communicate(timeout=PROCESS_TIMEOUT)
        return self.process.returncode, out, err

    def kill(self) -> None:
        """Make sure it is gone."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=PROCESS_TIMEOUT)


class ProcessTests(SynchronousTestCase):
    """The command as a user runs it, against a server over a real socket."""

    def setUp(self) -> None:
        self.server = subprocess.Popen(
            [sys.executable, "-c", SERVER, json.dumps(NEWS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def stop() -> None:
            self.server.terminate()
            self.server.communicate(timeout=PROCESS_TIMEOUT)

        self.addCleanup(stop)
        assert self.server.stdout is not None
        port = self.server.stdout.readline().strip()
        self.assertTrue(port.isdigit(), f"the server did not start: {port!r}")
        self.url = f"http://127.0.0.1:{port}"

    def run_all(self, *runs: list[str]) -> list[tuple[int, str, str]]:
        """Run the commands side by side; their statuses and output."""
        commands = [Command(*argv) for argv in runs]
        for command in commands:
            self.addCleanup(command.kill)
        return [command.wait() for command in commands]

    def test_answers(self) -> None:
        """The table and the JSON, over the wire."""
        table, as_json = self.run_all(
            ["presence", self.url, "news"],
            ["presence", self.url + "/", "news", "--json"],
        )
        self.assertEqual(table, (0, NEWS_TABLE, ""))
        self.assertEqual(as_json[0::2], (0, ""))
        self.assertEqual(json.loads(as_json[1]), NEWS)

    def test_limit_and_token(self) -> None:
        """--limit goes in the query, --token in the Authorization header."""
        limited, private = self.run_all(
            ["presence", self.url, "news", "--limit", "1"],
            ["presence", self.url, "private", "--token", "s3cret"],
        )
        self.assertEqual(
            limited,
            (
                0,
                "news: 3 connections, more than 1 member\n  alice  2\n"
                "  ... and more members, not listed (see --limit)\n",
                "",
            ),
        )
        self.assertEqual(private[0::2], (0, ""))
        self.assertTrue(private[1].startswith("private: 3 connections"), private)
        assert self.server.stdout is not None
        asked = sorted(self.server.stdout.readline().strip() for _ in range(2))
        self.assertEqual(
            asked, ["/presence/news?limit=1 -", "/presence/private Bearer s3cret"]
        )

    def test_refusals(self) -> None:
        """Refusals: the status and the reason in one line, exit 1."""
        private, down, elsewhere = self.run_all(
            ["presence", self.url, "private"],
            ["presence", self.url, "down"],
            ["presence", self.url + "/nowhere", "news"],
        )
        self.assertEqual(
            private, (1, "", PREFIX + "401 a token is needed (no --token given)\n")
        )
        self.assertEqual(
            down, (1, "", PREFIX + "503 broker unavailable (retry after 7 s)\n")
        )
        self.assertEqual(elsewhere[0:2], (1, ""))
        self.assertTrue(
            elsewhere[2].startswith(PREFIX + "404 Not Found (is URL the base URL"),
            elsewhere,
        )

    def test_too_long_or_too_slow(self) -> None:
        """A body over 1 MiB, no answer within --timeout: one line, exit 1."""
        big, slow = self.run_all(
            ["presence", self.url, "big"],
            ["presence", self.url, "slow", "--timeout", "0.5"],
        )
        self.assertEqual(
            big, (1, "", PREFIX + "the answer is longer than 1048576 bytes\n")
        )
        self.assertEqual(
            slow, (1, "", PREFIX + f"no answer from {self.url} within 0.5 s\n")
        )

    def test_interrupted(self) -> None:
        """
        SIGINT while the hub has not answered: exit 130 without a word, as
        every command.
        """
        command = Command("presence", self.url, "slow", "--timeout", "60")
        self.addCleanup(command.kill)
        assert self.server.stdout is not None
        self.assertEqual(self.server.stdout.readline().strip(), "/presence/slow -")
        command.process.send_signal(signal.SIGINT)
        self.assertEqual(command.wait(), (130, "", ""))

    def test_refused(self) -> None:
        """A port nobody listens on: one line, exit 1, no traceback."""
        self.server.terminate()
        self.server.communicate(timeout=PROCESS_TIMEOUT)
        [(code, out, err)] = self.run_all(["presence", self.url, "news"])
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(
            err.startswith(f"twisted-sse presence: cannot reach {self.url}: ")
        )

    def test_listen_prints_presence_events(self) -> None:
        """twisted-sse listen prints the presence, join and leave events."""
        [(code, out, err)] = self.run_all(
            [
                "listen",
                f"{self.url}/channels/news",
                "--max-events",
                "3",
                "--timeout",
                "30",
            ]
        )
        self.assertEqual((code, err), (0, ""))
        events = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(
            [(event["type"], json.loads(event["data"])) for event in events],
            [
                ("presence", {"channel": "news", "count": 0, "members": []}),
                ("join", {"channel": "news", "sub": "alice"}),
                ("leave", {"channel": "news", "sub": "alice"}),
            ],
        )
        self.assertEqual({event["lastEventId"] for event in events}, {"1-0"})


@pytest.mark.slow
class TwistdTests(SynchronousTestCase):
    """
    Against a real C{twistd sse} (signed tokens naming their C{sub}): the
    presence of streams open on a channel, and a join on a listener's
    stream.
    """

    SECRET = "presence-cli-test-secret-of-32-bytes-and-more"

    def setUp(self) -> None:
        self.server = start_healthy(self, env={"TWISTED_SSE_JWT_SECRET": self.SECRET})
        self.url = f"http://127.0.0.1:{self.server.port}"

    def token(self, sub: str) -> str:
        claims = {"sub": sub, "sse": {"subscribe": ["news"]}}
        return jwt.encode(claims, self.SECRET, algorithm="HS256")

    def open(self, sub: str) -> None:
        stream = SocketClient(
            self.server.port,
            http_request(
                "/channels/news",
                "Accept: text/event-stream",
                f"Authorization: Bearer {self.token(sub)}",
            ),
        )
        self.addCleanup(stream.close)
        self.assertEqual(stream.code, 200)
        stream.read_frame()  # open, and so present

    def test_presence_and_join(self) -> None:
        """
        Two connections of alice and one of bob make the table; a listener
        reading presence=1 prints the channel's presence, then carol's join.
        """
        self.open("alice")
        self.open("alice")
        self.open("bob")
        code, out, err = (
            Command("presence", self.url, "news", "--token", self.token("alice"))
        ).wait()
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, NEWS_TABLE)
        code, out, err = Command("presence", self.url, "news").wait()
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith("twisted-sse presence: 401 "), err)

        listener = Command(
            "listen",
            f"{self.url}/channels/news?presence=1",
            "--header",
            f"Authorization: Bearer {self.token('dave')}",
            "--max-events",
            "2",
            "--timeout",
            "30",
        )
        self.addCleanup(listener.kill)
        assert listener.process.stdout is not None
        first = json.loads(listener.process.stdout.readline())
        self.assertEqual(first["type"], "presence")
        snapshot = json.loads(first["data"])
        self.assertEqual((snapshot["channel"], snapshot["count"]), ("news", 4))
        self.open("carol")
        code, rest, err = listener.wait()
        self.assertEqual((code, err), (0, ""))
        [joined] = [json.loads(line) for line in rest.splitlines()]
        self.assertEqual(
            (joined["type"], json.loads(joined["data"])),
            ("join", {"channel": "news", "sub": "carol"}),
        )
