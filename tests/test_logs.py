"""
Tests for the operator-facing logs: the redacting access log, the JSON log
observer, and the structured stream events.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.web.http_headers import Headers

from tests._transports import TransportCase, over_both_transports
from twisted_sse import (
    EventStreamResource,
    access_log_formatter,
    counter,
    json_log_observer,
)


class FakeRequest:
    """The attributes an access log formatter reads."""

    def __init__(self, uri: bytes, referrer: bytes | None = None) -> None:
        self.uri = uri
        self.method = b"GET"
        self.clientproto = b"HTTP/1.1"
        self.code = 200
        self.sentLength = 42
        self.requestHeaders = Headers()
        if referrer is not None:
            self.requestHeaders.addRawHeader(b"referer", referrer)
        self.requestHeaders.addRawHeader(b"user-agent", b"test-agent")
        self.requestHeaders.addRawHeader(b"authorization", b"Bearer header-secret")

    def getClientAddress(self) -> IPv4Address:
        return IPv4Address("TCP", "192.0.2.7", 5555)

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(name)
        return values[0] if values else None


@over_both_transports
class AccessLogTests(TransportCase):
    """The access log never records a token."""

    def test_combined_format(self) -> None:
        """A request without secrets logs in the combined log format."""
        line = access_log_formatter("[ts]", FakeRequest(b"/events?x=1"))
        self.assertEqual(
            line,
            '"192.0.2.7" - - [ts] "GET /events?x=1 HTTP/1.1" 200 42 "-" "test-agent"',
        )

    def test_query_token_redacted(self) -> None:
        """access_token in the query string is replaced, other values kept."""
        line = access_log_formatter(
            "[ts]", FakeRequest(b"/channels/a?access_token=s3cret&lastEventId=5")
        )
        self.assertNotIn("s3cret", line)
        self.assertIn("access_token=REDACTED&lastEventId=5", line)

    def test_referrer_token_redacted(self) -> None:
        """A token in the referrer's query string is replaced too."""
        line = access_log_formatter(
            "[ts]", FakeRequest(b"/", referrer=b"https://app.example/?token=abc123")
        )
        self.assertNotIn("abc123", line)
        self.assertIn("token=REDACTED", line)

    def test_headers_not_logged(self) -> None:
        """The Authorization header never appears in the access log."""
        line = access_log_formatter("[ts]", FakeRequest(b"/"))
        self.assertNotIn("header-secret", line)

    def test_quotes_escaped(self) -> None:
        """A double quote in the URI cannot break the log line's fields."""
        line = access_log_formatter("[ts]", FakeRequest(b'/a?b="c'))
        self.assertIn('/a?b=\\"c', line)


@over_both_transports
class JSONLogTests(TransportCase):
    """twistd --logger twisted_sse.json_log_observer writes JSON lines."""

    def test_one_json_object_per_line(self) -> None:
        """Each event becomes one JSON object on its own line of stdout."""
        captured = io.StringIO()
        self.patch(sys, "stdout", captured)
        observer = json_log_observer()
        observer({"log_format": "hello {who}", "who": "world", "log_time": 1.0})
        observer({"log_format": "again", "log_time": 2.0})
        lines = [line for line in captured.getvalue().split("\x1e") if line.strip()]
        self.assertEqual(len(lines), 2)
        self.assertEqual(json.loads(lines[0])["who"], "world")


@over_both_transports
class StreamLogTests(TransportCase):
    """Stream open and close are logged with structured fields."""

    def test_open_close_fields(self) -> None:
        """Open and close events carry peer, path, reason and duration."""
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        clock = Clock()
        resource = EventStreamResource(counter(1), clock=clock, heartbeat=0)
        client = self.client_for(resource, clock=clock)
        response = client.get("/events?access_token=hidden")
        client.advance(2.5)
        response.disconnect()
        client.flush()
        mine = [e for e in events if str(e.get("log_format", "")).startswith("Stream")]
        opened, closed = mine
        self.assertEqual(opened["path"], "/events")
        self.assertIn("peer", opened)
        self.assertEqual(closed["reason"], "lost")
        self.assertEqual(closed["duration"], 2.5)
        self.assertEqual(closed["frames"], 2)
        rendered = json.dumps([dict(e) for e in mine], default=_text)
        self.assertNotIn("hidden", rendered)


def _text(value: Any) -> str:
    return repr(value)
