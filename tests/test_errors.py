"""
Tests for L{twisted_sse._errors}: the one JSON shape of every error answer.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from twisted_sse._errors import (
    ErrorResource,
    error_body,
    json_error,
    method_not_allowed,
    no_channel,
)


class ErrorTests(SynchronousTestCase):
    """Every refusal is {"error": reason} as application/json."""

    def test_body(self) -> None:
        """The body is one JSON object with the reason, and a newline."""
        body = error_body('a "quoted" reason')
        self.assertTrue(body.endswith(b"\n"))
        self.assertEqual(json.loads(body), {"error": 'a "quoted" reason'})

    def test_json_error(self) -> None:
        """The status is set, with the JSON type and no caching."""
        request = DummyRequest([b""])
        body = json_error(request, 404, "not here")
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"Content-Type"),
            [b"application/json"],
        )
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"Cache-Control"), [b"no-store"]
        )
        self.assertEqual(json.loads(body), {"error": "not here"})

    def test_method_not_allowed(self) -> None:
        """A 405 names the method, and the allowed ones in Allow and the reason."""
        request = DummyRequest([b""])
        request.method = b"PUT"
        body = method_not_allowed(request, [b"GET", b"HEAD"])
        self.assertEqual(request.responseCode, 405)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"Allow"), [b"GET, HEAD"]
        )
        self.assertEqual(
            json.loads(body), {"error": "method PUT not allowed here: use GET, HEAD"}
        )

    def test_no_channel(self) -> None:
        """The 404 of a path without a channel names where channels are."""
        self.assertIn("/api/channels/{name}", no_channel([b"api", b"channels"]))

    def test_error_resource(self) -> None:
        """An ErrorResource answers every method and every path below it."""
        resource = ErrorResource(404, "nothing")
        self.assertTrue(resource.isLeaf)
        for method in (b"GET", b"POST", b"DELETE"):
            request = DummyRequest([b"a", b"b"])
            request.method = method
            self.assertEqual(json.loads(resource.render(request)), {"error": "nothing"})
            self.assertEqual(request.responseCode, 404)
