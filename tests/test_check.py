"""
Tests for C{twisted-sse check} without a network: each judgement of
L{twisted_sse._check} on made-up observations, the report, the HTTP/1.1
reader and the line linter of L{twisted_sse._exchange} and
L{twisted_sse._observe}, and a whole watch on fake connections driven by a
L{Clock}.  Real servers are in L{tests.test_check_process}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_sse._check import (
    CHECKS,
    Check,
    check_cache_control,
    check_content_encoding,
    check_content_length,
    check_content_type,
    check_cors,
    check_cors_preflight,
    check_delivery,
    check_first_byte,
    check_frames,
    check_framing,
    check_head,
    check_heartbeat,
    check_publish,
    check_resume,
    check_status,
    check_stream,
    judge,
    render_text,
)
from twisted_sse._exchange import Connector, H1Reader, Head, HTTPError
from twisted_sse._observe import (
    Arrival,
    ExchangeObservation,
    Issue,
    Observations,
    Plan,
    PublishObservation,
    ResumeObservation,
    StreamObservation,
    _LintParser,
    observe,
    timestamp_in,
)
from twisted_sse._url import URL as _URL

URL = "http://example.com/events"
SSE = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
)


def head(status: int = 200, *extra: tuple[str, str], **kwargs: Any) -> Head:
    """A response head: an event stream's headers, then ``extra``."""
    headers = kwargs.pop("headers", SSE)
    return Head(status=status, headers=(*headers, *extra), **kwargs)


def stream(**kwargs: Any) -> StreamObservation:
    """A healthy stream watched for 3 s, changed by ``kwargs``."""
    defaults: dict[str, Any] = {
        "url": URL,
        "final_url": URL,
        "head": head(),
        "head_at": 0.01,
        "first_byte_at": 0.01,
        "longest_silence": 0.5,
        "end": "window",
        "ended_at": 3.0,
        "lines": 6,
    }
    defaults.update(kwargs)
    defaults.setdefault("event_count", len(defaults.get("events", ())))
    return StreamObservation(**defaults)


def observed(**kwargs: Any) -> Observations:
    """Observations of a healthy stream over a 3 s watch, changed by ``kwargs``."""
    defaults: dict[str, Any] = {
        "url": URL,
        "started": 1_800_000_000.0,
        "window": 3.0,
        "idle": 30.0,
        "stream": stream(),
        "head_request": ExchangeObservation("HEAD", head(), 0.01),
    }
    defaults.update(kwargs)
    return Observations(**defaults)


def steady(count: int, every: float = 0.2, **kwargs: Any) -> tuple[Arrival, ...]:
    """``count`` events, one per read, ``every`` seconds apart."""
    return tuple(
        Arrival(at=0.1 + n * every, data=str(n), read=n + 1, **kwargs)
        for n in range(count)
    )


def reads_of(events: tuple[Arrival, ...]) -> tuple[tuple[float, int], ...]:
    """One read per distinct read number of ``events``."""
    seen: dict[int, float] = {}
    for event in events:
        seen.setdefault(event.read, event.at)
    return tuple((at, 10) for at in seen.values())


class JudgementTests(SynchronousTestCase):
    """Helpers for judging made-up observations."""

    def judged(
        self,
        check: Callable[[Observations], Check],
        obs: Observations,
        status: str,
        *words: str,
    ) -> Check:
        """Judge ``obs``; assert the status and that the reason has ``words``."""
        result = check(obs)
        self.assertEqual(result.status, status, result.reason)
        for word in words:
            self.assertIn(word, result.reason)
        return result


class StatusTests(JudgementTests):
    """check_status: the request must answer 200."""

    def test_200(self) -> None:
        """200 passes."""
        self.judged(check_status, observed(), "pass", "200")

    def test_redirects_named(self) -> None:
        """Redirects followed are counted, with the final URL."""
        obs = observed(
            stream=stream(redirects=((301, "/a"), (302, "/b")), final_url=URL + "/b")
        )
        self.judged(check_status, obs, "pass", "after 2 redirects", URL + "/b")

    def test_204(self) -> None:
        """204 fails: clients stop for good."""
        obs = observed(stream=stream(head=head(204)))
        self.judged(check_status, obs, "fail", "204", "never reconnect")

    def test_404(self) -> None:
        """Any other status fails, named."""
        obs = observed(stream=stream(head=head(404, reason="Not Found")))
        self.judged(check_status, obs, "fail", "HTTP 404 Not Found")

    def test_no_response(self) -> None:
        """No head in the watch fails, naming a buffering proxy as a cause."""
        obs = observed(
            stream=stream(head=None, error="no response in 3.0 s"), head_request=None
        )
        self.judged(check_status, obs, "fail", "no response in 3.0 s", "buffering")

    def test_no_response_but_head(self) -> None:
        """No head for the GET while HEAD was answered: buffering, plainly."""
        obs = observed(stream=stream(head=None, error="no response in 3.0 s"))
        self.judged(
            check_status, obs, "fail", "HEAD was answered in 10 ms", "buffering proxy"
        )

    def test_error(self) -> None:
        """A connection error is the reason."""
        obs = observed(stream=stream(head=None, error="more than 20 redirects"))
        self.judged(check_status, obs, "fail", "more than 20 redirects")


class HeaderTests(JudgementTests):
    """The stream's headers: type, caching, length, encoding, framing."""

    def test_content_type(self) -> None:
        """text/event-stream passes, in any case, with or without UTF-8."""
        for value in ["text/event-stream", "Text/Event-Stream; charset=UTF-8"]:
            obs = observed(stream=stream(head=head(headers=[("content-type", value)])))
            self.judged(check_content_type, obs, "pass")

    def test_wrong_content_type(self) -> None:
        """Another type fails, named."""
        obs = observed(
            stream=stream(head=head(headers=[("content-type", "text/plain")]))
        )
        self.judged(check_content_type, obs, "fail", "text/plain", "EventSource fails")

    def test_missing_content_type(self) -> None:
        """No Content-Type fails."""
        obs = observed(stream=stream(head=head(headers=[])))
        self.judged(check_content_type, obs, "fail", "missing")

    def test_other_charset(self) -> None:
        """Another charset warns: the stream is UTF-8 whatever it says."""
        value = "text/event-stream; charset=iso-8859-1"
        obs = observed(stream=stream(head=head(headers=[("content-type", value)])))
        self.judged(check_content_type, obs, "warn", "UTF-8")

    def test_cache_control(self) -> None:
        """no-cache or no-store pass; none warns; max-age or public fails."""
        cases = {
            "no-cache": "pass",
            "no-store, no-transform": "pass",
            "private": "warn",
            "max-age=60": "fail",
            "public": "fail",
        }
        for value, status in cases.items():
            headers = [("content-type", "text/event-stream"), ("cache-control", value)]
            obs = observed(stream=stream(head=head(headers=headers)))
            self.judged(check_cache_control, obs, status)
        obs = observed(stream=stream(head=head(headers=SSE[:1])))
        self.judged(check_cache_control, obs, "warn", "no Cache-Control")

    def test_content_length(self) -> None:
        """A Content-Length fails, naming the length; none passes."""
        self.judged(check_content_length, observed(), "pass")
        obs = observed(stream=stream(head=head(200, ("content-length", "40"))))
        self.judged(check_content_length, obs, "fail", "Content-Length: 40")

    def test_content_encoding(self) -> None:
        """gzip or br fails, named; identity passes."""
        self.judged(check_content_encoding, observed(), "pass")
        for coding in ["gzip", "br"]:
            obs = observed(stream=stream(head=head(200, ("content-encoding", coding))))
            self.judged(check_content_encoding, obs, "fail", coding, "compress")
        obs = observed(stream=stream(head=head(200, ("content-encoding", "identity"))))
        self.judged(check_content_encoding, obs, "pass")

    def test_framing(self) -> None:
        """Chunked and HTTP/2 pass; a length fails; the close warns."""
        cases = {"chunked": "pass", "h2": "pass", "length": "fail", "close": "warn"}
        for framing, status in cases.items():
            obs = observed(stream=stream(head=head(framing=framing)))
            self.judged(check_framing, obs, status)

    def test_skipped_without_a_stream(self) -> None:
        """Without a stream, the header checks are skipped."""
        obs = observed(stream=stream(head=head(404)))
        for check in [check_content_type, check_content_length, check_framing]:
            self.judged(check, obs, "skip")


class StreamTests(JudgementTests):
    """First byte, the connection held, frames, heartbeat."""

    def test_first_byte(self) -> None:
        """Prompt passes, late warns, none fails naming buffering."""
        self.judged(check_first_byte, observed(), "pass")
        late = observed(stream=stream(first_byte_at=2.5))
        self.judged(check_first_byte, late, "warn", "2.5 s", "retry:")
        none = observed(stream=stream(first_byte_at=None))
        self.judged(check_first_byte, none, "fail", "no byte of the body", "buffering")

    def test_stream_end(self) -> None:
        """Open to the end passes; ended by the server warns; broken fails."""
        self.judged(check_stream, observed(), "pass")
        ended = observed(stream=stream(end="eof", ended_at=1.0, retry=2000))
        self.judged(check_stream, ended, "warn", "ended the stream", "2000 ms")
        cut = observed(
            stream=stream(
                end="limit", error="dropped: a line longer than max_line_bytes (16 B)"
            )
        )
        self.judged(check_stream, cut, "fail", "a line longer than max_line_bytes")

    def test_frames(self) -> None:
        """Issues fail or warn by their level, counted; none passes."""
        self.judged(check_frames, observed(), "pass", "all valid")
        issues = (
            Issue("warn", "line 2: unknown field 'x'"),
            Issue("fail", "line 3: an id with a NUL", 4),
        )
        obs = observed(stream=stream(issues=issues))
        self.judged(check_frames, obs, "fail", "an id with a NUL (4 times)")
        obs = observed(stream=stream(issues=issues[:1]))
        self.judged(check_frames, obs, "warn", "unknown field")
        obs = observed(stream=stream(lines=0))
        self.judged(check_frames, obs, "skip", "no whole line")

    def test_heartbeat(self) -> None:
        """A silence of --idle or more fails, named; shorter passes."""
        self.judged(check_heartbeat, observed(), "pass")
        obs = observed(idle=1.0, stream=stream(longest_silence=1.2, silence_from=0.3))
        self.judged(check_heartbeat, obs, "fail", "silent for 1.2 s", "--idle 1 s")

    def test_heartbeat_unseen(self) -> None:
        """A stream quiet for most of a watch shorter than --idle warns."""
        obs = observed(stream=stream(longest_silence=2.9, trailing_silence=2.9))
        self.judged(check_heartbeat, obs, "warn", "watch longer")
        obs = evolve(obs, window=40.0)
        self.judged(check_heartbeat, obs, "pass")


class DeliveryTests(JudgementTests):
    """check_delivery: events arrive when sent, not in bursts."""

    def test_steady(self) -> None:
        """Events one per read, spread out, pass."""
        events = steady(10)
        obs = observed(stream=stream(events=events, reads=reads_of(events)))
        self.judged(check_delivery, obs, "pass", "10 events")

    def test_bursts(self) -> None:
        """
        Events held and let go together after silences fail: the
        buffering the server of a window does.
        """
        events = tuple(
            Arrival(at=1.0 + window, data=str(n), read=window + 1)
            for window in range(2)
            for n in range(5)
        )
        obs = observed(stream=stream(events=events, reads=reads_of(events)))
        self.judged(check_delivery, obs, "fail", "10 of 10 events", "2 burst", "buffer")

    def test_first_burst_counts_from_the_request(self) -> None:
        """A burst that came with a head held as long counts as one."""
        events = tuple(Arrival(at=1.8, data=str(n), read=1) for n in range(20))
        obs = observed(
            stream=stream(head_at=1.8, events=events, reads=reads_of(events))
        )
        self.judged(check_delivery, obs, "fail", "20 of 20")

    def test_stall_in_a_fast_stream(self) -> None:
        """
        A stream of an event every 5 ms that stalls once is not buffering:
        only the backlog that came at once is a burst.
        """
        events = steady(100, every=0.005)
        backlog = tuple(Arrival(at=1.2, data=str(n), read=500) for n in range(10))
        after = tuple(
            Arrival(at=1.2 + n * 0.005, data=str(n), read=501 + n)
            for n in range(1, 100)
        )
        events += backlog + after
        obs = observed(stream=stream(events=events, reads=reads_of(events)))
        self.judged(check_delivery, obs, "warn", "11 of 209 events", "1 burst")

    def test_one_small_burst_warns(self) -> None:
        """A burst among many single events only warns."""
        events = steady(10) + tuple(
            Arrival(at=4.0, data=str(n), read=99) for n in range(3)
        )
        obs = observed(window=5.0, stream=stream(events=events, reads=reads_of(events)))
        self.judged(check_delivery, obs, "warn", "3 of 13")

    def test_timestamps_spread(self) -> None:
        """Times in the data that show events held fail, even without a burst."""
        start = 1_800_000_000.0
        events = tuple(
            Arrival(at=1.0 + n * 0.3, read=n + 1, stamp=start + 0.2 * n - 0.5 * n)
            for n in range(5)
        )
        obs = observed(stream=stream(events=events, reads=reads_of(events)))
        self.judged(check_delivery, obs, "fail", "times in their data", "buffering")

    def test_timestamps_excuse_bursts(self) -> None:
        """Events sent together (the same time in each) may arrive together."""
        start = 1_800_000_000.0
        events = tuple(
            Arrival(at=1.0 + window, read=window + 1, stamp=start + 1.0 + window)
            for window in range(2)
            for n in range(5)
        )
        obs = observed(stream=stream(events=events, reads=reads_of(events)))
        self.judged(check_delivery, obs, "pass", "times in their data")

    def test_published_late(self) -> None:
        """A test event that takes over a second to arrive fails."""
        publishes = (
            PublishObservation(1, 0.6, ExchangeObservation("POST", head()), 2.1),
        )
        obs = observed(publishing=True, publishes=publishes)
        self.judged(check_delivery, obs, "fail", "1.5 s", "buffering proxy")

    def test_published_never(self) -> None:
        """A test event accepted but never seen fails."""
        publishes = (PublishObservation(1, 0.6, ExchangeObservation("POST", head())),)
        obs = observed(publishing=True, publishes=publishes)
        self.judged(check_delivery, obs, "fail", "never arrived")

    def test_published_prompt(self) -> None:
        """Test events that arrive at once pass."""
        publishes = (
            PublishObservation(1, 0.6, ExchangeObservation("POST", head()), 0.61),
        )
        obs = observed(publishing=True, publishes=publishes)
        self.judged(check_delivery, obs, "pass", "10 ms")

    def test_too_few(self) -> None:
        """Fewer than two events, and nothing published: skipped."""
        obs = observed(stream=stream(events=steady(1), event_count=1))
        self.judged(check_delivery, obs, "skip", "--publish")


class ResumeTests(JudgementTests):
    """check_resume: Last-Event-ID gets the events after it."""

    def resumed(self, *ids: str | None, **kwargs: Any) -> Observations:
        """A main stream with ids 1 2 3; resumed after 2 with ``ids``."""
        events = tuple(
            Arrival(at=1.0 + n, id=event_id, data=f"d{event_id}", read=n + 1)
            for n, event_id in enumerate(ids)
        )
        resume = ResumeObservation(
            after="2",
            expected="3",
            before=("1", "2"),
            first_data="d1",
            stream=stream(events=events, **kwargs),
        )
        return observed(resume=resume)

    def test_next(self) -> None:
        """The event after the id comes first: pass."""
        self.judged(check_resume, self.resumed("3"), "pass", "'3', the next event")

    def test_events_without_ids_first(self) -> None:
        """Events without an id are passed over: the first with one counts."""
        self.judged(check_resume, self.resumed(None, "3"), "pass")

    def test_from_the_start(self) -> None:
        """The stream's first event again: replay from the start."""
        self.judged(check_resume, self.resumed("1"), "fail", "from the start")

    def test_same_again(self) -> None:
        """The event of the id itself again fails."""
        self.judged(check_resume, self.resumed("2"), "fail", "'2' again")

    def test_skipped(self) -> None:
        """A later event first: the next one was skipped."""
        self.judged(check_resume, self.resumed("4"), "fail", "skipped '3'")

    def test_nothing(self) -> None:
        """Nothing after the id fails."""
        self.judged(check_resume, self.resumed(), "fail", "nothing came")

    def test_refused(self) -> None:
        """A failed resume request fails, with its status."""
        obs = self.resumed(head=head(500))
        self.judged(check_resume, obs, "fail", "HTTP 500")

    def test_no_ids(self) -> None:
        """A stream without ids is skipped, saying so."""
        obs = observed(stream=stream(events=steady(3)))
        self.judged(check_resume, obs, "skip", "no ids")
        obs = observed(stream=stream(events=steady(1, id="7")))
        self.judged(check_resume, obs, "skip", "two are needed")


class BesideTests(JudgementTests):
    """HEAD, CORS and publishing."""

    def test_head(self) -> None:
        """HEAD: prompt and empty passes; hung, with a body or 5xx fails."""
        self.judged(check_head, observed(), "pass", "no body")
        hung = ExchangeObservation("HEAD", error="no answer in 3.0 s")
        self.judged(check_head, observed(head_request=hung), "fail", "as a GET")
        body = ExchangeObservation("HEAD", head(), 0.01, body_bytes=12)
        self.judged(check_head, observed(head_request=body), "fail", "12 bytes")
        slow = ExchangeObservation("HEAD", head(), 1.5)
        self.judged(check_head, observed(head_request=slow), "warn", "1.5 s")
        refused = ExchangeObservation("HEAD", head(405), 0.01)
        self.judged(check_head, observed(head_request=refused), "warn", "405")
        broken = ExchangeObservation("HEAD", head(502), 0.01)
        self.judged(check_head, observed(head_request=broken), "fail", "502")

    def test_cors_skipped(self) -> None:
        """Without --origin, CORS is not judged."""
        self.judged(check_cors, observed(), "skip", "--origin")
        self.judged(check_cors_preflight, observed(), "skip", "--origin")

    def test_cors(self) -> None:
        """The stream must allow the origin, or any."""
        origin = "https://app.example"
        for value, status in [("*", "pass"), (origin, "pass"), ("https://x", "fail")]:
            obs = observed(
                origin=origin,
                stream=stream(head=head(200, ("access-control-allow-origin", value))),
            )
            self.judged(check_cors, obs, status)
        self.judged(check_cors, observed(origin=origin), "fail", "no Access-Control")

    def test_preflight(self) -> None:
        """The preflight must answer 2xx allowing the origin; Last-Event-ID too."""
        origin = "https://app.example"
        allow = ("access-control-allow-origin", "*")
        good = head(204, allow, ("access-control-allow-headers", "Last-Event-ID, X"))
        cases = [
            (ExchangeObservation("OPTIONS", good), "pass"),
            (ExchangeObservation("OPTIONS", head(204, allow)), "warn"),
            (ExchangeObservation("OPTIONS", head(405)), "fail"),
            (ExchangeObservation("OPTIONS", head(204)), "fail"),
            (ExchangeObservation("OPTIONS", error="no answer in 3.0 s"), "fail"),
        ]
        for preflight, status in cases:
            obs = observed(origin=origin, preflight=preflight)
            self.judged(check_cors_preflight, obs, status)

    def test_publish(self) -> None:
        """Test events: refused or lost fail; arrived pass with their latency."""
        self.judged(check_publish, observed(), "skip", "--publish")
        ok = ExchangeObservation("POST", head())
        refused = ExchangeObservation("POST", head(401), body=b'{"error": "token"}')
        cases = [
            ((PublishObservation(1, 0.6, refused),), "fail", "answered 401"),
            ((PublishObservation(1, 0.6, ok),), "fail", "never arrived"),
            ((PublishObservation(1, 0.6, ok, 0.605),), "pass", "5 ms"),
            ((PublishObservation(1, 0.6, ok, 2.0),), "warn", "1.4 s"),
        ]
        for publishes, status, word in cases:
            obs = observed(publishing=True, publishes=publishes)
            check = self.judged(check_publish, obs, status, word)
            self.assertIsInstance(check.details.get("latencies", []), list)


class ReportTests(SynchronousTestCase):
    """The report: every check, the exit code, JSON and the table."""

    def test_every_check_once(self) -> None:
        """The report has each check once, in order, with a status and reason."""
        report = judge(observed())
        names = [check.name for check in report.checks]
        self.assertEqual(len(names), len(CHECKS))
        self.assertEqual(len(set(names)), len(names))
        self.assertEqual(names[0], "status")
        self.assertEqual(report.exit_code, 0)

    def test_failure_exits_1(self) -> None:
        """One failed check makes the exit code 1."""
        obs = observed(stream=stream(head=head(200, ("content-encoding", "gzip"))))
        self.assertEqual(judge(obs).exit_code, 1)

    def test_json(self) -> None:
        """The JSON document has the URL, timings and each check's fields."""
        document = judge(observed()).to_json()
        text = json.dumps(document)
        self.assertEqual(json.loads(text)["url"], URL)
        self.assertEqual(document["result"], "pass")
        timings = document["timings"]
        assert isinstance(timings, dict)
        self.assertEqual(timings["response_head"], 0.01)
        checks = document["checks"]
        assert isinstance(checks, list)
        for check in checks:
            self.assertLessEqual({"name", "status", "reason"}, set(check))
            self.assertIn(check["status"], {"pass", "fail", "warn", "skip"})

    def test_table(self) -> None:
        """The table has a line per check and a summary; colour only if asked."""
        report = judge(observed())
        plain = render_text(report)
        self.assertNotIn("\x1b[", plain)
        for check in report.checks:
            self.assertIn(f"  {check.name}", plain)
        self.assertTrue(plain.rstrip().endswith("skipped"), plain)
        self.assertIn("\x1b[32mPASS\x1b[0m", render_text(report, colour=True))


class TimestampTests(SynchronousTestCase):
    """timestamp_in: the time an event's data says it was made."""

    def test_found(self) -> None:
        """Seconds, milliseconds, ISO 8601 with an offset; alone or in JSON."""
        cases = {
            "1800000000.5": 1800000000.5,
            '{"time": 1800000000}': 1800000000.0,
            '{"ts": 1800000000123}': 1800000000.123,
            '{"sent_at": "2027-01-15T08:00:00+00:00"}': 1800000000.0,
            "2027-01-15T08:00:00Z": 1800000000.0,
        }
        for data, expected in cases.items():
            self.assertAlmostEqual(timestamp_in(data) or 0.0, expected, places=3)

    def test_not_found(self) -> None:
        """Counters, text, naive times and other JSON have none."""
        for data in ["1", "hello", "2027-01-15T08:00:00", "[1800000000]", '{"n": 1}']:
            self.assertIsNone(timestamp_in(data), data)


class H1ReaderTests(SynchronousTestCase):
    """H1Reader: an HTTP/1.1 response, bounded, as it is on the wire."""

    CHUNKED = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    )

    def read(self, data: bytes, method: str = "GET", size: int = 0) -> H1Reader:
        reader = H1Reader(method)
        self.pieces: list[Head | bytes] = []
        step = size or len(data)
        for start in range(0, len(data), step):
            self.pieces += reader.feed(data[start : start + step])
        return reader

    def body(self) -> bytes:
        return b"".join(piece for piece in self.pieces if isinstance(piece, bytes))

    def test_chunked(self) -> None:
        """A chunked body is de-chunked, however the bytes are split."""
        for size in [0, 1, 2, 7]:
            reader = self.read(self.CHUNKED, size=size)
            self.assertTrue(reader.done)
            self.assertEqual(self.body(), b"hello world")
            assert reader.head is not None
            self.assertEqual(reader.head.framing, "chunked")
            self.assertEqual(reader.head.get("Content-Type"), ["text/event-stream"])
            self.assertIsNone(reader.end())

    def test_length(self) -> None:
        """A Content-Length body ends at its length; a cut one is reported."""
        reader = self.read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloXX")
        self.assertTrue(reader.done)
        self.assertEqual((self.body(), reader.extra), (b"hello", 2))
        reader = self.read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
        self.assertIn("2 bytes before the end", reader.end() or "")

    def test_close_delimited(self) -> None:
        """Without length or chunking, the body runs to the close."""
        reader = self.read(b"HTTP/1.0 200 OK\nContent-Type: x\n\nab")
        assert reader.head is not None
        self.assertEqual(
            (reader.head.framing, reader.head.version), ("close", "HTTP/1.0")
        )
        self.assertIsNone(reader.end())

    def test_head_request(self) -> None:
        """A HEAD response ends with its head; bytes after it are counted."""
        reader = self.read(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nretry: 1\n\n",
            method="HEAD",
        )
        self.assertTrue(reader.done)
        self.assertEqual((self.body(), reader.extra), (b"", 10))

    def test_interim(self) -> None:
        """A 1xx head is skipped; obs-fold lines join their header."""
        reader = self.read(
            b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n"
        )
        assert reader.head is not None
        self.assertEqual(reader.head.status, 200)
        self.assertEqual(reader.head.get("x-a"), ["one two"])

    def test_caps(self) -> None:
        """Heads past 16384 bytes or 500 lines, long chunk lines, raise at once."""
        with self.assertRaisesRegex(HTTPError, "longer than 16384 bytes"):
            H1Reader("GET").feed(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 20000)
        with self.assertRaisesRegex(HTTPError, "more than 500"):
            H1Reader("GET").feed(b"HTTP/1.1 200 OK\r\n" + b"X:\r\n" * 501)
        reader = H1Reader("GET")
        reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        with self.assertRaisesRegex(HTTPError, "chunk-size line"):
            reader.feed(b"1" * 2000)

    def test_malformed(self) -> None:
        """Bad status lines, headers, lengths and chunk sizes raise."""
        for data in [
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ]:
            with self.assertRaises(HTTPError, msg=data):
                H1Reader("GET").feed(data)

    def test_end_messages(self) -> None:
        """A close before or inside the response says where."""
        self.assertIn("without a response", H1Reader("GET").end() or "")
        reader = H1Reader("GET")
        reader.feed(b"HTTP/1.1 200")
        self.assertIn("inside the response head", reader.end() or "")
        reader = H1Reader("GET")
        reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        self.assertIn("no last chunk", reader.end() or "")


class LintTests(SynchronousTestCase):
    """The line linter: what is wrong in a stream's bytes."""

    def lint(self, data: bytes, end: bool = False) -> _LintParser:
        parser = _LintParser("", "")
        parser.feed(data)
        if end:
            parser.end()
        return parser

    def levels(self, parser: _LintParser) -> dict[str, str]:
        return {issue.message: issue.level for issue in parser.issues.values()}

    def test_clean(self) -> None:
        """A valid stream has no issue; own ids are noted per event."""
        parser = self.lint(
            b"\xef\xbb\xbfretry: 10\n: hi\n\nid: 1\ndata: a\n\ndata: b\n\n"
        )
        self.assertEqual(parser.issues, {})
        self.assertEqual(list(parser.own_ids), ["1", None])

    def test_misspelt_field(self) -> None:
        """'Data' and ' data' fail (clients drop them); unknown fields warn."""
        levels = self.levels(self.lint(b"Data: x\n data: y\nfoo: z\n\n"))
        self.assertEqual(sorted(levels.values()), ["fail", "fail", "warn"])
        self.assertTrue(any("'Data' is not 'data'" in m for m in levels))

    def test_id_and_retry(self) -> None:
        """An id with NUL and a retry not all digits fail; an empty retry warns."""
        levels = self.levels(self.lint(b"id: a\x00b\nretry: 1.5\nretry:\n\n"))
        self.assertEqual(
            sorted(levels.values()), ["fail", "fail", "warn"], list(levels)
        )

    def test_utf8_and_bom(self) -> None:
        """Invalid UTF-8 and a second BOM fail."""
        levels = self.levels(self.lint(b"data: \xff\n\xef\xbb\xbfdata: x\n\n"))
        self.assertEqual(list(levels.values()), ["fail", "fail"])

    def test_repeats_counted(self) -> None:
        """An issue on many lines is one issue with a count."""
        parser = self.lint(b"x: 1\n\n" * 5)
        (issue,) = parser.issues.values()
        self.assertEqual((issue.count, issue.message[:6]), (5, "line 1"))

    def test_kinds_bounded(self) -> None:
        """Made-up field names without end are noted as a bounded set."""
        parser = self.lint(b"".join(b"f%d: x\n" % n for n in range(1000)))
        self.assertLessEqual(len(parser.issues), 21)
        self.assertEqual(sum(issue.count for issue in parser.issues.values()), 1000)

    def test_unfinished_and_lone_cr(self) -> None:
        """An event cut by the end warns; lone CRs are counted."""
        parser = self.lint(b"data: a\r\rdata: b\r", end=True)
        self.assertIn("unfinished", parser.issues)
        self.assertEqual(parser.lone_crs, 3)


# A whole watch on fake connections.


class FakeTransport(StringTransport):
    """A transport whose closing reaches its protocol on the next turn."""

    def __init__(self, clock: Clock, protocol: IProtocol) -> None:
        super().__init__()
        self.clock = clock
        self.protocol = protocol
        self.closed = False

    def loseConnection(self) -> None:
        super().loseConnection()
        if not self.closed:
            self.closed = True
            self.clock.callLater(0, self.protocol.connectionLost, Failure(Exception()))

    def abortConnection(self) -> None:
        self.loseConnection()


class Net:
    """Fake connections: each is a protocol on a L{FakeTransport}."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.connections: list[tuple[_URL, IProtocol, FakeTransport]] = []

    def endpoint(self, url: _URL) -> FakeEndpoint:
        return FakeEndpoint(self, url)

    def requests(
        self, method: str = "GET"
    ) -> list[tuple[bytes, IProtocol, FakeTransport]]:
        """The connections whose request is ``method``, with the request bytes."""
        return [
            (transport.value(), protocol, transport)
            for _, protocol, transport in self.connections
            if transport.value().startswith(method.encode() + b" ")
        ]


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connects at once to a L{FakeTransport}."""

    def __init__(self, net: Net, url: _URL) -> None:
        self.net = net
        self.url = url

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert protocol is not None
        transport = FakeTransport(self.net.clock, protocol)
        protocol.makeConnection(transport)
        self.net.connections.append((self.url, protocol, transport))
        return succeed(protocol)


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class WatchTests(SynchronousTestCase):
    """observe(): the watch on fake connections and a clock."""

    def watch(self, **plan: Any) -> tuple[Clock, Net, Deferred[Observations]]:
        clock = Clock()
        net = Net(clock)
        connector = Connector(clock, endpoint_for=net.endpoint)
        options: dict[str, Any] = {"url": URL, "duration": 2.0}
        options.update(plan)
        done = Deferred.fromCoroutine(observe(clock, Plan(**options), connector))
        return clock, net, done

    def test_silent_server(self) -> None:
        """A server that never answers: the watch ends at --duration anyway."""
        clock, net, done = self.watch()
        self.assertEqual(len(net.requests("GET")) + len(net.requests("HEAD")), 2)
        clock.pump([0.5] * 4)
        clock.advance(0)
        obs = self.successResultOf(done)
        assert obs.stream is not None
        self.assertEqual(obs.stream.error, "no response in 2.0 s")
        self.assertEqual(judge(obs).exit_code, 1)
        self.assertTrue(all(t.closed for _, _, t in net.connections))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_request_headers(self) -> None:
        """The stream is asked for as a browser would, with the user's headers."""
        clock, net, _ = self.watch(headers=(("Authorization", "Bearer x"),))
        ((request, _, _),) = net.requests("GET")
        self.assertTrue(
            request.startswith(b"GET /events HTTP/1.1\r\nHost: example.com\r\n")
        )
        for line in [
            b"Accept: text/event-stream",
            b"Cache-Control: no-cache",
            b"Accept-Encoding: gzip, deflate, br",
            b"Authorization: Bearer x",
        ]:
            self.assertIn(line + b"\r\n", request)
        clock.pump([1.0] * 4)

    def test_redirect_loop(self) -> None:
        """A redirect loop ends after 20 redirects followed, and is said."""
        clock, net, done = self.watch()
        for _ in range(30):
            for _request, protocol, transport in net.requests("GET"):
                if not transport.closed:
                    protocol.dataReceived(
                        b"HTTP/1.1 302 Found\r\nLocation: /events\r\n"
                        b"Content-Length: 0\r\n\r\n"
                    )
            clock.advance(0)
        self.assertEqual(len(net.requests("GET")), 21)
        clock.pump([1.0] * 3)
        obs = self.successResultOf(done)
        assert obs.stream is not None
        self.assertEqual(obs.stream.error, "more than 20 redirects")

    def test_stream_recorded(self) -> None:
        """Reads, events, silences and the end of a stream are recorded."""
        clock, net, done = self.watch()
        ((_, stream, _),) = net.requests("GET")
        clock.advance(0.1)
        stream.dataReceived(STREAM_HEAD + chunk(b"retry: 500\n\n"))
        clock.advance(0.4)
        stream.dataReceived(chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n"))
        clock.pump([0.5] * 3)
        obs = self.successResultOf(done)
        watched = obs.stream
        assert watched is not None
        self.assertEqual(
            (watched.head_at, watched.first_byte_at, watched.event_count),
            (0.1, 0.1, 2),
        )
        self.assertEqual([event.data for event in watched.events], ["1", "2"])
        self.assertEqual(watched.retry, 500)
        self.assertEqual((watched.end, watched.ended_at), ("window", 2.0))
        self.assertAlmostEqual(watched.longest_silence, 1.5)
        self.assertAlmostEqual(watched.trailing_silence, 1.5)

    def test_resume(self) -> None:
        """After two ids, a second stream asks for what follows the first."""
        clock, net, done = self.watch()
        ((_, stream, _),) = net.requests("GET")
        stream.dataReceived(
            STREAM_HEAD + chunk(b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n")
        )
        requests = net.requests("GET")
        self.assertEqual(len(requests), 2)
        request, resumed, transport = requests[1]
        self.assertIn(b"Last-Event-ID: 1\r\n", request)
        resumed.dataReceived(STREAM_HEAD + chunk(b"id: 2\ndata: b\n\n"))
        self.assertTrue(transport.closed)
        clock.pump([0.5] * 4)
        obs = self.successResultOf(done)
        self.assertEqual(check_resume(obs).status, "pass")

    def test_publish(self) -> None:
        """Test events are POSTed as JSON with the token, and their arrival timed."""
        clock, net, done = self.watch(publish_url=URL, token="secret")
        ((_, stream, _),) = net.requests("GET")
        stream.dataReceived(STREAM_HEAD + chunk(b"retry: 500\n\n"))
        clock.advance(0.4)
        ((request, poster, _),) = net.requests("POST")
        self.assertIn(b"Authorization: Bearer secret\r\n", request)
        self.assertIn(b"Content-Type: application/json\r\n", request)
        body = json.loads(request.split(b"\r\n\r\n", 1)[1])
        poster.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        clock.advance(0.05)
        stream.dataReceived(chunk(b"data: " + body["data"].encode() + b"\n\n"))
        clock.pump([0.4] * 5)
        obs = self.successResultOf(done)
        self.assertEqual(len(obs.publishes), 3)
        self.assertAlmostEqual(obs.publishes[0].latency or 0.0, 0.05)
        self.assertEqual(check_publish(obs).status, "fail")  # two never came
