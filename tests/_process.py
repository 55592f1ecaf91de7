"""
Real processes for end-to-end tests: a ``twistd sse`` child on a port the
kernel picks (TCP or TLS), and client programs (curl, node) read as they
print.  A test reads the child's HTTP with ``SocketClient`` from
``tests/_http.py``.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from importlib import metadata
from types import TracebackType

from twisted.trial.unittest import SynchronousTestCase

#: Seconds a client process may take; only a hung one gets near it.
CLIENT_TIMEOUT = 30.0

_PORT_LINE = re.compile(rb"Site (?:\(TLS\) )?starting on (\d+)")

#: Runs twistd with this interpreter, so the test uses the installed plugin.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


#: twistd exits with a non-zero status on a usage error from Twisted 26.10;
#: before, it printed the error and exited 0 (for every plugin, ours too).
USAGE_EXITS_NONZERO = tuple(
    int(part) for part in metadata.version("twisted").split(".")[:2]
) >= (26, 10)


class Twistd:
    """
    ``twistd -n sse ...`` as a child process, started from an empty
    directory (so the plugin is found through the installed package, never
    through the current directory).
    """

    def __init__(
        self,
        *args: str,
        port: str = "tcp:0:interface=127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = ["-n", "--pidfile=", "sse", "--port", port, *args]
        #: Environment variables set for the child, beside the test's own.
        self.env = env or {}
        self.cwd = tempfile.mkdtemp(prefix="twisted-sse-test-")
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def output(self) -> bytes:
        """Everything the child has printed so far."""
        with self._lock:
            return bytes(self._output)

    def start(self, timeout: float = 60.0) -> Twistd:
        """Start the child and wait for it to listen."""
        self.process = subprocess.Popen(
            [*TWISTD, *self.args],
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        # Always drain the child's output: a child whose pipe fills up (its
        # access log, say) blocks in write() and stops serving.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _PORT_LINE.search(self.output)
            if match:
                self.port = int(match.group(1))
                return self
            if self.process.poll() is not None:
                self._join()
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(
            f"twistd did not start listening: {self.output.decode(errors='replace')}"
        )

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        fileno = self.process.stdout.fileno()
        while True:
            try:
                chunk = os.read(fileno, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self._output += chunk

    def _join(self, timeout: float = 5.0) -> None:
        if self._reader is not None:
            self._reader.join(timeout)

    def log(self, wait: float = 0.0) -> bytes:
        """All the child has printed, after waiting ``wait`` seconds."""
        if wait:
            time.sleep(wait)
        return self.output

    def terminate(
        self, signal_number: int = signal.SIGTERM, timeout: float = 10.0
    ) -> float:
        """Send a signal; return how many seconds the child took to exit."""
        assert self.process is not None
        began = time.monotonic()
        self.process.send_signal(signal_number)
        self.process.wait(timeout)
        took = time.monotonic() - began
        self._join()
        return took

    def stop(self) -> None:
        """Make sure the child is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._join()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> Twistd:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def health(server: Twistd) -> int:
    """The status ``server`` answers on ``/healthz``."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{server.port}/healthz", timeout=5
        ) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def start_healthy(
    testcase: SynchronousTestCase,
    *options: str,
    wait: float = 15.0,
    env: dict[str, str] | None = None,
) -> Twistd:
    """
    Start ``twistd sse`` with ``options`` (and ``env``), stopped when
    ``testcase`` ends, and wait until its broker is up (``/healthz``
    answers 200).
    """
    server = Twistd(*options, env=env).start()
    testcase.addCleanup(server.stop)
    deadline = time.monotonic() + wait
    while health(server) != 200:
        if time.monotonic() > deadline:
            testcase.fail(f"not healthy: {server.output.decode(errors='replace')}")
        time.sleep(0.05)
    return server


def run_twistd(
    *args: str, timeout: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``twistd -n sse ARGS`` to completion (for start-up failures)."""
    return subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "sse", *args],
        cwd=tempfile.mkdtemp(prefix="twisted-sse-test-"),
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class ClientProcess:
    """
    A client program (curl, node) whose stdout is read as it arrives; a
    cleanup of ``case`` kills it.
    """

    def __init__(
        self, argv: list[str], case: SynchronousTestCase, cwd: str | None = None
    ) -> None:
        self.process = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.output = b""
        case.addCleanup(self.stop)

    def read_until(
        self, done: re.Pattern[bytes], timeout: float = CLIENT_TIMEOUT
    ) -> bytes:
        """Read stdout until ``done`` matches it; return all of it."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while not done.search(self.output):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{done.pattern!r} not in {self.output!r}")
            if select.select([stdout], [], [], left)[0]:
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(
                        f"the client exited: {self.output!r} {self.stop()!r}"
                    )
                self.output += chunk
        return self.output

    def wait(self) -> bytes:
        """Wait for the client to exit; return all it printed."""
        rest, errors = self.process.communicate(timeout=CLIENT_TIMEOUT)
        self.output += rest
        if self.process.returncode != 0:
            raise AssertionError(f"exit {self.process.returncode}: {errors!r}")
        return self.output

    def stop(self) -> bytes:
        """Kill the client if it still runs; return its stderr."""
        if self.process.poll() is None:
            self.process.kill()
        _, errors = self.process.communicate(timeout=CLIENT_TIMEOUT)
        return errors
