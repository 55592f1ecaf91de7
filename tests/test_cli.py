"""
Tests for L{twisted_sse.__main__}: the C{twisted-sse} command's options, the
strict parsing of URLs, C{listen} run in memory on a fake agent and a
L{Clock}, and C{check} on fake connections.  The real process, socket and
reactor are exercised by L{tests.test_client_interop} and
L{tests.test_check_process}, and here for C{listen --channel} only: a real
C{listen} process reading a small twisted.web server in another, which
records the request URI it gets.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed

from tests._check_fakes import STREAM_HEAD, Net, chunk
from tests._client_fakes import URL, FakeAgent, FakeRequest
from twisted_sse import __version__
from twisted_sse.__main__ import build_parser, check, listen, main
from twisted_sse._check import Connector

DOCS = Path(__file__).resolve().parent.parent / "docs"


class Output(io.StringIO):
    """A text stream that counts flushes and can refuse writes."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.broken = False

    def flush(self) -> None:
        self.flushes += 1

    def write(self, text: str) -> int:
        if self.broken:
            raise BrokenPipeError()
        return super().write(text)

    def lines(self) -> list[str]:
        """The lines written so far."""
        return self.getvalue().splitlines()


def usage(*argv: str) -> tuple[int, str]:
    """Run C{main(argv)} where it stops before the reactor; return code, stderr."""
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


class Listener:
    """C{listen} on a fake agent and a clock."""

    def __init__(self, *argv: str) -> None:
        self.options = build_parser().parse_args(["listen", *argv])
        self.clock = Clock()
        self.agent = FakeAgent()
        self.out = Output()
        self.err = Output()
        self.done: Deferred[int] = Deferred.fromCoroutine(
            listen(self.clock, self.options, self.out, self.err, self.agent)
        )
        self.clock.advance(0)

    @property
    def request(self) -> FakeRequest:
        """The latest request."""
        return self.agent.requests[-1]

    def events(self) -> list[dict[str, Any]]:
        """The JSON objects printed."""
        return [json.loads(line) for line in self.out.lines()]


class OptionTests(SynchronousTestCase):
    """Usage errors exit 2 before anything connects."""

    def test_no_command(self) -> None:
        """A command is required."""
        self.assertEqual(usage()[0], 2)

    def test_unknown_command(self) -> None:
        """An unknown command is a usage error."""
        self.assertEqual(usage("talk", URL)[0], 2)

    def test_no_url(self) -> None:
        """listen needs a URL."""
        self.assertEqual(usage("listen")[0], 2)

    def test_unknown_option(self) -> None:
        """An unknown option is a usage error."""
        self.assertEqual(usage("listen", URL, "--bogus")[0], 2)

    def test_malformed_header(self) -> None:
        """A --header without a colon or with a bad name is a usage error."""
        for header in ["NoColon", "Bad Name: x", ": x", "X: a\rb"]:
            code, err = usage("listen", URL, "--header", header)
            self.assertEqual(code, 2, header)
            self.assertIn("--header", err)

    def test_bad_numbers(self) -> None:
        """Counts and times must be numbers in range."""
        for argv in [
            ["--max-events", "0"],
            ["--max-events", "x"],
            ["--timeout", "0"],
            ["--timeout", "-1"],
            ["--timeout", "nan"],
            ["--reconnection-time", "-1"],
            ["--reconnection-time", "1.5"],
            ["--idle-timeout", "-1"],
            ["--idle-timeout", "inf"],
            ["--max-line-bytes", "0"],
            ["--max-line-bytes", "1e3"],
            ["--max-event-bytes", "-1"],
            ["--max-event-bytes", "x"],
        ]:
            self.assertEqual(usage("listen", URL, *argv)[0], 2, argv)

    def test_help(self) -> None:
        """--help exits 0."""
        self.assertEqual(usage("listen", "--help")[0], 0)

    def test_version(self) -> None:
        """--version prints ours, then Twisted's and Python's, on stdout; exit 0."""
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["--version"])
        self.assertEqual((code, err.getvalue()), (0, ""))
        ours, runtime = out.getvalue().splitlines()
        self.assertEqual(ours, f"twisted_sse {__version__}")
        self.assertRegex(runtime, r"^Twisted \S+, Python 3\.\d+\.\d+")

    def test_header_parsing(self) -> None:
        """Headers are split at the first colon, the value trimmed."""
        options = build_parser().parse_args(
            ["listen", URL, "--header", "Authorization:  Bearer a:b ", "--header", "X:"]
        )
        self.assertEqual(options.header, [("Authorization", "Bearer a:b"), ("X", "")])

    def test_defaults(self) -> None:
        """Defaults are the browser's."""
        options = build_parser().parse_args(["listen", URL])
        self.assertEqual(
            (
                options.last_event_id,
                options.header,
                options.max_events,
                options.timeout,
                options.reconnection_time,
                options.idle_timeout,
                options.max_line_bytes,
                options.max_event_bytes,
                options.verbose,
                options.channel,
            ),
            (
                "",
                [],
                None,
                None,
                3000,
                45.0,
                16 * 1024 * 1024,
                16 * 1024 * 1024,
                False,
                [],
            ),
        )
        self.assertIsInstance(options, argparse.Namespace)

    def test_channels_parsed(self) -> None:
        """--channel is repeatable, in order."""
        options = build_parser().parse_args(
            ["listen", URL, "--channel", "a", "--channel", "news.*"]
        )
        self.assertEqual(options.channel, ["a", "news.*"])

    def test_bad_channel(self) -> None:
        """
        A bad --channel is a usage error: exit 2 and one line on stderr
        naming it, before anything connects.
        """
        for name in ["*", "a b", "-x.*", "", "news*", "x" * 129]:
            code, err = usage("listen", URL, "--channel", "ok", f"--channel={name}")
            self.assertEqual(code, 2, name)
            lines = err.splitlines()
            self.assertEqual(len(lines), 1, err)
            self.assertTrue(lines[0].startswith("twisted-sse: bad --channel: "), err)
            self.assertIn(repr(name), lines[0])

    def test_bad_url_before_channel(self) -> None:
        """A bad URL with --channel is said as a bad URL, once."""
        code, err = usage("listen", "ftp://h/", "--channel", "a")
        self.assertEqual(code, 2)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("bad URL 'ftp://h/'", err)


class ListenTests(SynchronousTestCase):
    """What listen prints, and when it exits."""

    def test_json_lines(self) -> None:
        """Each event is one flushed JSON line with type, data, lastEventId, origin."""
        listener = Listener(URL)
        response = listener.request.respond()
        response.send(b"id: 1\ndata: a\ndata: b\n\nevent: tick\ndata: \xc3\xa9\n\n")
        self.assertEqual(
            listener.events(),
            [
                {
                    "type": "message",
                    "data": "a\nb",
                    "lastEventId": "1",
                    "origin": "http://example.com",
                },
                {
                    "type": "tick",
                    "data": "é",
                    "lastEventId": "1",
                    "origin": "http://example.com",
                },
            ],
        )
        self.assertEqual(len(listener.out.lines()), 2)
        self.assertGreaterEqual(listener.out.flushes, 2)
        self.assertEqual(listener.err.getvalue(), "")
        self.assertNoResult(listener.done)

    def test_max_events(self) -> None:
        """--max-events N exits 0 after N events and drops the connection."""
        listener = Listener(URL, "--max-events", "2")
        response = listener.request.respond()
        response.send(b"data: 1\n\ndata: 2\n\ndata: 3\n\n")
        self.assertEqual(self.successResultOf(listener.done), 0)
        self.assertEqual([event["data"] for event in listener.events()], ["1", "2"])
        self.assertTrue(response.stopped)
        self.assertEqual(listener.clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """--timeout S exits 0 after S seconds, even while connecting."""
        listener = Listener(URL, "--timeout", "5")
        listener.clock.advance(4.9)
        self.assertNoResult(listener.done)
        listener.clock.advance(0.1)
        self.assertEqual(self.successResultOf(listener.done), 0)
        self.assertTrue(listener.request.cancelled)
        self.assertEqual(listener.clock.getDelayedCalls(), [])

    def test_204(self) -> None:
        """A 204 exits 0."""
        listener = Listener(URL)
        listener.request.respond(204, None)
        self.assertEqual(self.successResultOf(listener.done), 0)
        self.assertEqual(listener.out.getvalue(), "")

    def test_404(self) -> None:
        """A 404 exits 1 with exactly one line on stderr and nothing on stdout."""
        listener = Listener(URL)
        listener.request.respond(404, "text/html")
        self.assertEqual(self.successResultOf(listener.done), 1)
        self.assertEqual(len(listener.err.lines()), 1)
        self.assertIn("404", listener.err.getvalue())
        self.assertEqual(listener.out.getvalue(), "")

    def test_wrong_content_type(self) -> None:
        """A wrong Content-Type exits 1 with one line on stderr."""
        listener = Listener(URL)
        listener.request.respond(200, "text/plain")
        self.assertEqual(self.successResultOf(listener.done), 1)
        self.assertEqual(len(listener.err.lines()), 1)
        self.assertIn("text/plain", listener.err.getvalue())

    def test_bad_url(self) -> None:
        """A URL that is not http(s) exits 2 with one line on stderr."""
        listener = Listener("ftp://example.com/")
        self.assertEqual(self.successResultOf(listener.done), 2)
        self.assertEqual(len(listener.err.lines()), 1)
        self.assertEqual(listener.agent.requests, [])

    def test_reconnects(self) -> None:
        """A dropped stream is reopened with Last-Event-ID, quietly."""
        listener = Listener(URL)
        response = listener.request.respond()
        response.send(b"id: 7\ndata: a\n\n")
        response.end()
        listener.clock.advance(3)
        self.assertEqual(len(listener.agent.requests), 2)
        self.assertEqual(listener.request.header("Last-Event-ID"), "7")
        self.assertEqual(len(listener.out.lines()), 1)
        self.assertEqual(listener.err.getvalue(), "")

    def test_failed_attempt_said(self) -> None:
        """An attempt that fails before any event is said on stderr, unasked."""
        listener = Listener(URL)
        listener.request.fail()
        self.assertEqual(len(listener.err.lines()), 1)
        self.assertIn("reconnecting in", listener.err.lines()[0])
        self.assertEqual(listener.out.lines(), [])
        listener.clock.advance(60)
        listener.request.fail()
        self.assertEqual(len(listener.err.lines()), 2)

    def test_reconnects_verbose(self) -> None:
        """With --verbose, why and when it reconnects goes to stderr."""
        listener = Listener(URL, "--verbose")
        response = listener.request.respond()
        response.send(b"id: 7\ndata: a\n\n")
        response.end()
        self.assertEqual(len(listener.agent.requests), 1)
        listener.clock.advance(3)
        self.assertEqual(len(listener.agent.requests), 2)
        self.assertEqual(listener.request.header("Last-Event-ID"), "7")
        self.assertEqual(len(listener.out.lines()), 1)
        self.assertEqual(
            listener.err.lines(),
            ["twisted-sse: the server ended the stream; reconnecting in 3 s"],
        )

    def test_network_error_described(self) -> None:
        """A wrapped network error is reported by its causes, on one stderr line."""
        listener = Listener(URL, "-v")
        response = listener.request.respond()
        response.send(b"data: x\n\n")
        response.end(
            Failure(
                ResponseFailed(
                    [Failure(ValueError("bad")), Failure(RuntimeError("worse"))]
                )
            )
        )
        [line] = listener.err.lines()
        self.assertIn("bad; worse", line)
        self.assertTrue(line.endswith("; reconnecting in 3 s"), line)
        self.assertEqual(len(listener.out.lines()), 1)

    def test_connection_loss_described(self) -> None:
        """
        A connection lost in the middle of a response is reported as lost,
        without what the loss did to the response's decoder.
        """
        for lost in [ConnectionLost("gone"), ConnectionDone()]:
            listener = Listener(URL, "-v")
            response = listener.request.respond()
            response.end(
                Failure(
                    ResponseFailed(
                        [Failure(lost), Failure(ValueError("Chunked decoder in"))]
                    )
                )
            )
            [line] = listener.err.lines()
            self.assertIn(Failure(lost).getErrorMessage(), line)
            self.assertNotIn("decoder", line)

    def test_cancelled(self) -> None:
        """
        Cancelled (as a signal does), listen drops the connection and ends
        without a word or a timer left.
        """
        listener = Listener(URL, "-v", "--timeout", "60")
        response = listener.request.respond()
        response.send(b"data: x\n\n")
        listener.done.cancel()
        self.failureResultOf(listener.done, CancelledError)
        self.assertTrue(response.stopped)
        response.end(Failure(ResponseFailed([Failure(ConnectionLost())])))
        self.assertEqual(len(listener.events()), 1)
        self.assertEqual(listener.err.getvalue(), "")
        self.assertEqual(listener.clock.getDelayedCalls(), [])

    def test_options_applied(self) -> None:
        """--last-event-id, --header, --reconnection-time and --idle-timeout apply."""
        listener = Listener(
            URL,
            "--last-event-id",
            "42",
            "--header",
            "Authorization: Bearer t",
            "--reconnection-time",
            "100",
            "--idle-timeout",
            "2",
        )
        request = listener.request
        self.assertEqual(request.header("Last-Event-ID"), "42")
        self.assertEqual(request.header("Authorization"), "Bearer t")
        response = request.respond()
        response.send(b"data: x\n\n")
        listener.clock.advance(2)
        self.assertTrue(response.stopped)
        listener.clock.advance(0.1)
        self.assertEqual(len(listener.agent.requests), 2)

    def test_channels(self) -> None:
        """
        --channel reads the hub's /subscribe for those channels; each line's
        type is the event's channel, its lastEventId the cursor.
        """
        listener = Listener(
            "http://hub.example/?token=t",
            "--channel",
            "orders",
            "--channel",
            "news.*",
            "--max-events",
            "2",
        )
        self.assertEqual(
            listener.request.uri,
            b"http://hub.example/subscribe?token=t&channel=orders&channel=news.*",
        )
        response = listener.request.respond()
        response.send(
            b"retry: 1000\nid: ~c0\n\n"
            b"event: news.eu\nid: ~c1\ndata: n\n\n"
            b"event: orders\nid: ~c2\ndata: o\n\n"
        )
        self.assertEqual(self.successResultOf(listener.done), 0)
        self.assertEqual(
            listener.events(),
            [
                {
                    "type": "news.eu",
                    "data": "n",
                    "lastEventId": "~c1",
                    "origin": "http://hub.example",
                },
                {
                    "type": "orders",
                    "data": "o",
                    "lastEventId": "~c2",
                    "origin": "http://hub.example",
                },
            ],
        )
        self.assertEqual(listener.err.getvalue(), "")

    def test_channels_resume(self) -> None:
        """
        The reconnection asks for the same channels with the last cursor;
        --last-event-id seeds the first.
        """
        listener = Listener(
            "http://hub.example", "--channel", "a", "--last-event-id", "~seed"
        )
        subscribe = b"http://hub.example/subscribe?channel=a"
        self.assertEqual(listener.request.uri, subscribe)
        self.assertEqual(listener.request.header("Last-Event-ID"), "~seed")
        response = listener.request.respond()
        response.send(b"retry: 500\nid: ~c0\n\nevent: a\nid: ~c1\ndata: x\n\n")
        response.end()
        listener.clock.advance(0.5)
        self.assertEqual(len(listener.agent.requests), 2)
        self.assertEqual(listener.request.uri, subscribe)
        self.assertEqual(listener.request.header("Last-Event-ID"), "~c1")

    def test_bad_channel_no_request(self) -> None:
        """listen with a bad --channel exits 2 with one line and no request."""
        listener = Listener(URL, "--channel", "*")
        self.assertEqual(self.successResultOf(listener.done), 2)
        self.assertEqual(len(listener.err.lines()), 1)
        self.assertIn("'*'", listener.err.getvalue())
        self.assertEqual(listener.agent.requests, [])
        self.assertEqual(listener.clock.getDelayedCalls(), [])

    def test_broken_pipe(self) -> None:
        """A closed stdout ends listen quietly with 0."""
        listener = Listener(URL)
        listener.out.broken = True
        response = listener.request.respond()
        response.send(b"data: x\n\n")
        self.assertEqual(self.successResultOf(listener.done), 0)
        self.assertTrue(response.stopped)

    def test_line_cap(self) -> None:
        """A line past --max-line-bytes: one stderr line naming it, then a retry."""
        listener = Listener(URL, "-v", "--max-line-bytes", "100")
        response = listener.request.respond()
        response.send(b"data: 1\n\n" + b"x" * 101)
        self.assertTrue(response.stopped)
        [line] = listener.err.lines()
        self.assertRegex(
            line,
            r"^twisted-sse: a line longer than --max-line-bytes \(100 bytes\); "
            r"reconnecting in [0-9.]+ s$",
        )
        self.assertEqual([event["data"] for event in listener.events()], ["1"])
        self.assertNoResult(listener.done)
        listener.clock.advance(6)
        self.assertEqual(len(listener.agent.requests), 2)

    def test_event_cap(self) -> None:
        """An event past --max-event-bytes: one stderr line naming it."""
        listener = Listener(URL, "-v", "--max-event-bytes", "10")
        response = listener.request.respond()
        response.send(b"data: 12345\ndata: 67890\n")
        self.assertTrue(response.stopped)
        [line] = listener.err.lines()
        self.assertIn("an event's data longer than --max-event-bytes (10 bytes)", line)
        self.assertEqual(listener.out.getvalue(), "")

    def test_empty_stream_backs_off(self) -> None:
        """A server that answers retry: 0 and hangs up is retried later and later."""
        listener = Listener(URL, "-v")
        for _ in range(4):
            response = listener.request.respond()
            response.send(b"retry: 0\n\n")
            response.end()
            [reconnect] = listener.clock.getDelayedCalls()
            listener.clock.advance(reconnect.getTime() - listener.clock.seconds())
        self.assertEqual(len(listener.agent.requests), 5)
        delays = [float(line.split()[-2]) for line in listener.err.lines()]
        self.assertEqual(len(delays), 4)
        self.assertEqual(delays, sorted(delays))
        self.assertGreaterEqual(delays[0], 1.5)


#: URLs every command refuses, and a word of what it says about each.
BAD_URLS = {
    "http://exa mple/": "space",
    "http://[::1/": "unclosed '['",
    "http://[::g]/": "not an IPv6 address",
    "http://example.com:65536/": "65536 is not between 1 and 65535",
    "http://example.com:0/": "0 is not between 1 and 65535",
    "http://example.com:80x/": "not a number",
    "ftp://example.com/": "'ftp' is not http or https",
    "example.com/events": "must start with http:// or https://",
    "http:///events": "no host",
    "http://user:pw@example.com/": "credentials",
    "http://exa_mple!.com/": "not a valid host name",
    "http://256.1.1.1/": "not a valid IPv4 address",
    "http://a\tb/": "control character",
}


class StrictURLTests(SynchronousTestCase):
    """Every command refuses a bad URL at once: one line, exit 2."""

    def test_refused(self) -> None:
        """Each bad URL is a usage error naming the problem, for each command."""
        for url, words in BAD_URLS.items():
            for argv in [
                ["listen", url],
                ["check", url],
                ["check", URL, "--publish", url],
            ]:
                code, err = usage(*argv)
                self.assertEqual(code, 2, argv)
                lines = err.splitlines()
                self.assertEqual(len(lines), 1, err)
                self.assertTrue(lines[0].startswith("twisted-sse: bad "), err)
                self.assertIn(words, lines[0])

    def test_listen_does_not_retry(self) -> None:
        """listen with a URL it cannot use makes no request."""
        listener = Listener("http://exa mple/")
        self.assertEqual(self.successResultOf(listener.done), 2)
        self.assertEqual(listener.agent.requests, [])
        self.assertEqual(listener.clock.getDelayedCalls(), [])

    def test_origin(self) -> None:
        """--origin must be an origin: scheme, host and port only."""
        for origin in ["https://app.example/page", "app.example", "https://a b"]:
            code, err = usage("check", URL, "--origin", origin)
            self.assertEqual(code, 2, origin)
            self.assertEqual(len(err.splitlines()), 1, err)

    def test_bad_event_id(self) -> None:
        """An event id with a line break is a usage error."""
        self.assertEqual(usage("listen", URL, "--last-event-id", "a\nb")[0], 2)


class CheckOptionTests(SynchronousTestCase):
    """check's options."""

    def test_defaults(self) -> None:
        """10 s of watching, 30 s of silence allowed, a table, HTTP/2 offered."""
        options = build_parser().parse_args(["check", URL])
        self.assertEqual(
            (
                options.duration,
                options.idle,
                options.json,
                options.header,
                options.origin,
                options.publish,
                options.token,
                options.http1_1,
                options.cacert,
            ),
            (10.0, 30.0, False, [], None, None, None, False, None),
        )

    def test_bad_values(self) -> None:
        """Times must be positive numbers; headers well formed; --token needs
        --publish."""
        for argv in [
            ["--duration", "0"],
            ["--duration", "x"],
            ["--idle", "-1"],
            ["--idle", "inf"],
            ["-H", "NoColon"],
            ["--token", "t"],
            ["--bogus"],
        ]:
            self.assertEqual(usage("check", URL, *argv)[0], 2, argv)

    def test_headers(self) -> None:
        """-H and --header both add a header."""
        options = build_parser().parse_args(
            ["check", URL, "-H", "Authorization: Bearer a", "--header", "X-A: b"]
        )
        self.assertEqual(options.header, [("Authorization", "Bearer a"), ("X-A", "b")])

    def test_bad_cacert(self) -> None:
        """
        A --cacert file that is missing, or holds no certificate or a broken
        one, is a usage error, found before the reactor runs.
        """
        directory = Path(tempfile.mkdtemp(prefix="twisted-sse-cli-"))
        self.addCleanup(shutil.rmtree, directory, True)
        junk = directory / "junk.pem"
        junk.write_text("-----BEGIN CERTIFICATE-----\nzz\n-----END CERTIFICATE-----\n")
        empty = directory / "empty.pem"
        empty.write_text("nothing here\n")
        for path in ["/nonexistent/ca.pem", str(junk), str(empty)]:
            code, err = usage("check", URL, "--cacert", path)
            self.assertEqual(code, 2, path)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn("bad --cacert", err)

    def test_every_option_documented(self) -> None:
        """Every option of twisted-sse and its commands has its entry in cli.rst."""
        text = (DOCS / "reference" / "cli.rst").read_text("utf-8")
        (commands,) = [
            action
            for action in build_parser()._actions
            if isinstance(action, argparse._SubParsersAction)
        ]
        parsers = {"": build_parser(), **commands.choices}
        for name, parser in parsers.items():
            program = f"twisted-sse {name}".rstrip()
            start = text.index(f".. program:: {program}\n")
            end = text.find(".. program::", start + 1)
            section = text[start : end if end != -1 else None]
            for action in parser._actions:
                for option in action.option_strings:
                    if option in ("-h", "--help"):
                        continue
                    self.assertRegex(
                        section,
                        rf"(?m)^\.\. option:: [^\n]*{re.escape(option)}(?![\w.-])",
                        f"{program} {option} has no '.. option::' entry",
                    )


class Checker:
    """check on fake connections and a clock."""

    def __init__(self, *argv: str, tty: bool = False) -> None:
        self.options = build_parser().parse_args(["check", *argv])
        self.clock = Clock()
        self.net = Net(self.clock)
        self.out = Output()
        self.out.isatty = lambda: tty  # type: ignore[method-assign]
        self.err = Output()
        connector = Connector(self.clock, endpoint_for=self.net.endpoint)
        self.done: Deferred[int] = Deferred.fromCoroutine(
            check(self.clock, self.options, self.out, self.err, connector)
        )

    def serve(self, *data: bytes) -> None:
        """Answer the stream request with ``data``, then HEAD with a head."""
        ((_, stream, _),) = self.net.requests("GET")
        for piece in data:
            stream.dataReceived(piece)
        ((_, head, _),) = self.net.requests("HEAD")
        head.dataReceived(STREAM_HEAD)

    def finish(self, case: SynchronousTestCase) -> int:
        """Run the clock to the end of the watch; the exit status."""
        self.clock.pump([0.25] * 16)
        return int(case.successResultOf(self.done))


class CheckTests(SynchronousTestCase):
    """What check prints, and its exit status."""

    def test_table(self) -> None:
        """A healthy stream: a table of checks, exit 0, no colour off a terminal."""
        checker = Checker(URL, "--duration", "2")
        checker.serve(STREAM_HEAD + chunk(b"retry: 1000\n\n"))
        self.assertEqual(checker.finish(self), 0)
        text = checker.out.getvalue()
        self.assertTrue(text.startswith(f"twisted-sse check {URL}\n"), text)
        self.assertRegex(text, r"(?m)^  PASS  status +200 OK$")
        self.assertIn("OK: 0 failed", text)
        self.assertNotIn("\x1b[", text)
        self.assertEqual(checker.err.getvalue(), "")

    def test_colour_on_a_terminal(self) -> None:
        """On a terminal the statuses are coloured."""
        checker = Checker(URL, "--duration", "2", tty=True)
        checker.serve(STREAM_HEAD + chunk(b"retry: 1000\n\n"))
        checker.finish(self)
        self.assertIn("\x1b[32mPASS\x1b[0m", checker.out.getvalue())

    def test_json_and_failure(self) -> None:
        """--json prints one document; a failed check exits 1."""
        checker = Checker(URL, "--duration", "2", "--json")
        checker.serve(
            STREAM_HEAD.replace(b"text/event-stream", b"text/plain")
            + chunk(b"data: x\n\n")
        )
        self.assertEqual(checker.finish(self), 1)
        document = json.loads(checker.out.getvalue())
        self.assertEqual((document["url"], document["result"]), (URL, "fail"))
        statuses = {item["name"]: item["status"] for item in document["checks"]}
        self.assertEqual(statuses["content-type"], "fail")
        self.assertEqual(statuses["status"], "pass")

    def test_no_answer(self) -> None:
        """A server that never answers: exit 1 once the watch is over."""
        checker = Checker(URL, "--duration", "2")
        self.assertNoResult(checker.done)
        self.assertEqual(checker.finish(self), 1)
        self.assertRegex(checker.out.getvalue(), r"FAIL  status +no response in 2.0 s")


#: A server for L{ListenChannelProcessTests}: it prints its port, then the
#: URI of each request it gets; it answers with, for each C{channel}
#: parameter it decodes, one event of that type whose data is the URI.
RECORDER = """
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site


class Recorder(Resource):
    isLeaf = True

    def render_GET(self, request):
        print(request.uri.decode("ascii"), flush=True)
        request.setHeader(b"Content-Type", b"text/event-stream")
        frames = [b"retry: 60000\\nid: ~0\\n\\n"]
        for number, name in enumerate(request.args.get(b"channel", []), 1):
            frames.append(
                b"event: %s\\nid: ~%d\\ndata: %s\\n\\n"
                % (name, number, request.uri)
            )
        return b"".join(frames)


port = reactor.listenTCP(0, Site(Recorder()), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""

#: Seconds a process may take; only a hung one gets near it.
PROCESS_TIMEOUT = 60


class ListenChannelProcessTests(SynchronousTestCase):
    """C{twisted-sse listen --channel} over a real socket."""

    def test_subscribe_request(self) -> None:
        """
        The server gets the /subscribe URI with one parameter per channel
        after the URL's own, and decodes each name as given; the events
        print with their channel as type.
        """
        server = subprocess.Popen(
            [sys.executable, "-c", RECORDER],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def stop() -> None:
            server.terminate()
            server.communicate(timeout=PROCESS_TIMEOUT)

        self.addCleanup(stop)
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        self.assertTrue(port.isdigit(), f"the server did not start: {port!r}")
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(root), *filter(None, [env.get("PYTHONPATH")])]
        )
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "twisted_sse",
                "listen",
                f"http://127.0.0.1:{port}?token=t",
                "--channel",
                "eu@orders",
                "--channel",
                "news.*",
                "--max-events",
                "2",
                "--timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
            cwd=root,
            env=env,
        )
        uri = "/subscribe?token=t&channel=eu%40orders&channel=news.*"
        self.assertEqual((run.returncode, run.stderr), (0, ""))
        self.assertEqual(server.stdout.readline().strip(), uri)
        origin = f"http://127.0.0.1:{port}"
        self.assertEqual(
            [json.loads(line) for line in run.stdout.splitlines()],
            [
                {"type": name, "data": uri, "lastEventId": f"~{n}", "origin": origin}
                for n, name in enumerate(["eu@orders", "news.*"], 1)
            ],
        )
