"""
End-to-end tests of C{twisted-sse listen}: real processes over real sockets.

L{tests.sse_server_fixture} runs as a subprocess on 127.0.0.1; the command
runs as C{python -m twisted_sse} in another, with a timeout.  No reactor runs
in the test process, so these tests are the same under trial and pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "sse_server_fixture.py"
# Generous: only a hung process gets near it.
TIMEOUT = 60


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Run:
    """The outcome of one C{twisted-sse} process."""

    def __init__(self, completed: subprocess.CompletedProcess[str]) -> None:
        self.code = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr

    @property
    def events(self) -> list[dict[str, Any]]:
        """The JSON objects printed, one per line."""
        return [json.loads(line) for line in self.stdout.splitlines()]

    @property
    def error_lines(self) -> list[str]:
        """The lines on stderr."""
        return self.stderr.splitlines()


def twisted_sse(*argv: str) -> Run:
    """Run C{python -m twisted_sse argv} to completion."""
    return Run(
        subprocess.run(
            [sys.executable, "-m", "twisted_sse", *argv],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=ROOT,
            env=_environment(),
        )
    )


def start_server(case: SynchronousTestCase) -> tuple[str, Callable[[], None]]:
    """
    Start the fixture server, stopped by a cleanup of C{case}.

    :returns: Its base URL, and a function that stops it sooner.
    """
    server = subprocess.Popen(
        [sys.executable, str(FIXTURE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_environment(),
    )

    def stop() -> None:
        if server.returncode is not None:
            return
        server.terminate()
        try:
            server.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()

    case.addCleanup(stop)
    stdout: IO[str] | None = server.stdout
    assert stdout is not None
    line = stdout.readline()
    if not line.strip().isdigit():
        raise RuntimeError(f"the fixture server did not start: {line!r}")
    return f"http://127.0.0.1:{int(line)}", stop


class InteropTests(SynchronousTestCase):
    """C{twisted-sse listen} against the fixture server."""

    def setUp(self) -> None:
        # One server per test (trial has no setUpClass); it starts in well
        # under a second.
        self.base, self.stop_server = start_server(self)

    def listen(self, path: str, *options: str) -> Run:
        """Run C{twisted-sse listen} on C{path} of the fixture server."""
        return twisted_sse("listen", self.base + path, *options)

    def test_our_own_server(self) -> None:
        """Events from our EventStreamResource arrive in order, with the origin."""
        run = self.listen("/counter", "--max-events", "3")
        self.assertEqual(run.code, 0, run.stderr)
        self.assertEqual(
            run.events,
            [
                {
                    "type": "message",
                    "data": str(n),
                    "lastEventId": "",
                    "origin": self.base,
                }
                for n in (1, 2, 3)
            ],
        )
        self.assertEqual(run.stderr, "")

    def test_204_exits_0(self) -> None:
        """The server's 204 makes the command exit 0 with nothing on stdout."""
        run = self.listen("/no-content")
        self.assertEqual((run.code, run.stdout), (0, ""))

    def test_404_exits_1(self) -> None:
        """A 404 exits 1 with exactly one line on stderr."""
        run = self.listen("/missing")
        self.assertEqual((run.code, run.stdout), (1, ""))
        self.assertEqual(len(run.error_lines), 1, run.stderr)
        self.assertIn("404", run.stderr)

    def test_wrong_type_exits_1(self) -> None:
        """A text/plain response exits 1 with exactly one line on stderr."""
        run = self.listen("/wrong-type")
        self.assertEqual((run.code, run.stdout), (1, ""))
        self.assertEqual(len(run.error_lines), 1, run.stderr)

    def test_bad_url_exits_2(self) -> None:
        """
        A URL that is not http(s), or cannot be parsed, is a usage error:
        exit 2 at once with exactly one line on stderr, no retry loop.
        """
        for url in [
            "ftp://127.0.0.1/",
            "not a url",
            "http://exa mple/",
            "http://[::1/",
        ]:
            run = twisted_sse("listen", url)
            self.assertEqual((run.code, run.stdout), (2, ""), url)
            self.assertEqual(len(run.error_lines), 1, run.stderr)

    def test_usage_errors_exit_2(self) -> None:
        """Bad options, a malformed --header and a missing URL exit 2."""
        for argv in [
            ["listen"],
            ["listen", self.base, "--max-events", "zero"],
            ["listen", self.base, "--header", "no colon"],
            [],
        ]:
            run = twisted_sse(*argv)
            self.assertEqual((run.code, run.stdout), (2, ""), argv)

    def test_reconnect_with_last_event_id(self) -> None:
        """A body that ends is reopened with Last-Event-ID, after retry: 100."""
        run = self.listen("/ends", "--max-events", "6", "--verbose")
        self.assertEqual(run.code, 0, run.stderr)
        self.assertEqual(
            [(event["data"], event["lastEventId"]) for event in run.events],
            [
                ("1 after -", "1"),
                ("2 after -", "2"),
                ("3 after -", "3"),
                ("4 after 3", "4"),
                ("5 after 3", "5"),
                ("6 after 3", "6"),
            ],
        )
        self.assertIn("reconnecting in 0.1 s", run.stderr)

    def test_stopped_after_reconnect(self) -> None:
        """A 204 on the reconnect ends the command with 0 after the events."""
        run = self.listen("/once")
        self.assertEqual(run.code, 0, run.stderr)
        self.assertEqual([event["data"] for event in run.events], ["only"])

    def test_timeout(self) -> None:
        """--timeout exits 0 on a silent stream."""
        run = self.listen("/silent", "--timeout", "0.5")
        self.assertEqual((run.code, run.stdout, run.stderr), (0, "", ""))

    def test_idle_timeout(self) -> None:
        """--idle-timeout reopens a silent stream; -v tells it on stderr."""
        run = self.listen(
            "/auth",
            "-v",
            "--idle-timeout",
            "0.2",
            "--reconnection-time",
            "10",
            "--max-events",
            "2",
        )
        self.assertEqual(run.code, 0, run.stderr)
        self.assertEqual(len(run.events), 2)
        self.assertIn("no data for 0.2 s", run.stderr)

    def test_header_same_origin(self) -> None:
        """--header follows a same-origin redirect."""
        run = self.listen(
            "/redirect-home", "--header", "Authorization: s3cret", "--max-events", "1"
        )
        self.assertEqual(run.code, 0, run.stderr)
        self.assertEqual(run.events[0]["data"], "s3cret")
        self.assertEqual(run.events[0]["origin"], self.base)

    def test_header_not_cross_origin(self) -> None:
        """--header is not sent after a redirect to another origin, the new origin."""
        run = self.listen(
            "/redirect-away", "--header", "Authorization: s3cret", "--max-events", "1"
        )
        self.assertEqual(run.code, 0, run.stderr)
        self.assertEqual(run.events[0]["data"], "-")
        self.assertEqual(
            run.events[0]["origin"], self.base.replace("127.0.0.1", "localhost")
        )

    def test_connection_refused_retries(self) -> None:
        """A refused connection is retried (-v reports it) until --timeout."""
        # A port that was just freed is refused.
        self.stop_server()
        run = twisted_sse("listen", self.base, "--timeout", "1.5", "-v")
        self.assertEqual((run.code, run.stdout), (0, ""))
        self.assertIn("reconnecting", run.stderr)
