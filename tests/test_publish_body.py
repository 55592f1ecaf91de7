"""
Tests for L{twisted_sse._publish_body}: what a publish request's body says,
from JSON, a form or plain text, or why it is refused.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any, cast

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from twisted_sse._publish_body import BadPublish, read_publish


def _request(body: bytes, content_type: str | None) -> DummyRequest:
    request = DummyRequest([b"channels", b"news"])
    request.method = b"POST"
    if content_type is not None:
        request.requestHeaders.setRawHeaders(b"Content-Type", [content_type])
    cast(Any, request).content = BytesIO(body)
    return request


class ReadPublishTests(SynchronousTestCase):
    """One event and its key from each body type, with the same checks."""

    def test_json(self) -> None:
        """A JSON object gives its data, event type, retry and key."""
        body = json.dumps({"data": "hi", "event": "ping", "retry": 5, "key": "k"})
        event, key = read_publish(_request(body.encode(), "application/json"), 1000)
        self.assertEqual(
            (event.data, event.event, event.retry, key), ("hi", "ping", 5, "k")
        )

    def test_form_same_as_json(self) -> None:
        """A form with the same fields gives the same event."""
        form = b"data=two+lines%0Asecond&event=ping&retry=5&key=k"
        event, key = read_publish(
            _request(form, "application/x-www-form-urlencoded"), 1000
        )
        self.assertEqual(
            (event.data, event.event, event.retry, key),
            ("two lines\nsecond", "ping", 5, "k"),
        )

    def test_plain_text(self) -> None:
        """Plain text, or no Content-Type, is the data itself, without a key."""
        for content_type in ("text/plain; charset=utf-8", None):
            event, key = read_publish(_request(b"just this", content_type), 1000)
            self.assertEqual((event.data, key), ("just this", None))

    def test_refusals(self) -> None:
        """Each bad body is refused with its status and a reason naming it."""
        for body, content_type, code, words in [
            (b"x" * 101, "text/plain", 413, "larger than 100 bytes"),
            (b"\xff", "text/plain", 400, "not UTF-8"),
            (b"<a/>", "application/xml", 415, "unsupported Content-Type"),
            (b"data=a&data=b", "application/x-www-form-urlencoded", 400, "'data'"),
            (b"data=x&id=7", "application/x-www-form-urlencoded", 400, "'id'"),
        ]:
            with self.assertRaises(BadPublish) as raised:
                read_publish(_request(body, content_type), 100)
            self.assertEqual(raised.exception.code, code, body)
            self.assertIn(words, raised.exception.message, body)

    def test_json_and_form_refuse_alike(self) -> None:
        """A bad retry is refused with the same reason as JSON and as a form."""
        reasons = []
        for body, content_type in [
            (b'{"data": "x", "retry": "soon"}', "application/json"),
            (b"data=x&retry=soon", "application/x-www-form-urlencoded"),
        ]:
            with self.assertRaises(BadPublish) as raised:
                read_publish(_request(body, content_type), 1000)
            reasons.append((raised.exception.code, raised.exception.message))
        self.assertEqual(reasons[0], reasons[1])
