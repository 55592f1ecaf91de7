"""
Tests for the stream's writers (L{twisted_sse._twisted.StreamWriter}) over
the test client's ``"tcp"`` transport: Twisted's own TCP connection on an
in-memory socket, so the direct writer that production takes for plain
HTTP/1.x runs here on a clock, deterministically.  The real-socket side of
the same path is in ``test_direct_write.py``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import Event, EventStream, EventStreamResource, SlowClientPolicy
from twisted_sse._testing._transports import MemorySocket
from twisted_sse._twisted import CORK_BYTES
from twisted_sse.testing import SSETestClient, SSETestResponse

from ._helpers import HubFixture, Keeper, data


class _Spy:
    """Records what is handed to a request's ``write``, then writes it."""

    def __init__(self, request: Any) -> None:
        self.frames: list[bytes] = []
        self._write = request.write
        request.write = self

    def __call__(self, data: bytes) -> None:
        self.frames.append(data)
        self._write(data)


class _Case(SynchronousTestCase):
    def open(
        self, transport: str = "tcp", http_version: str = "HTTP/1.1", **options: Any
    ) -> tuple[SSETestClient, SSETestResponse, EventStream]:
        """One stream, its response, and the client, over ``transport``."""
        self.clock = Clock()
        keeper = Keeper()
        options.setdefault("heartbeat", 0)
        self.resource = EventStreamResource(keeper, clock=self.clock, **options)
        client = SSETestClient(self.resource, self.clock, transport=transport)
        response = client.request("GET", "/", http_version=http_version)
        return client, response, keeper.streams[0]


class PathTests(_Case):
    """Which writer a stream takes."""

    def test_tcp_skips_request_write(self) -> None:
        """Over TCP, frames go to the socket, not through request.write."""
        client, response, stream = self.open()
        spy = _Spy(stream.request)
        for n in range(3):
            stream.send(Event(data=str(n)))
        self.assertEqual(spy.frames, [])
        self.assertEqual(data(response), ["0", "1", "2"])
        response.disconnect()
        client.assert_clean(testcase=self)

    def test_memory_uses_request_write(self) -> None:
        """Over the memory transport, every frame goes through request.write."""
        client, response, stream = self.open("memory")
        spy = _Spy(stream.request)
        for n in range(3):
            stream.send(Event(data=str(n)))
        self.assertEqual(len(spy.frames), 3)
        self.assertEqual(data(response), ["0", "1", "2"])
        response.disconnect()
        client.assert_clean(testcase=self)

    def test_access_log_bytes(self) -> None:
        """The direct writer counts what it sends, as request.write would."""
        client, response, stream = self.open()
        before = stream.request.sentLength
        stream.send(Event(data="counted"))
        self.assertEqual(
            stream.request.sentLength - before, len(Event(data="counted").encode())
        )
        response.disconnect()
        client.assert_clean(testcase=self)

    def test_http10_not_chunked(self) -> None:
        """Over HTTP/1.0 the direct writer sends frames raw; the close ends it."""
        client, response, stream = self.open(http_version="HTTP/1.0")
        stream.send(Event(data="raw"))
        self.assertIsNone(response.header("Transfer-Encoding"))
        stream.close()
        client.flush()
        self.assertTrue(response.finished)
        self.assertEqual(response.wire.split(b"\r\n\r\n", 1)[1], response.raw)
        self.assertEqual(data(response), ["raw"])
        client.assert_clean(testcase=self)


class RefusedTests(_Case):
    """What the socket does not take waits in Twisted's buffer, in order."""

    def test_refused_frames_wait_in_order(self) -> None:
        """Frames the socket refuses arrive, in order, once the client reads."""
        client, response, stream = self.open()
        response.pause_reading()
        for n in range(5):
            stream.send(Event(data=str(n)))
        self.assertEqual(response.events, [])
        self.assertFalse(stream.paused)  # Twisted's buffer is far from full
        response.resume_reading()
        self.assertEqual(data(response), [str(n) for n in range(5)])
        stream.send(Event(data="5"))
        self.assertEqual(data(response)[-1], "5")
        response.disconnect()
        client.assert_clean(testcase=self)

    def test_partial_send(self) -> None:
        """A frame the socket takes in part is finished from Twisted's buffer."""
        client, response, stream = self.open()
        head = len(response.wire)
        response.pause_reading(room=7)
        stream.send(Event(data="x" * 100))
        stream.send(Event(data="after"))
        self.assertEqual(len(response.wire) - head, 7)
        response.resume_reading()
        self.assertEqual(data(response), ["x" * 100, "after"])
        self.assertIsNone(response.protocol_error)
        response.disconnect()
        client.assert_clean(testcase=self)

    def test_pause_reading_leaves_producer(self) -> None:
        """Over TCP, a client not reading pauses nothing until the buffer fills."""
        client, response, stream = self.open()
        response.pause_reading()
        stream.send(Event(data="small"))
        self.assertFalse(stream.paused)
        response.resume_reading()
        self.assertEqual(data(response), ["small"])
        response.disconnect()
        client.assert_clean(testcase=self)

    def test_full_buffer_pauses_stream(self) -> None:
        """Past Twisted's buffer size the stream pauses and queues; all arrive."""
        client, response, stream = self.open(max_queue_bytes=10 * 1024 * 1024)
        response.pause_reading()
        sent: list[str] = []
        while not stream.paused:
            sent.append(str(len(sent)) * 16384)
            stream.send(Event(data=sent[-1]))
        for n in range(3):
            sent.append(f"queued {n}")
            stream.send(Event(data=sent[-1]))
        self.assertEqual(stream.queued, 3)
        response.resume_reading()
        self.assertFalse(stream.paused)
        self.assertEqual(stream.queued, 0)
        self.assertEqual(data(response), sent)
        response.disconnect()
        client.assert_clean(testcase=self)

    def test_overflow_cuts_off(self) -> None:
        """Under disconnect, a TCP client that lets the queue fill is cut off."""
        client, response, stream = self.open(
            max_queue_events=2, policy=SlowClientPolicy.DISCONNECT
        )
        response.pause_reading()
        while not stream.paused:
            stream.send(Event(data="y" * 16384))
        for _ in range(3):
            stream.send(Event(data="queued"))
        client.flush()
        self.assertEqual(stream.close_reason, "aborted")
        self.assertFalse(response.connected)
        self.assertFalse(response.finished)
        client.assert_clean(testcase=self)


class EndTests(_Case):
    """How a stream with bytes still buffered ends."""

    def test_close_waits_for_buffer(self) -> None:
        """close() sends what was buffered, then the terminating chunk."""
        client, response, stream = self.open()
        response.pause_reading()
        stream.send(Event(data="a"))
        stream.send(Event(data="b"))
        stream.close()
        client.flush()
        self.assertFalse(response.finished)
        self.assertTrue(response.connected)
        response.resume_reading()
        self.assertEqual(data(response), ["a", "b"])
        self.assertTrue(response.finished)
        self.assertTrue(response.wire.endswith(b"\r\n0\r\n\r\n"))
        client.assert_clean(testcase=self)

    def test_abort_drops_buffer(self) -> None:
        """abort() resets the connection: what was buffered never arrives."""
        client, response, stream = self.open()
        response.pause_reading(room=3)
        stream.send(Event(data="lost"))
        stream.abort()
        client.flush()
        self.assertFalse(response.connected)
        self.assertFalse(response.finished)
        self.assertEqual(response.events, [])
        client.assert_clean(testcase=self)

    def test_client_gone_while_buffered(self) -> None:
        """A client that goes away while frames wait ends the stream as lost."""
        client, response, stream = self.open()
        response.pause_reading()
        stream.send(Event(data="never read"))
        response.disconnect()
        self.assertEqual(stream.close_reason, "lost")
        self.assertEqual(self.resource.streams, set())
        client.assert_clean(testcase=self)

    def test_heartbeat_keeps_order(self) -> None:
        """A heartbeat while frames wait goes out after them, not before."""
        client, response, stream = self.open()
        response.pause_reading()
        stream.send(Event(data="a"))
        stream.heartbeat_tick()  # a frame was sent since the last tick
        stream.heartbeat_tick()  # this one writes the comment
        stream.send(Event(data="b"))
        response.resume_reading()
        self.assertEqual(data(response), ["a", "b"])
        body = response.raw
        self.assertLess(body.index(b"data: a"), body.index(b"\n:"))
        self.assertLess(body.index(b"\n:"), body.index(b"data: b"))
        response.disconnect()
        client.assert_clean(testcase=self)


class _SendSpy:
    """Counts the sends of a test connection's socket, and keeps what they got."""

    def __init__(self, stream: EventStream) -> None:
        socket = stream.request.channel.transport.socket
        self._send = socket.send
        socket.send = self
        self.sent: list[bytes] = []

    def __call__(self, data: bytes) -> int:
        self.sent.append(data)
        taken: int = self._send(data)
        return taken


class TurnTests(_Case):
    """
    The frames a stream is given during one reactor turn go out in one send
    at its end (the test client's turn: one of its calls).
    """

    def test_one_send_per_turn(self) -> None:
        """Three frames given in one turn: one send, with all three, in order."""
        client, response, stream = self.open()
        spy = _SendSpy(stream)
        with client._turns.operation():
            for n in range(3):
                stream.send(Event(data=str(n)))
            self.assertEqual(spy.sent, [])
        self.assertEqual(len(spy.sent), 1)
        self.assertEqual(data(response), ["0", "1", "2"])
        # Outside a turn of the client's (a test sending by itself), a frame
        # goes out as the call returns.
        stream.send(Event(data="3"))
        self.assertEqual(len(spy.sent), 2)
        self.assertEqual(data(response)[-1], "3")
        response.disconnect()
        client.assert_clean(testcase=self)

    def test_broadcast_joined_once(self) -> None:
        """Streams given the same frames in a turn send the same joined bytes."""
        keeper = Keeper()
        clock = Clock()
        resource = EventStreamResource(keeper, clock=clock, heartbeat=0)
        client = SSETestClient(resource, clock, transport="tcp")
        responses = [client.get("/") for _ in range(3)]
        streams = keeper.streams
        spies = [_SendSpy(stream) for stream in streams]
        frames = [Event(data=str(n)).encode() for n in range(4)]
        with client._turns.operation():
            for frame in frames:
                for stream in streams:
                    stream.write(frame)
        sent = [spy.sent for spy in spies]
        self.assertEqual([len(one) for one in sent], [1, 1, 1])
        self.assertIs(sent[0][0], sent[1][0])
        self.assertIs(sent[1][0], sent[2][0])
        for response in responses:
            self.assertEqual(data(response), ["0", "1", "2", "3"])
            response.disconnect()
        client.assert_clean(testcase=self)

    def test_close_in_the_same_turn(self) -> None:
        """Frames given in the turn a stream closes arrive before its end."""
        client, response, stream = self.open()
        before = stream.request.sentLength
        with client._turns.operation():
            stream.send(Event(data="a"))
            stream.send(Event(data="b"))
            stream.close(retry=500)
        self.assertEqual(data(response), ["a", "b"])
        # Counted once, for the access log.
        frames = Event(data="a").encode() + Event(data="b").encode()
        tail = Event(retry=500).encode()
        self.assertEqual(stream.request.sentLength - before, len(frames + tail))
        self.assertTrue(response.finished)
        self.assertTrue(response.raw.endswith(b"retry: 500\n\n"))
        client.assert_clean(testcase=self)

    def test_abort_in_the_same_turn(self) -> None:
        """A stream aborted in the turn it was given frames sends none of them."""
        client, response, stream = self.open()
        spy = _SendSpy(stream)
        with client._turns.operation():
            stream.send(Event(data="never"))
            stream.abort()
        self.assertEqual(spy.sent, [])
        self.assertEqual(response.events, [])
        self.assertFalse(response.connected)
        client.assert_clean(testcase=self)

    def test_client_gone_in_the_same_turn(self) -> None:
        """A client lost before the turn ends: nothing is sent, nothing fails."""
        client, response, stream = self.open()
        spy = _SendSpy(stream)
        with client._turns.operation():
            stream.send(Event(data="never"))
            stream.errback(Failure(ConnectionDone()))
        self.assertEqual(spy.sent, [])
        self.assertEqual(stream.close_reason, "lost")
        response.disconnect()
        client.assert_clean(testcase=self)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_turn_bounded(self) -> None:
        """
        A turn holds at most CORK_BYTES for a stream: past that its frames
        go out at once, so a client that does not read pauses the stream
        and its queue bound holds within the turn.
        """
        client, response, stream = self.open(
            max_queue_events=5, policy=SlowClientPolicy.DISCONNECT
        )
        response.pause_reading()
        spy = _SendSpy(stream)
        frame = Event(data="z" * 1000).encode()
        with client._turns.operation():
            sent = 0
            while not stream.paused:
                stream.write(frame)
                sent += 1
            self.assertLessEqual(sent * len(frame), 2 * CORK_BYTES + len(frame))
            self.assertEqual(len(spy.sent), 1)  # refused: Twisted holds it
            for _ in range(6):
                stream.write(frame)
            self.assertEqual(stream.close_reason, "aborted")
        self.assertFalse(response.connected)
        client.assert_clean(testcase=self)


class AnswerFirstTests(SynchronousTestCase):
    """A publish's answer leaves before the frames its event gave subscribers."""

    transport = "tcp"

    def test_answer_before_fan_out(self) -> None:
        """The publisher's socket is written first, then each subscriber's."""
        hub = HubFixture(self)
        subscribers = [hub.subscribe() for _ in range(3)]
        sent: list[bytes] = []
        send = MemorySocket.send

        def recording(socket: MemorySocket, data: bytes | memoryview) -> int:
            sent.append(bytes(data))
            return send(socket, data)

        self.patch(MemorySocket, "send", recording)
        response = hub.post(b'{"data": "hello"}')
        self.assertEqual(response.code, 200)
        self.assertIn(b'{"id": ', sent[0])
        self.assertEqual([b"data: hello" in one for one in sent[1:]], [True] * 3)
        for subscriber in subscribers:
            self.assertEqual(data(subscriber), ["hello"])


_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 40000)),
        st.tuples(st.just("pause"), st.integers(0, 70000)),
        st.tuples(st.just("resume"), st.just(0)),
        st.tuples(st.just("tick"), st.just(0)),
    ),
    max_size=30,
)


class OrderPropertyTests(_Case):
    """However the socket takes the bytes, the client gets every event once."""

    @settings(max_examples=60, deadline=None)
    @given(st.lists(_OPERATIONS, max_size=4))
    def test_every_event_once_in_order(
        self, turns: list[list[tuple[str, int]]]
    ) -> None:
        """
        Sends, pauses with any room, resumes and heartbeats lose nothing,
        whether each runs on its own or several share a reactor turn.
        """
        client, response, stream = self.open(max_queue_bytes=64 * 1024 * 1024)
        sent: list[str] = []
        for number, operations in enumerate(turns):
            # Every other group runs in one turn, the others call by call.
            with client._turns.operation() if number % 2 else nullcontext():
                for operation, size in operations:
                    if operation == "send":
                        sent.append(f"{len(sent)}:" + "z" * size)
                        stream.send(Event(data=sent[-1]))
                    elif operation == "pause":
                        response.pause_reading(room=size)
                    elif operation == "resume":
                        response.resume_reading()
                    else:
                        stream.heartbeat_tick()
        response.resume_reading()
        self.assertIsNone(response.protocol_error)
        self.assertEqual(data(response), sent)
        self.assertTrue(stream.closed is False)
        response.disconnect()
        client.assert_clean(testcase=self)
