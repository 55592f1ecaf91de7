"""
What the package knows of Twisted's internals (:mod:`twisted_sse._twisted`):
each piece is checked before use, a failed check logs one line and takes
the road that needs nothing private, and no other module of the package
names one of Twisted's private attributes or classes.
"""

from __future__ import annotations

import ast
import types
from pathlib import Path
from typing import Any, cast

from twisted.internet.tcp import Connection
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Request

import twisted_sse
from twisted_sse import _twisted

#: Twisted's private names (and the undocumented ``notifications``) that
#: the package uses, all in ``_twisted``.  ``_channel`` (the protocol
#: proxy's channel, also read there) is left out: ``_broker`` has a method
#: of its own by that name.
TWISTED_PRIVATES = frozenset(
    {
        "_GenericHTTPChannelProtocol",
        "_genericHTTPChannelProtocolFactory",
        "_cleanup",
        "_conn",
        "_encoder",
        "_inFakeHead",
        "_rawHeaders",
        "_tempDataBuffer",
        "notifications",
    }
)

PACKAGE = Path(twisted_sse.__file__).parent


def _named(tree: ast.AST) -> set[str]:
    """The names ``tree``'s code uses: attributes, names, imports, strings."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.alias):
            found.update(node.name.split("."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
    return found & TWISTED_PRIVATES


def _requests() -> tuple[Request, Connection]:
    """A Twisted request on an HTTP/1.1 channel over an unconnected TCP transport."""
    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    request = Request(channel, parsePOSTFormSubmission=False)
    transport = Connection.__new__(Connection)
    channel.transport = transport
    request.clientproto = b"HTTP/1.1"
    return request, transport


class OneModuleTests(SynchronousTestCase):
    """Twisted's private names are in one module."""

    def test_only_in_twisted(self) -> None:
        """No module but ``_twisted`` names one of Twisted's privates."""
        offenders = {}
        for path in sorted(PACKAGE.rglob("*.py")):
            if path.name == "_twisted.py" and path.parent == PACKAGE:
                continue
            names = _named(ast.parse(path.read_text(), str(path)))
            if names:
                offenders[str(path.relative_to(PACKAGE))] = sorted(names)
        self.assertEqual(offenders, {})

    def test_list_is_true(self) -> None:
        """Every name of the list is one ``_twisted`` uses (keep it current)."""
        text = (PACKAGE / "_twisted.py").read_text()
        self.assertEqual(
            {name for name in TWISTED_PRIVATES if name in text}, TWISTED_PRIVATES
        )


class ChecksTests(SynchronousTestCase):
    """Each piece is checked at first use, with a fallback and one log line."""

    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        self.patch(
            _twisted, "_log", Logger(observer=cast(ILogObserver, self.events.append))
        )
        self.patch(_twisted, "_WARNED", set())
        self.patch(_twisted, "_DIRECT_CLASSES", {})

    def test_direct_path(self) -> None:
        """Twisted's own request, channel and TCP transport take the direct path."""
        request, transport = _requests()
        transport.socket = cast(Any, None)
        transport._tempDataBuffer = []
        self.assertIs(_twisted.direct_transport(request), transport)
        self.assertEqual(self.events, [])

    def test_direct_path_unexpected(self) -> None:
        """A TCP transport without the buffer expected: one warning, the plain path."""
        request, transport = _requests()
        transport.socket = cast(Any, None)
        self.assertIsNone(_twisted.direct_transport(request))
        other, _ = _requests()
        other.clientproto = b"HTTP/1.0"
        self.assertIsNone(_twisted.direct_transport(other))
        self.assertEqual(len(self.events), 1)
        self.assertIn(
            "streams write through request.write", self.events[0]["log_format"]
        )

    def test_not_twisted_own(self) -> None:
        """Another transport takes the plain path without a warning."""
        request, _ = _requests()
        request.channel.transport = cast(Any, types.SimpleNamespace())
        self.assertIsNone(_twisted.direct_transport(request))
        self.assertEqual(self.events, [])

    def test_kept_headers(self) -> None:
        """An open stream's request headers read as they did, kept in tuples."""
        self.patch(_twisted, "_KEEPABLE", None)
        request, _ = _requests()
        request.requestHeaders.addRawHeader(b"Accept", b"text/event-stream")
        _twisted._slim_request(request)
        self.assertEqual(
            request.requestHeaders.getRawHeaders(b"accept"), (b"text/event-stream",)
        )
        self.assertEqual(self.events, [])

    def test_kept_headers_unexpected(self) -> None:
        """Headers kept differently: one warning, the request headers as they were."""
        self.patch(_twisted, "_KEEPABLE", None)
        self.patch(_twisted, "_headers_keepable", lambda: False)
        request, _ = _requests()
        headers = request.requestHeaders
        _twisted._slim_request(request)
        _twisted._slim_request(_requests()[0])
        self.assertIs(request.requestHeaders, headers)
        self.assertIsInstance(headers, Headers)
        self.assertEqual(len(self.events), 1)
        self.assertIn("keeps Headers differently", self.events[0]["log_format"])

    def test_h2_unexpected(self) -> None:
        """An HTTP/2 stream without its connection: nothing to wait for, one warning."""
        channel: Any = types.SimpleNamespace(streamID=1)
        self.assertFalse(_twisted.h2_stream_pending(channel))
        self.assertIsNone(_twisted.h2_transport(channel))
        self.assertEqual(len(self.events), 1)
        self.assertIn("a drain does not wait", self.events[0]["log_format"])

    def test_h2(self) -> None:
        """An HTTP/2 stream's frames are pending while its connection holds it."""
        transport = object()
        connection = types.SimpleNamespace(streams={1: None}, transport=transport)
        channel: Any = types.SimpleNamespace(streamID=1, _conn=connection)
        self.assertTrue(_twisted.h2_stream_pending(channel))
        self.assertIs(_twisted.h2_transport(channel), transport)
        del connection.streams[1]
        self.assertFalse(_twisted.h2_stream_pending(channel))
        self.assertEqual(self.events, [])
