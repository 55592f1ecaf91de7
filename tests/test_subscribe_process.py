"""
``GET /subscribe`` on two ``twistd -n sse --broker redis://...`` processes
sharing one Redis, as behind a load balancer: clients of three channels
drop their connection to one process and resume on the other with the
last cursor they were sent, while events are published over HTTP on both
processes at once, and in the end each has every event of every channel
once, in order per channel; and the same with a pattern, whose channels are
made during the run.

They use the shared Redis on 127.0.0.1:6379 (database 13, channel names of
their own, deleted afterwards); without one they are skipped, and with
``TWISTED_SSE_REQUIRE_REDIS=1`` (as in CI) a missing Redis fails them.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from attrs import define, field
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import MessageEvent

from . import _redis_tools as tools
from ._http import SocketClient, http_request
from ._process import Twistd, start_healthy

TOKEN = "t"
BROKER = f"redis://{tools.REDIS_HOST}:{tools.REDIS_PORT}/{tools.REDIS_DB}"
#: Rounds of reading, dropping and resuming while the publishers publish.
ROUNDS = 25
#: Events each publisher publishes at least.
AT_LEAST = 100
#: Seconds a wait for what must come may take (only a hang gets near it).
WAIT = 30.0


def stream_order(event_id: str) -> tuple[str, int, int]:
    """The epoch and stream entry of a Redis broker's event id."""
    epoch, _, entry = event_id.partition(":")
    ms, _, seq = entry.partition("-")
    return epoch, int(ms), int(seq)


@define(eq=False)
class Publisher:
    """
    A thread publishing over HTTP on one process, to channels it picks,
    until told to stop (and it has published enough).

    :ivar published: What it published: channel, id and data.
    """

    port: int
    name: str
    channels: list[str]
    published: list[tuple[str, str, str]] = field(factory=list)
    stop: threading.Event = field(factory=threading.Event)
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pick = random.Random(self.name)
        try:
            while not self.stop.is_set() or len(self.published) < AT_LEAST:
                channel = pick.choice(self.channels)
                data = f"{self.name}-{len(self.published)}"
                self.published.append((channel, self.publish(channel, data), data))
                # Room for the readers between publishes, not a rate.
                time.sleep(0.002)
        except BaseException as error:
            self.error = error

    def publish(self, channel: str, data: str) -> str:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/channels/{channel}",
            data=data.encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            event_id: str = json.loads(answer.read())["id"]
            return event_id

    def join(self) -> list[tuple[str, str, str]]:
        """Stop; what it published (re-raising what stopped it)."""
        self.stop.set()
        assert self._thread is not None
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), f"{self.name} hangs"
        if self.error is not None:
            raise self.error
        return self.published


@define(eq=False)
class Reader:
    """
    A client of ``/subscribe`` naming the channels in its own order, over
    as many connections as it makes.

    :ivar events: Every event it was sent, on every connection.
    """

    names: list[str]
    events: list[MessageEvent] = field(factory=list)
    connection: SocketClient | None = None
    #: The port of the process it is connected to.
    port: int = 0
    connections: int = 0

    @property
    def last_id(self) -> str:
        """The last cursor it was sent (``""`` before the first)."""
        return self.connection.parser.last_event_id if self.connection else ""

    def connect(self, port: int) -> SocketClient:
        """Drop the connection, if any, and resume on ``port``."""
        last_id = self.last_id
        self.close()
        query = urllib.parse.urlencode([("channel", name) for name in self.names])
        headers = ["Accept: text/event-stream"]
        if last_id:
            headers.append(f"Last-Event-ID: {last_id}")
        connection = SocketClient(
            port,
            http_request(f"/subscribe?{query}", *headers),
            last_event_id=last_id,
            timeout=WAIT,
        )
        assert connection.code == 200, connection
        assert connection.header("Content-Type") == (
            "text/event-stream; charset=utf-8"
        ), connection
        assert connection.header("SSE-History-Lost") is None, connection
        self.connection = connection
        self.port = port
        self.connections += 1
        return connection

    def read(self, until: int, timeout: float) -> None:
        """Read until this connection has ``until`` events, or ``timeout``."""
        connection = self.connection
        assert connection is not None
        deadline = time.monotonic() + timeout
        while len(connection.events) < until and time.monotonic() < deadline:
            assert not connection.at_eof(0.02), connection

    @property
    def this_connection(self) -> int:
        """Events on the connection so far."""
        return len(self.connection.events) if self.connection else 0

    def close(self) -> None:
        """Hang up (wherever the stream is, even mid-frame)."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()
            self.events.extend(connection.events)

    def all_events(self) -> list[MessageEvent]:
        """The events of every connection, this one included."""
        current = self.connection.events if self.connection else []
        return self.events + current


def carries(name: str, channel: str) -> bool:
    """Whether the channel or pattern ``name`` carries ``channel``."""
    if name.endswith(".*"):
        return channel.startswith(name[:-1])
    return name == channel


class TwoProcessesSubscribeTests(SynchronousTestCase):
    """Two twistd sse processes on one Redis serve one /subscribe stream."""

    def setUp(self) -> None:
        tools.need(tools.unavailable_reason())
        tag = f"sub-{uuid.uuid4().hex[:12]}"
        self.channels = [f"{tag}-{name}" for name in "abc"]
        #: Channels under the pattern, made during the run, and one beside.
        self.pattern = f"{tag}-news.*"
        self.under = [f"{tag}-news.{name}" for name in ("eu", "us", "eu.fr")]
        self.beside = f"{tag}-newsroom"
        for channel in [*self.channels, *self.under, self.beside]:
            self.addCleanup(
                tools.command,
                tools.REDIS_PORT,
                "DEL",
                f"sse:{channel}",
                f"sse:{channel}#epoch",
                host=tools.REDIS_HOST,
                db=tools.REDIS_DB,
            )
        # The names the patterns found, indexed for the resuming cursors.
        self.addCleanup(
            tools.command,
            tools.REDIS_PORT,
            "ZREM",
            "sse:#names",
            *self.under,
            host=tools.REDIS_HOST,
            db=tools.REDIS_DB,
        )
        options = ("--broker", BROKER, "--publish-token", TOKEN, "--drain", "0")
        self.processes = [self.start(*options), self.start(*options)]
        self.ports = [process.port for process in self.processes]

    def start(self, *options: str) -> Twistd:
        return start_healthy(self, *options, wait=WAIT)

    def exchange(self, readers: list[Reader], channels: list[str]) -> None:
        """
        Connect ``readers``, alternately to each process; publish on
        ``channels`` from both processes at once while each reader reads
        a little and, one time in two, resumes on the other process; then
        check that each has every event of every channel it carries once,
        in the order of the channel's stream (the ids the publishes were
        answered), each typed with its channel and with a cursor for its id.
        """
        ports = self.ports
        for index, reader in enumerate(readers):
            # The opening frame: the reader's first cursor.
            reader.connect(ports[index % 2]).read_frame(WAIT)
        publishers = [
            Publisher(port, f"p{index}", channels) for index, port in enumerate(ports)
        ]
        for publisher in publishers:
            publisher.start()
        pick = random.Random(17)
        try:
            for _ in range(ROUNDS):
                for reader in readers:
                    reader.read(reader.this_connection + pick.randrange(6), 1.0)
                    if pick.random() < 0.5:
                        # To the other process.
                        reader.connect(ports[1 - ports.index(reader.port)])
        finally:
            published = [each for p in publishers for each in p.join()]

        expected: dict[str, list[tuple[str, str]]] = {}
        for channel, event_id, data in sorted(
            published, key=lambda each: stream_order(each[1])
        ):
            expected.setdefault(channel, []).append((event_id, data))
        self.assertEqual(sorted(expected), sorted(channels))
        for channel, events in expected.items():
            self.assertEqual(len({stream_order(i)[0] for i, _ in events}), 1, channel)
        for reader in readers:
            carried = [
                channel
                for channel in channels
                if any(carries(name, channel) for name in reader.names)
            ]
            total = sum(len(expected[channel]) for channel in carried)
            reader.read(total - len(reader.events), WAIT)
            got: dict[str, list[str]] = {}
            for event in reader.all_events():
                self.assertTrue(event.last_event_id.startswith("~"), event)
                got.setdefault(event.type, []).append(event.data)
            for channel in carried:
                self.assertEqual(
                    got.get(channel, []),
                    [data for _, data in expected[channel]],
                    f"{reader.names}: {channel}",
                )
            self.assertEqual(sorted(got), sorted(carried))
            self.assertGreater(reader.connections, ROUNDS // 4)
            reader.close()

    def test_resume_on_the_other_process(self) -> None:
        """
        Readers of three channels, each naming them in its own order, drop
        and resume on the other process with their last cursor, at any
        point of the stream (before its first event, with events on their
        way), while both processes publish: each ends with every event of
        every channel once, in order per channel.
        """
        a, b, c = self.channels
        orders = [[a, b, c], [c, a, b], [b, c, a], [c, b, a]]
        self.exchange([Reader(names) for names in orders], self.channels)

    def test_pattern_resume_on_the_other_process(self) -> None:
        """
        The same for readers of a pattern (and a channel), whose channels
        are made while they come and go: each ends with every event of
        every channel under the pattern once, in order per channel, and
        none of the channel beside it.
        """
        a, _, c = self.channels
        orders = [[self.pattern, a], [c, self.pattern]]
        channels = [a, c, *self.under, self.beside]
        self.exchange([Reader(names) for names in orders], channels)
