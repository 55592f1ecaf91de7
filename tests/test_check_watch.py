"""
Tests for L{twisted_sse._check._watch}: a whole watch, through the
connector, the exchanges and recorders, on fake connections driven by a
L{Clock}.  Redirects are L{tests.test_check_fetch}'s; real servers are in
L{tests.test_check_process}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._check import Connector, judge
from twisted_sse._check._observations import Observations
from twisted_sse._check._request_checks import check_publish
from twisted_sse._check._stream_checks import check_resume
from twisted_sse._check._watch import Plan, observe

from ._check_fakes import STREAM_HEAD, URL, Net, chunk


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
