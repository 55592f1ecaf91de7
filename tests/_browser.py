"""
Headless Chromium for end-to-end tests, through ``tests/js/browser.mjs``
(playwright-core driving Debian's ``/usr/bin/chromium``): a page is loaded,
JavaScript is evaluated in it and waited on, and screenshots are taken, all
from a synchronous test.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ._helpers import Closing
from ._tools import CHROMIUM, JS, require_chromium

#: Seconds any one command may take; only a hung browser gets near it.
COMMAND_TIMEOUT = 60.0


class BrowserError(AssertionError):
    """A command failed in the browser (a JavaScript error or a timeout)."""


class Driver(Closing):
    """
    A playwright-core driver of ``tests/js`` as a child process, which
    answers one JSON line per command (``{"ok": ..., "value": ...}``).

    :param script: The driver's file in ``tests/js``.
    :param options: Its options, given as its argument.
    """

    def __init__(self, script: str, options: dict[str, Any]) -> None:
        node = require_chromium()
        # stderr goes to a file: a pipe nobody reads could fill and stall it.
        # close() closes it.
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [node, str(JS / script), json.dumps(options)],
            cwd=JS,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
        )
        self._buffer = b""
        self._reply()  # "ready": Chromium is up

    def _reply(self, timeout: float = COMMAND_TIMEOUT) -> Any:
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"the browser did not answer in {timeout} s")
            if select.select([stdout], [], [], left)[0]:
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    raise BrowserError(f"the browser exited: {self._stderr()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply = json.loads(line)
        if not reply["ok"]:
            raise BrowserError(reply["error"])
        return reply["value"]

    def _stderr(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._errors.seek(0)
        return self._errors.read().decode(errors="replace")

    def command(self, op: str, **arguments: Any) -> Any:
        """Send one command to the driver and return its value."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps({"op": op, **arguments}).encode() + b"\n")
        stdin.flush()
        return self._reply()

    def close(self) -> None:
        """Close Chromium and reap the driver; safe to call twice."""
        if self.process.poll() is None:
            try:
                self.command("close")
                self.process.wait(15)
            except (BrowserError, OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self._errors.close()


class Browser(Driver):
    """
    One Chromium with one page, as a child process.

    :param ignore_https_errors: Accept the tests' self-signed certificates.
    """

    def __init__(self, ignore_https_errors: bool = False) -> None:
        super().__init__(
            "browser.mjs",
            {"executablePath": CHROMIUM, "ignoreHTTPSErrors": ignore_https_errors},
        )

    @classmethod
    def for_test(
        cls, case: SynchronousTestCase, ignore_https_errors: bool = False
    ) -> Browser:
        """A browser that ``case`` closes in a cleanup."""
        browser = cls(ignore_https_errors)
        case.addCleanup(browser.close)
        return browser

    def goto(self, url: str) -> int:
        """Load ``url``; return the HTTP status."""
        status: int = self.command("goto", url=url)
        return status

    def eval(self, js: str) -> Any:
        """The value of the JavaScript expression ``js`` (promises awaited)."""
        return self.command("eval", js=js)

    def wait(self, js: str, timeout: float = 15.0, show: str | None = None) -> Any:
        """
        Wait until the expression ``js`` is truthy; return its value.

        :param show: An expression whose value the error reports, to tell
            what the page saw instead.
        :raises BrowserError: if it is not within ``timeout`` seconds.
        """
        try:
            return self.command("wait", js=js, timeout=int(timeout * 1000))
        except BrowserError as error:
            if show is None:
                raise
            raise BrowserError(f"{error}\n{show} = {self.eval(show)!r}") from None

    def screenshot(self, path: str, full_page: bool = False) -> str:
        """Save a PNG of the page at ``path``."""
        saved: str = self.command("screenshot", path=path, fullPage=full_page)
        return saved

    def console(self) -> list[str]:
        """The page's console lines so far (``type: text``)."""
        lines: list[str] = self.command("console")
        return lines
