"""
Headless Chromium with several tabs in one or more browser contexts, for
tests of what tabs share (one connection, a leader, a handover), through
``tests/js/tabs.mjs``: the driver of ``tests/_browser.py`` with a tab index
on each command.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ._browser import BrowserError, Driver
from ._tools import CHROMIUM


class Tabs(Driver):
    """One Chromium, as a child process, whose tabs are numbered from 0."""

    def __init__(self) -> None:
        super().__init__("tabs.mjs", {"executablePath": CHROMIUM})

    @classmethod
    def for_test(cls, case: SynchronousTestCase) -> Tabs:
        """Tabs that ``case`` closes in a cleanup."""
        tabs = cls()
        case.addCleanup(tabs.close)
        return tabs

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
