"""
Redis Cluster: :class:`ClusterLink`, one link to every primary of a
cluster, that sends each command to the primary owning its key.

A cluster splits the key space into :data:`SLOTS` hash slots
(:func:`key_slot`: CRC16 of the key, or of its ``{hash tag}``, modulo
16384), each owned by one primary.  The link asks the nodes it knows (the
seeds of a ``redis+cluster://`` address, then those the map names) in turn
for ``CLUSTER SLOTS``, keeps one :class:`~twisted_sse._redis._link.RedisLink`
per primary, and routes each command by the slot of its key
(:func:`command_key`); keyless commands go to any ready node.

The map can be stale: a slot moved (resharding) or a replica promoted
(failover).  Redis then redirects:

* ``MOVED <slot> <host>:<port>``: the slot belongs to another node now.
  The link records the new owner at once, asks for the whole map again
  (at most one question in flight), and sends the command there.
* ``ASK <slot> <host>:<port>``: the slot is being migrated and this key
  has left already; the command is sent to the target, right after
  ``ASKING`` on the same connection (the two are written in the same
  reactor turn, so nothing comes between them), and the map is not
  changed.
* ``TRYAGAIN``: a command on several keys of a slot being migrated found
  them split; it is sent again 50 ms later.
* ``CLUSTERDOWN``: the cluster does not serve the slot now; the command
  fails with :class:`~twisted_sse.BrokerUnavailable` and the map is asked
  for again.

A command follows at most :data:`MAX_REDIRECTIONS` redirections.  The map
is also asked for every ``refresh_interval`` seconds (one ``CLUSTER SLOTS``
on a ready node link), and, with backoff, while the link is not ready (no
node answers, or a primary's link is down: a failover takes the cluster
some seconds).  Primaries that leave the map have their links stopped
once the commands on their way had time to be answered.
"""

from __future__ import annotations

import random
import re
from binascii import crc_hqx
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from attrs import frozen
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    succeed,
)
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._broker import BrokerUnavailable
from ._address import RedisAddress, endpoint
from ._link import RedisLink, retry_delay
from ._protocol import COMMAND_TIMEOUT, Arg, RedisCommandError, RedisProtocol, Reply

__all__ = [
    "ASK_TIMEOUT",
    "MAX_REDIRECTIONS",
    "SLOTS",
    "AskSlots",
    "ClusterLink",
    "MakeNode",
    "SlotRange",
    "ask_slots",
    "command_key",
    "group_by_slot",
    "key_slot",
    "parse_slots",
]

_log = Logger()

#: The hash slots of a Redis Cluster.
SLOTS = 16384
#: Redirections (``MOVED``, ``ASK``) a command follows before it fails.
MAX_REDIRECTIONS = 5
#: ``TRYAGAIN`` answers a command waits out (50 ms each) before it fails.
MAX_TRYAGAIN = 20
#: Seconds between two tries of a command answered ``TRYAGAIN``.
TRYAGAIN_DELAY = 0.05
#: Seconds a node has to connect and answer ``CLUSTER SLOTS``.
ASK_TIMEOUT = 1.0

T = TypeVar("T")


def key_slot(key: str | bytes) -> int:
    """
    The hash slot of ``key``, as Redis Cluster computes it: CRC16
    (XMODEM) of the key modulo 16384, or of its hash tag: what lies
    between the first ``{`` and the first ``}`` after it, if that is not
    empty.  Text is hashed as UTF-8, as it is sent.
    """
    data = key.encode("utf-8") if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    # crc_hqx is CRC-16/XMODEM (polynomial 0x1021, from 0), table-driven
    # in C: 0.2 us for a 30-byte key, where a Python table loop takes 4 us.
    return crc_hqx(data, 0) & (SLOTS - 1)


# How the commands this package sends name their key.
_KEYLESS = 0
_KEY_FIRST = 1
_SCRIPT = 2
_STREAMS = 3
_SUBCOMMAND = 4

_KINDS: dict[str, int] = {
    **dict.fromkeys(
        [
            "ASKING",
            "AUTH",
            "BGSAVE",
            "CLIENT",
            "CLUSTER",
            "COMMAND",
            "CONFIG",
            "DBSIZE",
            "DISCARD",
            "ECHO",
            "EXEC",
            "FLUSHALL",
            "FLUSHDB",
            "FUNCTION",
            "HELLO",
            "INFO",
            "KEYS",
            "LASTSAVE",
            "LATENCY",
            "MULTI",
            "PING",
            "PSUBSCRIBE",
            "PUBLISH",
            "PUBSUB",
            "PUNSUBSCRIBE",
            "QUIT",
            "RANDOMKEY",
            "READONLY",
            "READWRITE",
            "RESET",
            "ROLE",
            "SCAN",
            "SCRIPT",
            "SELECT",
            "SLOWLOG",
            "SUBSCRIBE",
            "TIME",
            "UNSUBSCRIBE",
            "WAIT",
            "WAITAOF",
        ],
        _KEYLESS,
    ),
    **dict.fromkeys(
        ["EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"], _SCRIPT
    ),
    **dict.fromkeys(["XREAD", "XREADGROUP"], _STREAMS),
    **dict.fromkeys(["XINFO", "XGROUP", "OBJECT", "MEMORY"], _SUBCOMMAND),
}


def _upper(arg: Arg) -> str:
    if isinstance(arg, bytes):
        return arg.decode("latin-1").upper()
    return str(arg).upper()


def command_key(args: Sequence[Arg]) -> Arg | None:
    """
    The key a command is routed by, or ``None`` for a command without one
    (``PING``, ``INFO``, ``CLIENT``, ``SCRIPT``, ``WAIT``, ``CLUSTER``, an
    ``EVALSHA`` of no key ...).

    ``EVAL`` and ``EVALSHA`` are routed by their first key, ``XREAD`` by
    the first key after ``STREAMS``, ``XINFO STREAM key`` (and ``XGROUP``,
    ``OBJECT``, ``MEMORY``) by the argument after the subcommand; any other
    command by its first argument, as most Redis commands (``XADD``,
    ``XRANGE``, ``GET``, ``HSET``, ``ZADD``, ``SPUBLISH`` ...) take their
    key first.
    """
    if len(args) < 2:
        return None
    kind = _KINDS.get(_upper(args[0]), _KEY_FIRST)
    if kind == _KEY_FIRST:
        return args[1]
    if kind == _SCRIPT:
        try:
            keys = int(args[2]) if len(args) > 2 else 0
        except ValueError:
            return None
        return args[3] if keys > 0 and len(args) > 3 else None
    if kind == _STREAMS:
        for index in range(1, len(args) - 1):
            if _upper(args[index]) == "STREAMS":
                return args[index + 1]
        return None
    if kind == _SUBCOMMAND:
        return args[2] if len(args) > 2 else None
    return None


def group_by_slot(items: Iterable[T], key: Callable[[T], str]) -> list[list[T]]:
    """
    ``items`` grouped by the hash slot of ``key(item)`` (a cluster runs a
    command or script only on keys of one slot): the groups in the order
    of their first item, each in the order given.
    """
    groups: dict[int, list[T]] = {}
    for item in items:
        groups.setdefault(key_slot(key(item)), []).append(item)
    return list(groups.values())


@frozen
class SlotRange:
    """
    Slots ``start`` to ``end`` (both included) and the primary that owns
    them.
    """

    start: int
    end: int
    host: str
    port: int


def _text(value: Reply) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return None


def parse_slots(reply: Reply, default_host: str) -> list[SlotRange]:
    """
    The slot ranges of a ``CLUSTER SLOTS`` reply and their primaries (the
    replicas it lists are left out), in slot order.

    :param default_host: The host the question was sent to: the one of a
        node whose host is unknown (``""`` or ``"?"``: the node announces
        none, and means "the address you reached me at").
    :raises ValueError: when the reply is not one of ``CLUSTER SLOTS``.
    """
    if not isinstance(reply, list):
        raise ValueError(f"CLUSTER SLOTS answered {type(reply).__name__}")
    ranges: list[SlotRange] = []
    for item in reply:
        if not isinstance(item, list) or len(item) < 3:
            raise ValueError("a CLUSTER SLOTS range is not [start, end, node...]")
        start, end, primary = item[0], item[1], item[2]
        if (
            not isinstance(start, int)
            or not isinstance(end, int)
            or not 0 <= start <= end < SLOTS
        ):
            raise ValueError(f"a CLUSTER SLOTS range has bad slots {start!r}-{end!r}")
        if not isinstance(primary, list) or len(primary) < 2:
            raise ValueError("a CLUSTER SLOTS node is not [host, port, ...]")
        host = _text(primary[0])
        port = primary[1]
        if isinstance(port, bytes | str):
            port = int(port) if port.isdigit() else 0
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"a CLUSTER SLOTS node has a bad port {port!r}")
        if not host or host == "?":
            host = default_host
        ranges.append(SlotRange(start, end, host, port))
    ranges.sort(key=lambda each: each.start)
    return ranges


#: Asks the node at an address for ``CLUSTER SLOTS``: a Deferred of the reply.
AskSlots = Callable[[RedisAddress], "Deferred[Reply]"]

#: Makes the link of one node from its address, its client name and its
#: ``on_ready`` and ``on_lost`` callbacks.
MakeNode = Callable[
    [
        RedisAddress,
        str,
        Callable[[], object] | None,
        Callable[[], object] | None,
    ],
    RedisLink,
]


def ask_slots(reactor: Any, timeout: float = ASK_TIMEOUT) -> AskSlots:
    """
    An :data:`AskSlots` over a new connection each time (logged in as the
    address says, closed after the answer), with ``timeout`` to connect
    and as much for each answer.
    """

    async def ask(address: RedisAddress) -> Reply:
        factory = Factory.forProtocol(lambda: RedisProtocol(reactor, timeout))
        factory.noisy = False
        protocol = await endpoint(reactor, address, timeout).connect(factory)
        assert isinstance(protocol, RedisProtocol)
        try:
            if address.password is not None:
                if address.username is not None:
                    await protocol.execute("AUTH", address.username, address.password)
                else:
                    await protocol.execute("AUTH", address.password)
            return await protocol.execute("CLUSTER", "SLOTS")
        finally:
            protocol.abort()

    return lambda address: Deferred.fromCoroutine(ask(address))


# What follows "Redis refused 'NAME': " in a RedisCommandError.
_REFUSAL = re.compile(r"Redis refused .*?: (.*)", re.DOTALL)
_REDIRECT = re.compile(r"(MOVED|ASK) (\d+) (\S*):(\d+)\s*$")


def _refusal(error: BaseException) -> str:
    """What Redis answered, without the name of the command refused."""
    text = str(error)
    match = _REFUSAL.match(text)
    return match.group(1) if match is not None else text


def _kind(text: str) -> str:
    """``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``, or ``""``."""
    word = text.split(" ", 1)[0]
    return word if word in ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN") else ""


Where = tuple[str, int]


class ClusterLink:
    """
    Links to every primary of a Redis Cluster, with the surface of a
    :class:`~twisted_sse._redis._link.RedisLink`: each command goes to the
    primary that owns its key, following the cluster's redirections.

    The periodic reading of the map is sent on a ready node link, behind
    the commands on their way there: a link that sends blocking commands
    (``XREAD BLOCK``) would delay it, and have it time out.

    :param reactor: Provides ``IReactorTime`` (and ``IReactorTCP`` unless
        ``make_node`` and ``ask`` are given).
    :param address: A ``redis+cluster://`` address: the seeds, the login
        and TLS of every node.
    :param name: The ``CLIENT SETNAME`` of every node's connection.
    :param on_ready: Called when :attr:`ready` becomes true.
    :param on_lost: Called when :attr:`ready` becomes false.
    :param timeout: Seconds a reply may take (each node link's), and a
        redirected command may wait for the link of its new node.
    :param scripts: Lua scripts each node link loads on each connection.
    :param make_node: Makes the link of one node (tests give fakes); a
        :class:`~twisted_sse._redis._link.RedisLink` by default.
    :param ask: Asks one node for ``CLUSTER SLOTS`` over a connection of
        its own (tests give fakes); :func:`ask_slots` by default.
    :param refresh_interval: Seconds between two readings of the slot map
        while started.
    :param jitter: Gives a number in [0, 1) for the backoff
        (:func:`~twisted_sse._redis._link.retry_delay`).

    :ivar redirections: ``MOVED`` and ``ASK`` redirections followed.
    :ivar refreshes: Slot maps read (``CLUSTER SLOTS`` answered).
    """

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        name: str,
        on_ready: Callable[[], object] | None = None,
        on_lost: Callable[[], object] | None = None,
        timeout: float = COMMAND_TIMEOUT,
        scripts: Sequence[str] = (),
        *,
        make_node: MakeNode | None = None,
        ask: AskSlots | None = None,
        refresh_interval: float = 10.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not address.cluster:
            raise ValueError("the address names no Redis Cluster nodes")
        self.clock: IReactorTime = reactor
        self.address = address
        self.name = name
        self.timeout = timeout
        self.scripts = tuple(scripts)
        self.refresh_interval = refresh_interval
        self.redirections = 0
        self.refreshes = 0
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._jitter = jitter
        self._reactor = reactor
        self._make_node: MakeNode = make_node or self._new_node
        self._ask: AskSlots = ask if ask is not None else ask_slots(reactor)
        #: The nodes to ask for the map, the one that answered last first.
        self._known: list[Where] = list(dict.fromkeys(address.cluster))
        #: The owner of each slot, once a map was read.
        self._owners: list[Where | None] | None = None
        #: The primaries that own slots, and how many each.
        self._primaries: list[Where] = []
        self._counts: dict[Where, int] = {}
        self._covered = 0
        #: Changes of the map, and how many the listeners were told of.
        self._changes = self._told = 0
        #: The node links, of the primaries and of nodes redirected to.
        self._links: dict[Where, RedisLink] = {}
        #: Links of nodes that left the map, and when they are stopped.
        self._retiring: dict[Where, tuple[RedisLink, IDelayedCall]] = {}
        #: Commands waiting for the link of the node they were sent to.
        self._waiting: dict[Where, list[Deferred[None]]] = {}
        #: Commands waiting to be sent again (TRYAGAIN).
        self._sleeping: set[Deferred[None]] = set()
        #: Owners learned from MOVED since the last map was read.
        self._learned: dict[int, Where] = {}
        self._listeners: list[Callable[[], object]] = []
        self._running = False
        self._was_ready = False
        #: Whether a map is being read, and whether another was asked for
        #: meanwhile; who waits for the one in flight, and for the next.
        self._in_flight = False
        self._again = False
        self._done: list[Deferred[None]] = []
        self._next_done: list[Deferred[None]] = []
        #: The question in flight to a node over a connection of its own.
        self._asking: Deferred[Reply] | None = None
        #: The next reading of the map while not ready, and how many came.
        self._retry: IDelayedCall | None = None
        self._attempts = 0
        #: Readings of the map that failed in a row.
        self._failures = 0
        self._loop: LoopingCall | None = None
        #: Whether the map is being applied (readiness is told afterwards).
        self._applying = False

    # The RedisLink surface

    @property
    def ready(self) -> bool:
        """
        Whether every slot has a known owner and every owner's link is
        ready.
        """
        if self._covered < SLOTS:
            return False
        links = self._links
        for where in self._primaries:
            link = links.get(where)
            if link is None or not link.ready:
                return False
        return True

    @property
    def local_address(self) -> IAddress | None:
        """``None``: there is a connection per node."""
        return None

    def start(self) -> None:
        """Read the slot map and connect to every primary (again, if stopped)."""
        if self._running:
            return
        self._running = True
        for link in list(self._links.values()):
            link.start()
        loop = self._loop = LoopingCall(self._tick)
        loop.clock = self.clock
        loop.start(self.refresh_interval, now=False)
        self.refresh()

    def stop(self) -> Deferred[None]:
        """
        Stop reading the map and every node link; fires once they are
        stopped.  Commands waiting for a node fail.
        """
        self._running = False
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        self._cancel_retry()
        self._again = False
        asking, self._asking = self._asking, None
        if asking is not None:
            asking.cancel()
        done = self._done + self._next_done
        self._done, self._next_done = [], []
        for waiter in done:
            waiter.callback(None)
        for sleeping in list(self._sleeping):
            sleeping.cancel()
        waiting, self._waiting = self._waiting, {}
        for waiters in waiting.values():
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(BrokerUnavailable("the Redis Cluster link stopped"))
        links = list(self._links.values())
        for link, call in self._retiring.values():
            if call.active():
                call.cancel()
            links.append(link)
        self._retiring = {}
        stopped = DeferredList([link.stop() for link in links], consumeErrors=True)
        return stopped.addCallback(lambda _: None)

    def drop(self) -> None:
        """Abort every node's connection (they are made again)."""
        for link in list(self._links.values()):
            link.drop()

    def execute(self, *args: Arg, timeout: float | None = None) -> Deferred[Reply]:
        """
        Send one command to the primary that owns its key (any ready node
        for a command without a key), following ``MOVED``, ``ASK`` and
        ``TRYAGAIN``.

        :param timeout: Seconds to wait for each reply (the node link's
            default if ``None``).
        :returns: A Deferred firing with the reply, or failing with
            :class:`~twisted_sse.BrokerUnavailable` at once when that
            node's link is not ready (or no map is known), when the
            cluster is down, or with ``RedisCommandError`` when Redis
            answers another error or redirects too many times.
        """
        try:
            link = self._route(args)
        except BrokerUnavailable:
            return fail()
        return link.execute(*args, timeout=timeout).addErrback(
            self._redirected, link, args, timeout
        )

    # What the broker asks

    def on_map(self, listener: Callable[[], object]) -> None:
        """Call ``listener`` after each change of the slot map."""
        self._listeners.append(listener)

    def owner(self, key: str | bytes) -> Where | None:
        """The (host, port) of the primary that owns ``key``'s slot, if known."""
        owners = self._owners
        return None if owners is None else owners[key_slot(key)]

    def node(self, host: str, port: int) -> RedisLink | None:
        """The link of the node at ``host``:``port``, if there is one."""
        return self._links.get((host, port))

    def node_for(self, key: str | bytes) -> RedisLink | None:
        """The link of the primary that owns ``key`` (to ``WAIT`` on it)."""
        where = self.owner(key)
        return None if where is None else self._links.get(where)

    def nodes(self) -> dict[Where, RedisLink]:
        """The links of the primaries that own slots, by (host, port)."""
        return {
            where: self._links[where]
            for where in self._primaries
            if where in self._links
        }

    def state(self) -> dict[str, Any]:
        """For ``/healthz``: the slots covered, each primary's slots and state."""
        counts = self._counts
        nodes = []
        for where in self._primaries:
            link = self._links.get(where)
            nodes.append(
                {
                    "address": f"{where[0]}:{where[1]}",
                    "slots": counts.get(where, 0),
                    "up": link is not None and link.ready,
                }
            )
        return {
            "mode": "cluster",
            "slots_covered": self._covered,
            "nodes": nodes,
            "redirections": self.redirections,
            "refreshes": self.refreshes,
        }

    def refresh(self) -> Deferred[None]:
        """
        Read the slot map again now: at most one question is in flight,
        and one asked for meanwhile is asked once more after it.

        :returns: A Deferred that fires (never fails) once the map in
            flight or the next one was read or could not be.
        """
        if not self._running:
            return succeed(None)
        done: Deferred[None] = Deferred()
        if self._in_flight:
            self._again = True
            self._next_done.append(done)
            return done
        self._done.append(done)
        self._read()
        return done

    def _read(self) -> None:
        self._cancel_retry()
        self._in_flight = True
        Deferred.fromCoroutine(self._read_map())

    # Routing

    def _route(self, args: Sequence[Arg]) -> RedisLink:
        """The ready link to send ``args`` to; BrokerUnavailable if none."""
        owners = self._owners
        if owners is None:
            raise BrokerUnavailable("Redis Cluster: no slot map yet")
        key = command_key(args)
        if key is None:
            for each in self._links.values():
                if each.ready:
                    return each
            raise BrokerUnavailable("Redis Cluster: no node is connected")
        slot = key_slot(key if isinstance(key, str | bytes) else str(key))
        where = owners[slot]
        if where is None:
            raise BrokerUnavailable(f"Redis Cluster: no node serves slot {slot}")
        link = self._links.get(where)
        if link is None or not link.ready:
            raise BrokerUnavailable(
                f"Redis Cluster node {where[0]}:{where[1]} is not connected"
            )
        return link

    def _redirected(
        self,
        failure: Failure,
        link: RedisLink,
        args: tuple[Arg, ...],
        timeout: float | None,
    ) -> Deferred[Reply]:
        error = failure.value
        if not isinstance(error, RedisCommandError) or not _kind(_refusal(error)):
            return fail(failure)
        return Deferred.fromCoroutine(self._follow(error, link, args, timeout))

    async def _follow(
        self,
        error: RedisCommandError,
        link: RedisLink,
        args: tuple[Arg, ...],
        timeout: float | None,
    ) -> Reply:
        """Follow redirections until a reply, or too many."""
        moves = tries = 0
        while True:
            text = _refusal(error)
            kind = _kind(text)
            if kind == "CLUSTERDOWN":
                self.refresh()
                raise BrokerUnavailable(f"Redis Cluster is down: {text}")
            if kind == "TRYAGAIN":
                if tries >= MAX_TRYAGAIN:
                    raise RedisCommandError(
                        f"Redis Cluster answered TRYAGAIN {tries + 1} times: {text}"
                    )
                tries += 1
                await self._sleep(TRYAGAIN_DELAY)
                link = self._route(args)
                sent = link.execute(*args, timeout=timeout)
            else:
                match = _REDIRECT.match(text)
                if match is None:
                    raise error
                if moves >= MAX_REDIRECTIONS:
                    raise RedisCommandError(
                        f"Redis Cluster redirected {_upper(args[0])} more than "
                        f"{MAX_REDIRECTIONS} times; the last: {text}"
                    )
                moves += 1
                self.redirections += 1
                where = (match.group(3) or link.address.host, int(match.group(4)))
                if kind == "MOVED":
                    self._moved(int(match.group(2)), where)
                link = await self._ready_link(where)
                if kind == "ASK":
                    # Written back to back on the link's one connection.
                    link.execute("ASKING", timeout=timeout).addErrback(lambda _: None)
                sent = link.execute(*args, timeout=timeout)
            try:
                return await sent
            except RedisCommandError as again:
                if not _kind(_refusal(again)):
                    raise
                error = again

    async def _ready_link(self, where: Where) -> RedisLink:
        """The link of ``where`` (made if new) once ready, within ``timeout``."""
        if not self._running:
            raise BrokerUnavailable("the Redis Cluster link is stopped")
        link = self._link(where)
        if link.ready:
            return link
        waiter: Deferred[None] = Deferred()
        self._waiting.setdefault(where, []).append(waiter)
        waiter.addTimeout(self.timeout, self.clock)
        try:
            await waiter
        except (CancelledError, DeferredTimeout) as error:
            raise BrokerUnavailable(
                f"Redis Cluster node {where[0]}:{where[1]} is not connected"
            ) from error
        return link

    async def _sleep(self, seconds: float) -> None:
        sleeping: Deferred[None] = Deferred()
        call = self.clock.callLater(seconds, sleeping.callback, None)

        def cancel(failure: Failure) -> Failure:
            if call.active():
                call.cancel()
            return failure

        sleeping.addErrback(cancel)
        self._sleeping.add(sleeping)
        try:
            await sleeping
        except CancelledError:
            raise BrokerUnavailable("the Redis Cluster link stopped") from None
        finally:
            self._sleeping.discard(sleeping)

    # The node links

    def _new_node(
        self,
        address: RedisAddress,
        name: str,
        on_ready: Callable[[], object] | None,
        on_lost: Callable[[], object] | None,
    ) -> RedisLink:
        return RedisLink(
            self._reactor, address, name, on_ready, on_lost, self.timeout, self.scripts
        )

    def _link(self, where: Where) -> RedisLink:
        """The link of ``where``, made (or kept from retiring) if needed."""
        link = self._links.get(where)
        if link is not None:
            return link
        retiring = self._retiring.pop(where, None)
        if retiring is not None:
            link, call = retiring
            if call.active():
                call.cancel()
            self._links[where] = link
            return link
        made: list[RedisLink] = []

        def ready() -> None:
            if made and self._links.get(where) is made[0]:
                self._node_ready(where)

        def lost() -> None:
            if made and self._links.get(where) is made[0]:
                self._node_lost(where)

        link = self._make_node(self.address.node(*where), self.name, ready, lost)
        made.append(link)
        self._links[where] = link
        if self._running:
            link.start()
        return link

    def _retire(self, where: Where) -> None:
        """Stop the link of a node that left the map, after ``timeout``."""
        link = self._links.pop(where, None)
        if link is None:
            return

        def stop() -> None:
            if self._retiring.get(where, (None,))[0] is link:
                del self._retiring[where]
                link.stop()

        _log.info(
            "Redis Cluster: {host}:{port} owns no slot now ({address})",
            host=where[0],
            port=where[1],
            address=str(self.address),
        )
        self._retiring[where] = (link, self.clock.callLater(self.timeout, stop))

    def _node_ready(self, where: Where) -> None:
        for waiter in self._waiting.pop(where, []):
            if not waiter.called:
                waiter.callback(None)
        self._update()

    def _node_lost(self, where: Where) -> None:
        self._update()

    def _update(self) -> None:
        """Tell ``on_ready`` or ``on_lost`` when :attr:`ready` changes."""
        if self._applying:
            return
        ready = self.ready
        if ready == self._was_ready:
            return
        self._was_ready = ready
        if ready:
            self._attempts = 0
            self._cancel_retry()
            _log.info(
                "Redis Cluster {address} ready: {primaries} primaries ({name})",
                address=str(self.address),
                primaries=len(self._primaries),
                name=self.name,
            )
            self._notify(self._on_ready)
        else:
            if self._running:
                _log.warn(
                    "Redis Cluster {address} not ready ({name})",
                    address=str(self.address),
                    name=self.name,
                )
            self._notify(self._on_lost)
            if self._running and not self._in_flight:
                self.refresh()

    def _notify(self, callback: Callable[[], object] | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            _log.failure("A Redis Cluster callback failed")

    # The slot map

    def _tick(self) -> None:
        self.refresh()

    async def _read_map(self) -> None:
        stale = False
        try:
            ranges = await self._fetch()
            if self._running:
                self._failures = 0
                self.refreshes += 1
                stale = self._apply(ranges)
        except BrokerUnavailable as error:
            if self._running:
                self._failed(str(error))
        except Exception:
            _log.failure("Reading the Redis Cluster slot map failed")
        finally:
            self._in_flight = False
        self._tell()
        done, self._done = self._done, []
        for waiter in done:
            waiter.callback(None)
        if not self._running:
            return
        if self._again:
            self._again = False
            self._done, self._next_done = self._next_done, []
            self._read()
        elif stale or not self.ready:
            self._schedule_retry()
        else:
            self._attempts = 0

    async def _fetch(self) -> list[SlotRange]:
        """The map, from a ready node link or else from the nodes in turn."""
        errors: list[str] = []
        for where in self._primaries:
            link = self._links.get(where)
            if link is None or not link.ready:
                continue
            try:
                return parse_slots(await link.execute("CLUSTER", "SLOTS"), where[0])
            except (BrokerUnavailable, ValueError) as error:
                errors.append(f"{where[0]}:{where[1]}: {error}")
            break
        for where in list(self._known):
            if not self._running:
                break
            asking = self._asking = self._ask(self.address.node(*where))
            asking.addTimeout(ASK_TIMEOUT, self.clock)
            try:
                reply = await asking
            except CancelledError:
                if not self._running:
                    raise BrokerUnavailable("stopped") from None
                errors.append(f"{where[0]}:{where[1]}: no answer in time")
                continue
            except Exception as error:
                errors.append(f"{where[0]}:{where[1]}: {type(error).__name__}")
                continue
            finally:
                self._asking = None
            try:
                ranges = parse_slots(reply, where[0])
            except ValueError as error:
                errors.append(f"{where[0]}:{where[1]}: {error}")
                continue
            if self._known[0] != where:
                self._known.remove(where)
                self._known.insert(0, where)
            return ranges
        raise BrokerUnavailable(
            "no Redis Cluster node answered CLUSTER SLOTS (" + "; ".join(errors) + ")"
        )

    def _failed(self, error: str) -> None:
        self._failures += 1
        if self._failures == 1 or self._failures % 20 == 0:
            _log.warn(
                "Cannot read the slot map of Redis Cluster {address}: {error} "
                "(attempt {attempt})",
                address=str(self.address),
                error=error,
                attempt=self._failures,
            )

    def _apply(self, ranges: list[SlotRange]) -> bool:
        """
        Take a map read from the cluster; make and retire node links.

        :returns: Whether a ``MOVED`` contradicts it (read it again soon).
        """
        owners: list[Where | None] = [None] * SLOTS
        for each in ranges:
            where = (each.host, each.port)
            owners[each.start : each.end + 1] = [where] * (each.end - each.start + 1)
        learned, self._learned = self._learned, {}
        stale = False
        for slot, where in learned.items():
            if owners[slot] != where:
                # A MOVED said otherwise after this node answered, or
                # this node has not heard yet: keep it for one more read.
                owners[slot] = where
                stale = True
        self._set_owners(owners)
        for where in self._primaries:
            if where not in self._known:
                self._known.append(where)
        return stale

    def _moved(self, slot: int, where: Where) -> None:
        """
        A ``MOVED``: ``where`` owns ``slot`` now; read the whole map soon.
        Listeners are told now, or, while a map is being read, once it is.
        """
        self._learned[slot] = where
        owners = self._owners
        if owners is not None and owners[slot] != where:
            # In place: a resharding may send a MOVED per slot.
            before = owners[slot]
            owners[slot] = where
            counts = self._counts
            if before is None:
                self._covered += 1
            else:
                counts[before] -= 1
                if not counts[before]:
                    del counts[before]
                    self._primaries.remove(before)
            if where not in counts:
                counts[where] = 0
                self._primaries.append(where)
            counts[where] += 1
            self._changes += 1
            self._follow_map()
            if not self._in_flight:
                self._tell()
        if not self._in_flight:
            self.refresh()

    def _set_owners(self, owners: list[Where | None]) -> None:
        """Take a whole new map (``_tell`` tells the listeners)."""
        before = self._owners
        if before == owners:
            return
        self._owners = owners
        counts: dict[Where, int] = {}
        for where in owners:
            if where is not None:
                counts[where] = counts.get(where, 0) + 1
        if before is None or set(counts) != set(self._counts):
            _log.info(
                "Redis Cluster {address}: {primaries} primaries, {covered} of "
                "{slots} slots served",
                address=str(self.address),
                primaries=len(counts),
                covered=sum(counts.values()),
                slots=SLOTS,
            )
        self._counts = counts
        self._primaries = list(counts)
        self._covered = sum(counts.values())
        self._changes += 1
        self._follow_map()

    def _follow_map(self) -> None:
        """A link for each primary of the map; retire the others'."""
        self._applying = True
        try:
            for where in self._primaries:
                self._link(where)
            owning = set(self._primaries)
            for where in list(self._links):
                if where not in owning:
                    self._retire(where)
        finally:
            self._applying = False
        self._update()

    def _tell(self) -> None:
        """Tell the listeners if the map changed since they were last told."""
        if self._told == self._changes:
            return
        self._told = self._changes
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                _log.failure("A Redis Cluster map listener failed")
        self._update()

    def _schedule_retry(self) -> None:
        if self._retry is not None or not self._running:
            return
        self._attempts += 1
        delay = retry_delay(self._attempts, self._jitter)

        def again() -> None:
            self._retry = None
            self.refresh()

        self._retry = self.clock.callLater(delay, again)

    def _cancel_retry(self) -> None:
        retry, self._retry = self._retry, None
        if retry is not None and retry.active():
            retry.cancel()
