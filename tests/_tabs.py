"""
Headless Chromium with several tabs in one or more browser contexts, for
tests of what tabs share (one connection, a leader, a handover), through
``tests/js/tabs.mjs``: the driver of ``tests/_browser.py`` with a tab index
on each command.
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

from ._browser import COMMAND_TIMEOUT, BrowserError
from ._helpers import Closing
from ._tools import CHROMIUM, JS, require_chromium


class Tabs(Closing):
    """One Chromium, as a child process, whose tabs are numbered from 0."""

    def __init__(self) -> None:
        node = require_chromium()
        # stderr goes to a file, as in Browser; close() closes it.
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [node, str(JS / "tabs.mjs"), json.dumps({"executablePath": CHROMIUM})],
            cwd=JS,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
        )
        self._buffer = b""
        self._reply()  # "ready": Chromium is up

    @classmethod
    def for_test(cls, case: SynchronousTestCase) -> Tabs:
        """Tabs that ``case`` closes in a cleanup."""
        tabs = cls()
        case.addCleanup(tabs.close)
        return tabs

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

    def new_page(self, context: int = 0) -> int:
        """Open a tab in browser context ``context``; return its index."""
        page: int = self.command("newpage", context=context)
        return page

    def goto(self, page: int, url: str, html: str | None = None) -> int:
        """
        Load ``url`` in tab ``page``; return the HTTP status.

        :param html: If given, the page loaded at ``url``, answered by the
            driver: a test page of the server's origin that the server does
            not serve.
        """
        arguments: dict[str, Any] = {"page": page, "url": url}
        if html is not None:
            arguments["html"] = html
        status: int = self.command("goto", **arguments)
        return status

    def eval(self, page: int, js: str) -> Any:
        """The value of ``js`` in tab ``page`` (promises awaited)."""
        return self.command("eval", page=page, js=js)

    def wait(
        self, page: int, js: str, timeout: float = 15.0, show: str | None = None
    ) -> Any:
        """
        Wait until ``js`` is truthy in tab ``page``; return its value.

        :param show: An expression whose value the error reports.
        :raises BrowserError: if it is not within ``timeout`` seconds.
        """
        try:
            return self.command("wait", page=page, js=js, timeout=int(timeout * 1000))
        except BrowserError as error:
            if show is None:
                raise
            raise BrowserError(f"{error}\n{show} = {self.eval(page, show)!r}") from None

    def close_page(self, page: int, crash: bool = False) -> None:
        """
        Close tab ``page`` as a user does (its ``pagehide`` runs), or with
        ``crash``, kill its renderer (nothing of the page runs).
        """
        self.command("closepage", page=page, crash=crash)

    def console(self, page: int) -> list[str]:
        """Tab ``page``'s console lines so far (``type: text``)."""
        lines: list[str] = self.command("console", page=page)
        return lines

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
