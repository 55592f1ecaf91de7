"""
Tests for L{twisted_sse._redis._protocol.RedisProtocol}: commands packed by
hiredis, replies matched in order to their Deferreds however the bytes are
cut, errors, reply timeouts on a L{Clock}, and what a lost connection does
to the commands waiting for a reply.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import BrokerUnavailable
from twisted_sse._redis._protocol import RedisCommandError, RedisProtocol, Reply

from ._redis_tools import ClosingTransport, commands_in, connect


@frozen
class _Status:
    text: str


@frozen
class _Error:
    text: str


def _resp(value: Any) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, _Status):
        return b"+%s\r\n" % value.text.encode()
    if isinstance(value, _Error):
        return b"-%s\r\n" % value.text.encode()
    return b"*%d\r\n" % len(value) + b"".join(_resp(item) for item in value)


_line = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)
_replies = st.recursive(
    st.none()
    | st.binary(max_size=40)
    | st.integers(-(2**63), 2**63 - 1)
    | st.builds(_Status, _line)
    | st.builds(_Error, _line),
    lambda children: st.lists(children, max_size=5),
    max_leaves=30,
)


def _expected(value: Any) -> Any:
    """What the protocol gives for ``value`` inside an array."""
    if isinstance(value, _Status):
        return value.text.encode()
    if isinstance(value, _Error):
        return ("error", value.text)
    if isinstance(value, list):
        return [_expected(item) for item in value]
    return value


def _plain(value: Reply) -> Any:
    if isinstance(value, RedisCommandError):
        return ("error", str(value))
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _outcome(test: SynchronousTestCase, sent: Deferred[Reply]) -> Any:
    """A fired command's reply, made plain, or its error."""
    results: list[Any] = []
    sent.addBoth(results.append)
    test.assertEqual(len(results), 1, "the command has no reply yet")
    result = results[0]
    if isinstance(result, Exception) or hasattr(result, "value"):
        error = result.value if hasattr(result, "value") else result
        test.assertIsInstance(error, RedisCommandError)
        return ("refused", str(error))
    return _plain(result)


class _Connected:
    """A protocol on a closing in-memory transport, with its clock."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.clock = Clock()
        self.made: list[RedisProtocol] = []
        self.lost: list[RedisProtocol] = []
        self.protocol = RedisProtocol(
            self.clock, timeout, on_made=self.made.append, on_lost=self.lost.append
        )
        self.transport: ClosingTransport = connect(self.protocol)


class FramingTests(SynchronousTestCase):
    """Commands out, replies in."""

    def test_packs_commands(self) -> None:
        """A command goes out as a RESP array of bulk strings."""
        connected = _Connected()
        connected.protocol.execute("SET", b"k\r\n", 42)
        self.assertEqual(
            connected.transport.value(),
            b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n42\r\n",
        )

    @given(st.lists(_replies, min_size=1, max_size=5), st.data())
    @settings(max_examples=300, deadline=None)
    def test_any_chunking(self, replies: list[Any], data: st.DataObject) -> None:
        """However the replies are cut, each command gets its own, in order."""
        connected = _Connected()
        sent = [connected.protocol.execute("PING") for _ in replies]
        wire = b"".join(_resp(reply) for reply in replies)
        cuts = sorted(
            data.draw(st.lists(st.integers(0, len(wire)), max_size=10), label="cuts")
        )
        for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
            connected.protocol.dataReceived(wire[start:end])
        expected = []
        for reply in replies:
            if isinstance(reply, _Error):
                text = reply.text[4:] if reply.text.startswith("ERR ") else reply.text
                expected.append(("refused", f"Redis refused 'PING': {text}"))
            else:
                expected.append(_expected(reply))
        self.assertEqual([_outcome(self, each) for each in sent], expected)
        self.assertEqual(connected.protocol.pending, 0)
        self.assertIsNone(connected.transport.closed)

    def test_error_reply(self) -> None:
        """An error reply fails its command with RedisCommandError, and only it."""
        connected = _Connected()
        refused = connected.protocol.execute("EVALSHA", "abc", 0)
        fine = connected.protocol.execute("PING")
        connected.protocol.dataReceived(b"-NOSCRIPT No matching script.\r\n+PONG\r\n")
        error = self.failureResultOf(refused, RedisCommandError).value
        self.assertEqual(
            str(error), "Redis refused 'EVALSHA': NOSCRIPT No matching script."
        )
        self.assertIsInstance(error, BrokerUnavailable)
        self.assertEqual(self.successResultOf(fine), b"PONG")

    def test_errors_inside_arrays(self) -> None:
        """Errors in an array (a script's, EXEC's) stay values in the array."""
        connected = _Connected()
        sent = connected.protocol.execute("EXEC")
        connected.protocol.dataReceived(
            b"*3\r\n+OK\r\n-WRONGTYPE Operation against a key\r\n*2\r\n$-1\r\n*0\r\n"
        )
        reply = self.successResultOf(sent)
        assert isinstance(reply, list)
        ok, error, nested = reply
        self.assertEqual(ok, b"OK")
        self.assertIsInstance(error, RedisCommandError)
        self.assertEqual(str(error), "WRONGTYPE Operation against a key")
        self.assertEqual(nested, [None, []])

    def test_bytes_stay_bytes(self) -> None:
        """Bulk strings are bytes, whatever they hold; numbers in them stay text."""
        connected = _Connected()
        sent = connected.protocol.execute("XRANGE")
        connected.protocol.dataReceived(b"*2\r\n$2\r\n\xff\xfe\r\n$2\r\n42\r\n")
        self.assertEqual(self.successResultOf(sent), [b"\xff\xfe", b"42"])

    def test_garbage_aborts(self) -> None:
        """Bytes that are not RESP2 abort the connection; pending commands fail."""
        connected = _Connected()
        sent = connected.protocol.execute("PING")
        connected.protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
        self.assertEqual(connected.transport.closed, "aborted")
        self.failureResultOf(sent, BrokerUnavailable)
        self.flushLoggedErrors()

    def test_reply_to_nothing_aborts(self) -> None:
        """A reply nobody asked for means the stream is out of step: abort."""
        connected = _Connected()
        connected.protocol.dataReceived(b"+OK\r\n")
        self.assertEqual(connected.transport.closed, "aborted")

    def test_tcp_nodelay(self) -> None:
        """TCP_NODELAY is set when connected, and on_made is told."""
        connected = _Connected()
        self.assertTrue(connected.transport.no_delay)
        self.assertEqual(connected.made, [connected.protocol])

    def test_bad_argument(self) -> None:
        """An argument hiredis cannot pack fails that command only, at once."""
        connected = _Connected()
        self.failureResultOf(connected.protocol.execute("SET", None), TypeError)  # type: ignore[arg-type]
        self.assertEqual(connected.protocol.pending, 0)


class TimeoutTests(SynchronousTestCase):
    """A reply that does not come in time."""

    def test_late_reply_aborts(self) -> None:
        """Past its timeout, the connection is aborted; every pending command fails."""
        connected = _Connected(timeout=5.0)
        first = connected.protocol.execute("PING")
        connected.clock.advance(1)
        second = connected.protocol.execute("PING")
        connected.clock.advance(3.9)
        self.assertIsNone(connected.transport.closed)
        connected.clock.advance(0.1)
        self.assertEqual(connected.transport.closed, "aborted")
        for sent in (first, second):
            error = self.failureResultOf(sent, BrokerUnavailable).value
            self.assertEqual(str(error), "Redis did not answer in time")
        self.assertEqual(connected.lost, [connected.protocol])
        self.assertEqual(connected.clock.getDelayedCalls(), [])

    def test_each_command_its_own_time(self) -> None:
        """Replies in time keep the connection; the next command gets its full time."""
        connected = _Connected(timeout=5.0)
        first = connected.protocol.execute("PING")
        connected.clock.advance(4)
        second = connected.protocol.execute("PING")
        connected.protocol.dataReceived(b"+PONG\r\n")
        self.successResultOf(first)
        connected.clock.advance(4.5)
        self.assertIsNone(connected.transport.closed)
        connected.clock.advance(0.5)
        self.assertEqual(connected.transport.closed, "aborted")
        self.failureResultOf(second, BrokerUnavailable)

    def test_shorter_timeout_behind_a_longer(self) -> None:
        """A command with a shorter timeout behind a blocking one keeps its own."""
        connected = _Connected(timeout=5.0)
        blocking = connected.protocol.execute("XREAD", timeout=7.0)
        quick = connected.protocol.execute("PING", timeout=1.0)
        connected.clock.advance(1)
        self.assertEqual(connected.transport.closed, "aborted")
        self.failureResultOf(blocking, BrokerUnavailable)
        self.failureResultOf(quick, BrokerUnavailable)

    def test_idle_leaves_no_timer(self) -> None:
        """Once every reply came, the timer ends by itself; closing cancels it."""
        connected = _Connected()
        connected.protocol.execute("PING")
        connected.protocol.dataReceived(b"+PONG\r\n")
        connected.clock.advance(5)
        self.assertEqual(connected.clock.getDelayedCalls(), [])
        pending = connected.protocol.execute("PING")
        connected.protocol.close()
        self.assertEqual(connected.transport.closed, "lost")
        self.failureResultOf(pending, BrokerUnavailable)
        self.assertEqual(connected.clock.getDelayedCalls(), [])


class LossTests(SynchronousTestCase):
    """The connection goes away."""

    def test_pending_fail_in_order(self) -> None:
        """A loss fails every pending command, in order, then tells on_lost."""
        connected = _Connected()
        order: list[object] = []
        sent = [connected.protocol.execute("PING") for _ in range(3)]
        for index, each in enumerate(sent):

            def failed(failure: object, index: int = index) -> None:
                order.append(index)

            each.addErrback(failed)
        connected.protocol.dataReceived(b"+PONG\r\n")
        connected.transport.loseConnection()
        self.assertEqual(order, [1, 2])
        self.assertEqual(self.successResultOf(sent[0]), b"PONG")
        self.assertEqual(connected.lost, [connected.protocol])

    def test_closed_fails_at_once(self) -> None:
        """After the loss, a command fails at once and nothing is written."""
        connected = _Connected()
        connected.transport.abortConnection()
        connected.transport.clear()
        error = self.failureResultOf(connected.protocol.execute("PING")).value
        self.assertIsInstance(error, BrokerUnavailable)
        self.assertEqual(connected.transport.value(), b"")
        self.assertFalse(connected.protocol.open)

    def test_commands_in(self) -> None:
        """The test helper reads back what the protocol wrote."""
        connected = _Connected()
        connected.protocol.execute("CLIENT", "SETNAME", "x")
        self.assertEqual(
            commands_in(connected.transport.value()), [[b"CLIENT", b"SETNAME", b"x"]]
        )
