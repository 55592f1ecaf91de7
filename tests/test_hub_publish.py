"""
Tests for L{twisted_sse._hub}'s publishing: C{POST /channels/{name}} and
L{Hub.publish}, the bodies accepted and the reasons for refusing one,
through a real C{twisted.web} Site with L{twisted_sse.testing.SSETestClient}
and a L{Clock}.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests._transports import TransportCase, over_both_transports
from twisted_sse._hub import MAX_JSON_DEPTH
from twisted_sse.testing import SSETestResponse

from ._helpers import EPOCH, TOKEN, BrokenBroker, HubFixture, answer, data

# Publishing


@over_both_transports
class PublishTests(TransportCase):
    """POST /channels/{name} publishes and answers the id."""

    def test_json(self) -> None:
        """A JSON body publishes data, event and retry; the answer is the id."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        response = hub.post_json(data="hello", event="greeting", retry=2500)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(answer(response), {"id": f"{EPOCH}-1"})
        self.assertEqual(
            subscriber.raw.split(b"\n\n", 1)[1],
            f"retry: 2500\nid: {EPOCH}-1\nevent: greeting\ndata: hello\n\n".encode(),
        )
        self.assertEqual(subscriber.retry, 2500)

    def test_json_values(self) -> None:
        """Data that is not a string is sent as its compact JSON text."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        values: list[Any] = [{"a": [1, 2]}, [1, "x"], 42, 1.5, True, None, "é"]
        for value in values:
            self.assertEqual(hub.post_json(data=value).code, 200)
        self.assertEqual(
            data(subscriber),
            ['{"a":[1,2]}', '[1,"x"]', "42", "1.5", "true", "null", "é"],
        )

    def test_multiline_data(self) -> None:
        """Data with line breaks arrives whole, one data line per line."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        hub.post_json(data="one\ntwo\r\nthree")
        self.assertIn(b"data: one\ndata: two\ndata: three\n\n", subscriber.raw)
        self.assertEqual(data(subscriber), ["one\ntwo\nthree"])

    def test_text_plain(self) -> None:
        """A text/plain body is the data of a message event."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        response = hub.post(b"plain text\nline 2", content_type="text/plain")
        self.assertEqual(answer(response), {"id": f"{EPOCH}-1"})
        self.assertEqual(data(subscriber), ["plain text\nline 2"])
        self.assertEqual(subscriber.events[0].type, "message")

    def test_no_content_type(self) -> None:
        """A body without a Content-Type is taken as text."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        self.assertEqual(hub.post(b"{not json", content_type=None).code, 200)
        self.assertEqual(data(subscriber), ["{not json"])

    def test_content_type_parameters(self) -> None:
        """Content-Type parameters and case do not matter."""
        hub = HubFixture(self)
        response = hub.post(
            b'{"data": "x"}', content_type="Application/JSON; charset=utf-8"
        )
        self.assertEqual(answer(response), {"id": f"{EPOCH}-1"})

    def test_ids_increase(self) -> None:
        """Each publish answers the next id of its channel."""
        hub = HubFixture(self)
        got = [answer(hub.post_json(data="x"))["id"] for _ in range(3)]
        self.assertEqual(got, [f"{EPOCH}-1", f"{EPOCH}-2", f"{EPOCH}-3"])

    def test_publish_kept_in_history(self) -> None:
        """Published events are in the history for resuming clients."""
        hub = HubFixture(self)
        hub.post_json(data="a")
        hub.post_json(data="b")
        self.assertEqual(data(hub.subscribe(last_event_id=f"{EPOCH}-0")), ["a", "b"])


@over_both_transports
class PublishRefusedTests(TransportCase):
    """Every refused publish gets a 4xx and a JSON reason."""

    def assert_refused(self, response: SSETestResponse, code: int, reason: str) -> None:
        self.assertEqual(response.code, code)
        self.assertEqual(response.header("Content-Type"), "application/json")
        error = answer(response)["error"]
        self.assertIn(reason, error)

    def setUp(self) -> None:
        self.hub = HubFixture(self, max_event_bytes=100)
        self.subscriber = self.hub.subscribe()

    def tearDown(self) -> None:
        # Nothing refused was published.
        self.assertEqual(self.subscriber.events, [])

    def test_publishing_disabled(self) -> None:
        """Without a configured token, publishing is off: 403 saying so."""
        hub = HubFixture(self, publish_token=None)
        response = hub.post(b'{"data": "x"}')
        self.assert_refused(
            response, 403, "publishing over HTTP is disabled: start the server with "
        )
        self.assertIn("--publish-token", answer(response)["error"])

    def test_no_token(self) -> None:
        """No Authorization header: 401 with WWW-Authenticate."""
        response = self.hub.post(b'{"data": "x"}', token=None)
        self.assert_refused(
            response, 401, "a valid Authorization: Bearer token is required"
        )
        self.assertEqual(
            response.header("WWW-Authenticate"), 'Bearer realm="twisted_sse"'
        )

    def test_wrong_token(self) -> None:
        """A wrong token: 401."""
        self.assert_refused(
            self.hub.post(b'{"data": "x"}', token="guess"), 401, "Bearer token"
        )

    def test_wrong_scheme(self) -> None:
        """The token in another scheme (Basic) is not accepted: 401."""
        response = self.hub.post(b'{"data": "x"}', authorization=f"Basic {TOKEN}")
        self.assert_refused(response, 401, "Bearer token")

    def test_scheme_case(self) -> None:
        """The Bearer scheme is case-insensitive."""
        response = self.hub.post(b'{"data": "x"}', authorization=f"bearer {TOKEN}")
        self.assertEqual(response.code, 200)
        self.subscriber.events.clear()

    def test_token_checked_first(self) -> None:
        """Without the token, even a bad body only learns 401."""
        self.assertEqual(self.hub.post(b"x" * 1000, token=None).code, 401)

    def test_too_large(self) -> None:
        """A body over max_event_bytes: 413 naming the limit."""
        body = json.dumps({"data": "x" * 200}).encode()
        self.assert_refused(
            self.hub.post(body), 413, "the body is larger than 100 bytes"
        )

    def test_at_limit(self) -> None:
        """A body of exactly max_event_bytes is accepted."""
        self.assertEqual(self.hub.post(b"y" * 100, content_type="text/plain").code, 200)
        self.subscriber.events.clear()

    def test_bad_json(self) -> None:
        """Invalid JSON: 400 saying so."""
        self.assert_refused(
            self.hub.post(b'{"data": '), 400, "the body is not valid JSON"
        )

    def test_not_object(self) -> None:
        """JSON that is not an object: 400."""
        self.assert_refused(
            self.hub.post(b'["data"]'), 400, "the JSON body must be an object"
        )

    def test_missing_data(self) -> None:
        """An object without data: 400."""
        self.assert_refused(
            self.hub.post(b'{"event": "x"}'), 400, "the field 'data' is required"
        )

    def test_unknown_field(self) -> None:
        """An unknown field: 400 naming it."""
        self.assert_refused(
            self.hub.post(b'{"data": "x", "id": "1"}'), 400, "unknown field 'id'"
        )

    def test_newline_in_event(self) -> None:
        """A line break in the event type (frame injection): 400."""
        for event in ("a\nevent: forged", "a\rb"):
            body = json.dumps({"data": "x", "event": event}).encode()
            self.assert_refused(
                self.hub.post(body), 400, "event must not contain a CR or LF"
            )

    def test_event_not_string(self) -> None:
        """An event type that is not a string: 400."""
        self.assert_refused(
            self.hub.post(b'{"data": "x", "event": 5}'), 400, "event must be a string"
        )

    def test_bad_retry(self) -> None:
        """A retry that is not an integer from 0 to 2**31 - 1 ms: 400."""
        for retry in ("-1", '"5"', "1.5", "true", "[]", "2147483648", "9" * 16):
            body = b'{"data": "x", "retry": %s}' % retry.encode()
            self.assert_refused(
                self.hub.post(body),
                400,
                "retry must be an integer from 0 to 2147483647 (ms)",
            )

    def test_largest_retry(self) -> None:
        """The largest retry a browser's timer holds is accepted and sent."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        response = hub.post(b'{"data": "x", "retry": 2147483647}')
        self.assertEqual(response.code, 200)
        self.assertEqual(subscriber.events[-1].data, "x")
        self.assertIn(b"retry: 2147483647\n", subscriber.raw)

    def test_deep_json(self) -> None:
        """A body nested past MAX_JSON_DEPTH: 400 naming the limit, no traceback."""
        hub = HubFixture(self, max_event_bytes=1_000_000)
        subscriber = hub.subscribe()
        for body in (
            b"[" * 60_000 + b"]" * 60_000,
            b'{"data": ' + b"[" * 60_000 + b"]" * 60_000 + b"}",
            b'{"data": ' + b"[" * (MAX_JSON_DEPTH) + b"]" * (MAX_JSON_DEPTH) + b"}",
            b'{"data": ' + b'{"a": ' * MAX_JSON_DEPTH + b"1" + b"}" * 65,
        ):
            self.assert_refused(
                hub.post(body, token=TOKEN),
                400,
                f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels",
            )
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(subscriber.events, [])
        # As deep as allowed: published.
        nested = b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1)
        response = hub.post(b'{"data": ' + nested + b"}")
        self.assertEqual(response.code, 200)
        self.assertEqual(subscriber.events[-1].data, nested.decode())

    def test_bad_key(self) -> None:
        """A key that is not a short string: 400."""
        hub = HubFixture(self)
        for key in ("5", json.dumps("k" * 257)):
            body = b'{"data": "x", "key": %s}' % key.encode()
            self.assert_refused(hub.post(body), 400, "key must be a string")

    def test_not_utf8(self) -> None:
        """A body that is not UTF-8: 400."""
        self.assert_refused(
            self.hub.post(b"\xff\xfe", content_type="text/plain"),
            400,
            "the body is not UTF-8",
        )

    def test_lone_surrogate(self) -> None:
        """Data that cannot be UTF-8 (a lone surrogate in JSON): 400."""
        self.assert_refused(
            self.hub.post(b'{"data": "\\ud800"}'),
            400,
            "data must not contain a lone surrogate",
        )

    def test_unsupported_type(self) -> None:
        """Another Content-Type: 415 naming the accepted ones."""
        self.assert_refused(
            self.hub.post(b"<data/>", content_type="application/xml"),
            415,
            "use application/json, application/x-www-form-urlencoded or text/plain",
        )

    def test_invalid_channel(self) -> None:
        """Publishing on an invalid channel name: 400."""
        self.assert_refused(
            self.hub.post(b'{"data": "x"}', channel="bad%20name"),
            400,
            "invalid channel name",
        )

    def test_broker_unavailable(self) -> None:
        """A broker that is down: 503 saying so, and when to try again."""
        hub = HubFixture(self, broker=BrokenBroker())
        response = hub.post(b'{"data": "x"}')
        self.assert_refused(response, 503, "broker unavailable: redis is down")
        self.assertEqual(response.header("Retry-After"), "1")


FORM = "application/x-www-form-urlencoded"


@over_both_transports
class FormPublishTests(TransportCase):
    """A form body (curl -d's default) publishes as its JSON twin does."""

    def post_form(self, hub: HubFixture, body: bytes) -> SSETestResponse:
        return hub.post(body, content_type=FORM)

    def test_curl_d(self) -> None:
        """curl -d data=hello -d event=ping publishes a ping whose data is hello."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        response = self.post_form(hub, b"data=hello&event=ping")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(answer(response), {"id": f"{EPOCH}-1"})
        self.assertEqual(
            subscriber.raw.split(b"\n\n", 1)[1],
            f"id: {EPOCH}-1\nevent: ping\ndata: hello\n\n".encode(),
        )

    def test_every_field(self) -> None:
        """retry is sent as the new reconnection time, key kept as the event's."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        response = self.post_form(hub, b"data=42&event=price&retry=2500&key=ACME")
        self.assertEqual(answer(response), {"id": f"{EPOCH}-1"})
        self.assertIn(b"retry: 2500\n", subscriber.raw)
        self.assertEqual((subscriber.retry, data(subscriber)), (2500, ["42"]))
        self.assertEqual([p.key for p in hub.memory.history_of("news")], ["ACME"])

    def test_form_encoding(self) -> None:
        """Percent-escapes, + for space and raw UTF-8 are decoded; lines stay lines."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        for body in (b"data=a+b%26c%0Ad%3De", "data=é%C3%A9".encode(), b"data="):
            self.assertEqual(self.post_form(hub, body).code, 200)
        self.assertEqual(data(subscriber), ["a b&c\nd=e", "éé", ""])

    def test_charset_parameter(self) -> None:
        """The form's media type is recognised with a charset and in any case."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        content_type = "Application/X-WWW-Form-Urlencoded; charset=UTF-8"
        self.assertEqual(hub.post(b"data=x", content_type=content_type).code, 200)
        self.assertEqual(data(subscriber), ["x"])

    def test_refused_as_json_is(self) -> None:
        """Each form a JSON body would be refused for gets JSON's status and reason."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        cases: list[tuple[bytes, dict[str, Any]]] = [
            (b"event=x", {"event": "x"}),
            (b"data=x&id=1", {"data": "x", "id": "1"}),
            (
                b"data=x&event=a%0Aevent:+forged",
                {"data": "x", "event": "a\nevent: forged"},
            ),
            (b"data=x&event=a%0Db", {"data": "x", "event": "a\rb"}),
            (b"data=x&retry=-1", {"data": "x", "retry": "-1"}),
            (b"data=x&retry=1.5", {"data": "x", "retry": "1.5"}),
            (b"data=x&retry=abc", {"data": "x", "retry": "abc"}),
            (b"data=x&retry=", {"data": "x", "retry": ""}),
            (b"data=x&retry=2147483648", {"data": "x", "retry": 2147483648}),
            (b"data=x&retry=" + b"9" * 16, {"data": "x", "retry": "9" * 16}),
            (b"data=x&key=", {"data": "x", "key": ""}),
            (b"data=x&key=" + b"k" * 257, {"data": "x", "key": "k" * 257}),
        ]
        for form, fields in cases:
            as_form = self.post_form(hub, form)
            as_json = hub.post_json(**fields)
            self.assertEqual(as_form.code, 400, form)
            self.assertEqual(as_form.header("Content-Type"), "application/json")
            self.assertEqual(answer(as_form), answer(as_json), form)
        self.assertEqual(subscriber.events, [])

    def test_repeated_field(self) -> None:
        """A field given twice: 400 naming it, nothing published."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        for body, name in [
            (b"data=a&data=b", "data"),
            (b"data=a&event=x&event=y", "event"),
            (b"data=a&retry=1&retry=1", "retry"),
            (b"key=k&data=a&key=k", "key"),
        ]:
            response = self.post_form(hub, body)
            self.assertEqual(response.code, 400)
            self.assertEqual(
                answer(response),
                {"error": f"the field {name!r} is given more than once"},
            )
        self.assertEqual(subscriber.events, [])

    def test_not_utf8(self) -> None:
        """A percent-escape or a raw byte that is not UTF-8: 400, as for text."""
        hub = HubFixture(self)
        for body in (b"data=%FF", b"data=%ED%A0%80", b"data=\xff", b"%FF=x"):
            response = self.post_form(hub, body)
            self.assertEqual(response.code, 400)
            self.assertEqual(answer(response), {"error": "the body is not UTF-8"})

    def test_json_sent_as_form(self) -> None:
        """JSON sent with curl -d's form type: 400 saying which type to send."""
        hub = HubFixture(self)
        response = self.post_form(hub, b'{"data": "x"}')
        self.assertEqual(response.code, 400)
        self.assertIn(
            "send it with Content-Type: application/json", answer(response)["error"]
        )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


class AnyBodyTests(SynchronousTestCase):
    """No request body, however odd, gets a 500 or logs a traceback."""

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        body=st.binary(max_size=300)
        | _JSON.map(lambda value: json.dumps(value).encode())
        | st.fixed_dictionaries(
            {"data": _JSON},
            optional={
                "event": _JSON,
                "retry": _JSON | st.integers(),
                "key": _JSON,
                "id": _JSON,
            },
        ).map(lambda value: json.dumps(value).encode())
        | st.lists(
            st.tuples(
                st.sampled_from(["data", "event", "retry", "key", "id"]),
                st.text(max_size=20) | st.integers().map(str),
            ),
            max_size=5,
        ).map(lambda pairs: urlencode(pairs).encode()),
        content_type=st.sampled_from(
            [
                None,
                "application/json",
                "text/plain",
                "text/plain; charset=utf-8",
                FORM,
                "x/y",
            ]
        ),
    )
    def test_never_a_server_error(self, body: bytes, content_type: str | None) -> None:
        """Every body is published (200) or refused with a 4xx and a reason."""
        hub = HubFixture(self, max_event_bytes=200)
        response = hub.post(body, content_type=content_type)
        self.assertIn(response.code, (200, 400, 413, 415))
        if response.code != 200:
            self.assertIsInstance(answer(response)["error"], str)
        self.assertEqual(self.flushLoggedErrors(), [])
        hub.check(self)
