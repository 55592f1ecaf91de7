"""
The ``twisted-sse`` command as a user runs it: a real process reading a real
``twistd -n sse``, ended with Ctrl-C (SIGINT), SIGTERM or a closed pipe,
and ``--version`` of ``twisted-sse`` and ``twistd sse``.

No reactor runs in the test process: the same under trial and pytest.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import __version__

from ._process import TWISTD, Twistd

#: Seconds a process may take; only a hung one gets near it.
TIMEOUT = 30.0

_SCRIPT = Path(sys.executable).with_name("twisted-sse")
#: The installed console script, as a user types it (``python -m
#: twisted_sse`` where it is not beside the interpreter).
TWISTED_SSE = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "twisted_sse"]
)


class Command:
    """``twisted-sse ARGV`` running, its stdout and stderr read by the test."""

    def __init__(self, case: SynchronousTestCase, *argv: str) -> None:
        self.process = subprocess.Popen(
            [*TWISTED_SSE, *argv],
            cwd=tempfile.mkdtemp(prefix="twisted-sse-cli-"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout = b""
        case.addCleanup(self.kill)

    def read_line(self) -> bytes:
        """Wait for the first line on stdout (an event) and return it."""
        assert self.process.stdout is not None
        self.stdout = _line(self.process.stdout, self.stdout)
        return self.stdout.split(b"\n", 1)[0]

    def read_error_line(self) -> bytes:
        """Wait for the first line on stderr and return what was read."""
        assert self.process.stderr is not None
        return _line(self.process.stderr, b"")

    def signal(self, number: int) -> tuple[int, bytes, bytes]:
        """Send a signal; return the exit status, all of stdout, and stderr."""
        self.process.send_signal(number)
        return self.wait()

    def wait(self) -> tuple[int, bytes, bytes]:
        """Wait for the exit; return the exit status, all of stdout, and stderr."""
        out, err = self.process.communicate(timeout=TIMEOUT)
        self.stdout += out
        return self.process.returncode, self.stdout, err

    def kill(self) -> bytes:
        """Kill the process if it still runs; return its stderr."""
        if self.process.poll() is None:
            self.process.kill()
        try:
            return self.process.communicate(timeout=TIMEOUT)[1]
        except ValueError:  # its stdout was closed by the test
            self.process.wait(TIMEOUT)
            return b""


def _line(pipe: IO[bytes], read: bytes) -> bytes:
    """Read ``pipe`` until what was read holds a line; return what was read."""
    while b"\n" not in read:
        ready, _, _ = select.select([pipe], [], [], TIMEOUT)
        chunk = os.read(pipe.fileno(), 65536) if ready else b""
        if not chunk:
            raise AssertionError(f"no line: {read!r}")
        read += chunk
    return read


def free_port() -> int:
    """A port that was just freed, so that connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class ListenSignalTests(SynchronousTestCase):
    """``twisted-sse listen`` ends at once and quietly on a signal."""

    def setUp(self) -> None:
        self.server = Twistd("--interval", "0.1").start()
        self.addCleanup(self.server.stop)
        self.url = f"http://127.0.0.1:{self.server.port}/events"

    def assert_only_events(self, stdout: bytes) -> None:
        """Every line of ``stdout`` is a whole event of the counter, in order."""
        events = [json.loads(line) for line in stdout.decode().splitlines()]
        self.assertTrue(events)
        self.assertEqual(
            [event["data"] for event in events],
            [str(number) for number in range(1, len(events) + 1)],
        )

    def test_sigint(self) -> None:
        """Ctrl-C (SIGINT): exit 130, the events on stdout, nothing on stderr."""
        command = Command(self, "listen", self.url)
        command.read_line()
        code, out, err = command.signal(signal.SIGINT)
        self.assertEqual((code, err), (130, b""))
        self.assert_only_events(out)

    def test_sigint_verbose(self) -> None:
        """Even with --verbose, Ctrl-C is not reported as a connection lost."""
        command = Command(self, "listen", "--verbose", self.url)
        command.read_line()
        code, out, err = command.signal(signal.SIGINT)
        self.assertEqual((code, err), (130, b""))
        self.assert_only_events(out)

    def test_sigterm(self) -> None:
        """SIGTERM: exit 143, the events on stdout, nothing on stderr."""
        command = Command(self, "listen", self.url)
        command.read_line()
        code, out, err = command.signal(signal.SIGTERM)
        self.assertEqual((code, err), (143, b""))
        self.assert_only_events(out)

    def test_closed_stdout(self) -> None:
        """
        A reader that leaves after one line (``| head -1``) ends listen at
        the next event: exit 0, nothing on stderr.
        """
        command = Command(self, "listen", self.url)
        command.read_line()
        assert command.process.stdout is not None
        command.process.stdout.close()
        self.assertEqual(command.process.wait(TIMEOUT), 0)
        assert command.process.stderr is not None
        self.assertEqual(command.process.stderr.read(), b"")


class SignalWhileWaitingTests(SynchronousTestCase):
    """A signal ends a command that is waiting, not reading."""

    def test_listen_reconnecting(self) -> None:
        """SIGINT while listen waits to reconnect: exit 130, nothing more said."""
        url = f"http://127.0.0.1:{free_port()}/"
        command = Command(self, "listen", "-v", url)
        # The first attempt is refused at once; then it waits seconds.
        said = command.read_error_line()
        self.assertRegex(said, rb"^twisted-sse: .*; reconnecting in [0-9.]+ s\n$")
        self.assertEqual(command.signal(signal.SIGINT), (130, b"", b""))

    def test_check(self) -> None:
        """SIGTERM in the middle of a check: exit 143, no report, no word."""
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            listening.settimeout(TIMEOUT)
            port = listening.getsockname()[1]
            command = Command(
                self, "check", f"http://127.0.0.1:{port}/", "--duration", "60"
            )
            connection, _ = listening.accept()
            self.addCleanup(connection.close)
            self.assertEqual(command.signal(signal.SIGTERM), (143, b"", b""))


class VersionTests(SynchronousTestCase):
    """``--version`` names this package, then Twisted and Python."""

    def assert_versions(self, result: subprocess.CompletedProcess[bytes]) -> None:
        """Exit 0, two lines on stdout, nothing on stderr."""
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        ours, runtime = result.stdout.decode().splitlines()
        self.assertEqual(ours, f"twisted_sse {__version__}")
        self.assertRegex(runtime, r"^Twisted \S+, Python 3\.\d+\.\d+")

    def test_twisted_sse(self) -> None:
        """twisted-sse --version."""
        self.assert_versions(
            subprocess.run(
                [*TWISTED_SSE, "--version"], capture_output=True, timeout=TIMEOUT
            )
        )

    def test_twistd_sse(self) -> None:
        """twistd sse --version, from a directory without the package."""
        self.assert_versions(
            subprocess.run(
                [*TWISTD, "sse", "--version"],
                cwd=tempfile.mkdtemp(prefix="twisted-sse-cli-"),
                capture_output=True,
                timeout=TIMEOUT,
            )
        )
