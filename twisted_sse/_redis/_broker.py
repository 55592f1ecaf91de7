"""
The Redis broker: :class:`RedisBroker`, :class:`~twisted_sse.IBroker` over
Redis Streams (the design is in :mod:`twisted_sse._redis`).  Two
:class:`~twisted_sse._redis._link.RedisLink`\\ s per process: one for
commands (publish, replay pages, checks, presence), one for the
:class:`~twisted_sse._redis._reader.Reader` that this broker composes.
Presence is the ``RedisPresence`` it composes too.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from attrs import define
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._broker import (
    DEFAULT_CHANNEL_TTL,
    DEFAULT_HISTORY,
    DEFAULT_IDEMPOTENCY_TTL,
    BrokerUnavailable,
    Deliver,
    Found,
    IdempotencyConflict,
    IdempotencyUnavailable,
    IPatternBroker,
    Published,
    Replayed,
    Subscription,
    TokenSubscription,
    Watch,
    check_publish,
    event_digest,
    loss_event,
    parse_event_id,
    valid_channel,
)
from .._event import Event
from .._presence import IPresenceBroker, PresenceFollow, PresenceInfo, Told
from . import _watch
from ._address import RedisAddress
from ._channels import BATCH, PAGE_BYTES, Channel, Local, Replay, read_snapshot
from ._cluster import ClusterLink
from ._entries import (
    LAST_ID,
    EventId,
    Snapshot,
    event_fields,
    parse_position,
    restart_point,
    text_id,
)
from ._entries import text as reply_text
from ._link import MakeLink, RedisLink
from ._presence import (
    PRESENCE_FLUSH,
    PRESENCE_LEASE,
    PRESENCE_POLL,
    PRESENCE_RENEW,
    RedisPresence,
)
from ._protocol import COMMAND_TIMEOUT, Arg, Reply
from ._pubsub import MakeNode, ShardWatch
from ._reader import Reader
from ._scripts import (
    IDEMPOTENCY_FIELD,
    LIVE_FIELD,
    LOG_FIELD,
    PUBLISH,
    ROTATE,
    SCRIPTS,
    run_script,
)
from ._sentinel import Sentinels
from ._watch import Watches

__all__ = ["BATCH", "DEFAULT_PREFIX", "PAGE_BYTES", "RedisBroker"]

_log = Logger()

#: Key prefix of the channel streams: channel ``news`` is the stream
#: ``sse:news``.
DEFAULT_PREFIX = "sse:"

#: Milliseconds a reader's XREAD blocks when nothing arrives.  A new channel
#: wakes the reader at once with CLIENT UNBLOCK; this bound only matters when
#: that is refused (ACLs of some managed services) or races the XREAD, and it
#: is how often an idle reader proves its connection still works.
BLOCK_MS = 2000
#: Seconds between two checks of the channels a process follows (their
#: TTL refreshed, their epoch compared), at most.
_CHECK_INTERVAL = 60.0
#: Seconds before a replay page that failed (Redis down) is read again.
_RETRY_PAGE = 1.0
#: Seconds during which an acknowledged publish is remembered, to check
#: after a lost connection that Redis still has it (a failover to a replica
#: lags by less: Redis drops a replica that lags by more than
#: ``repl-timeout``, 60 s by default, and a lag of seconds already means
#: a broken replication).
ACKED_WINDOW = 10.0


def _redis_links(
    reactor: Any,
    address: RedisAddress,
    timeout: float,
    sentinels: Sentinels | None = None,
) -> MakeLink:
    """
    Make ``RedisLink``\\ s to ``address``, with the broker's scripts (and,
    with Sentinel, ``sentinels`` shared), or ``ClusterLink``\\ s to the
    cluster it names.
    """
    scripts = [script.source for script in SCRIPTS]

    def make_link(
        name: str,
        on_ready: Callable[[], object] | None,
        on_lost: Callable[[], object] | None,
    ) -> Any:
        if address.cluster:
            # One connection per primary, commands routed by slot.
            return ClusterLink(
                reactor,
                address,
                name,
                on_ready=on_ready,
                on_lost=on_lost,
                timeout=timeout,
                scripts=scripts,
            )
        return RedisLink(
            reactor,
            address,
            name,
            on_ready=on_ready,
            on_lost=on_lost,
            timeout=timeout,
            scripts=scripts,
            sentinels=sentinels,
        )

    return make_link


def _node_links(reactor: Any, timeout: float) -> MakeNode:
    """Make a ``RedisLink`` to one node of a cluster (no scripts)."""

    def make_node(
        address: RedisAddress,
        name: str,
        on_ready: Callable[[], object] | None,
        on_lost: Callable[[], object] | None,
    ) -> RedisLink:
        return RedisLink(
            reactor, address, name, on_ready=on_ready, on_lost=on_lost, timeout=timeout
        )

    return make_node


def _answer_once(reply: Reply, digest: str) -> str:
    """
    The id of a publish with an idempotency key: its own, or, if the key
    was set, the one it holds (the same event) or a conflict (another).
    """
    if not isinstance(reply, list):
        return reply_text(reply)
    stored = reply_text(reply[0]) if reply else ""
    first_digest, _, first_id = stored.partition(" ")
    if first_digest != digest:
        raise IdempotencyConflict(
            "the Idempotency-Key was used for another event on this channel "
            f"(published as {first_id or 'an unknown id'})",
            first_id,
        )
    return Replayed(first_id)


@define(eq=False)
class _RedisSubscription(TokenSubscription):
    """A Redis broker subscription: its own cancel handle and replay pacer."""

    def cancel(self) -> None:
        """Stop replaying and delivering; safe to call more than once."""
        state = self._state
        if state is not None:
            state.joining.pop(self._token, None)
        super().cancel()

    def resume_replay(self) -> None:
        """Go on with the replay where ``deliver`` paused it."""
        state, broker = self._state, self._broker
        if state is not None and isinstance(broker, RedisBroker):
            broker.resume_replay(state, self._token)


@implementer(IPatternBroker, IPresenceBroker)
class RedisBroker(Service):
    """
    A broker over Redis Streams that any number of processes share: events
    published on any of them reach the subscribers of all of them, and a
    client can resume on any of them with ``Last-Event-ID``.

    Start it with :meth:`startService` (or as a child of your application's
    service) and stop it with :meth:`stop`/:meth:`stopService`.  Until it is
    connected, and whenever Redis is unreachable, :attr:`available` is false,
    publishing fails with :class:`BrokerUnavailable` and new subscriptions
    are refused the same way; open subscriptions stay and resume, from the
    last stream id this process handled, when Redis is back.

    Event ids are ``<epoch>:<stream entry id>``; see the module docstring.
    It can watch the channels under a prefix (``watch``, of
    :class:`~twisted_sse.IPatternBroker`: what the hub's patterns such as
    ``news.*`` need): every publish is also written to a publish log,
    ``<prefix>#log``, of the last 100,000 publishes, and the
    channels watches find are kept in an index of names,
    ``<prefix>#names``.

    It tells who is on a channel (``enter``, ``leave``, ``presence``,
    ``follow_presence``, of :class:`~twisted_sse.IPresenceBroker`): each
    process keeps its connections of each channel in Redis under a lease of
    ``presence_lease`` seconds, renewed every ``presence_renew`` seconds, so
    that a process that dies without a word drops out of every count when
    it ends (15 seconds, and at most 5 more before a live process notices).
    Changes are written every ``presence_flush`` seconds, in batches, and
    followers read the changes of their channels every ``presence_poll``
    seconds.  Stopping removes this process's connections.

    Memory: the history is bounded per channel by ``history`` events (each
    at most the publisher's event size), channels by ``channel_ttl``, and
    Redis as a whole by its ``maxmemory`` (with ``noeviction``, a full
    Redis refuses publishes: visible, nothing lost silently).  There is no
    per-channel byte bound as the memory broker has: counting bytes exactly
    would take the trimming out of ``XADD MAXLEN ~`` into the publish
    script (reading the oldest entries' sizes as it trims), other programs'
    ``XADD``\\ s would escape the count, and a stream trimmed below
    ``history`` entries would let a reader that fell behind skip trimmed
    entries unseen (its check relies on at least ``history`` being kept).

    :param reactor: Provides ``IReactorTCP`` and ``IReactorTime``.
    :param address: Where Redis is (see :func:`parse_redis_url`).
    :param history: Events kept per channel: ``XADD MAXLEN ~ history`` (at
        least 1: the stream is also how events reach the other processes).
        Use the same value on every process.
    :param prefix: Prepended to the channel name to make the stream key
        (and, with ``#epoch`` after the name, the epoch's; with ``#log``
        and ``#names`` alone, the publish log's and the index's).
    :param block_ms: Milliseconds an idle reader's ``XREAD`` blocks.
    :param timeout: Seconds a Redis reply may take before the connection is
        deemed dead.
    :param channel_ttl: Seconds after which Redis forgets a channel (its
        stream and epoch) that nobody published on and no process followed
        meanwhile; 0 for never.  Use the same value on every process.
    :param make_link: Makes the broker's two connections, from a client
        name and the ``on_ready`` and ``on_lost`` callbacks, as
        ``RedisLink``\\ s to ``address`` do (with ``timeout``), which it
        makes if ``None``: tests give it links to a fake Redis.
    :param presence_lease: Seconds a process's presence lasts in Redis
        unless renewed (15): a process that died leaves every count once
        it ends.  Use the same value on every process.
    :param presence_renew: Seconds between two renewals of the lease (5);
        less than ``presence_lease``.
    :param presence_flush: Seconds from a connection's arrival or
        departure to its write to Redis (0.2): the changes of that time
        are written together, up to 200 channels and 2,000 identities a
        script.
    :param presence_poll: Seconds between two reads of the changes of the
        channels with local followers (0.5), all in one script (per 200
        channels).
    :param idempotency_ttl: Seconds an idempotency key is remembered after
        the publish that first carried it (300; see :meth:`publish`); 0
        remembers none, and a publish carrying one fails.  Use the same
        value on every process.
    :param wait_replicas: After each publish, ``WAIT`` until this many
        replicas have the event (or ``wait_timeout``) before answering; if
        fewer had it, the publish fails with :class:`BrokerUnavailable`
        (the event may still be delivered: it is on the primary).  0 (the
        default) does not wait: a failover may then lose the last events
        acknowledged, which the epochs announce as ``history-lost``.
    :param wait_timeout: Seconds ``WAIT`` may take (1); with
        ``wait_replicas``, less than ``timeout``.
    :param make_node: On Redis Cluster, makes the connection to one
        primary for the sharded subscriptions, from its address, a client
        name and the ``on_ready`` and ``on_lost`` callbacks; a
        ``RedisLink`` with ``timeout`` if ``None``.
    :raises ValueError: for a prefix holding ``{`` or ``}`` on a cluster,
        a negative ``history``, a ``block_ms`` below 1,
        a negative ``channel_ttl`` or ``idempotency_ttl``, or presence
        intervals out of bounds (see ``RedisPresence``).
    """

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        *,
        history: int = DEFAULT_HISTORY,
        prefix: str = DEFAULT_PREFIX,
        block_ms: int = BLOCK_MS,
        timeout: float = COMMAND_TIMEOUT,
        channel_ttl: float = DEFAULT_CHANNEL_TTL,
        make_link: Callable[..., Any] | None = None,
        presence_lease: float = PRESENCE_LEASE,
        presence_renew: float = PRESENCE_RENEW,
        presence_flush: float = PRESENCE_FLUSH,
        presence_poll: float = PRESENCE_POLL,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        make_node: MakeNode | None = None,
    ) -> None:
        if wait_replicas < 0:
            raise ValueError(f"wait_replicas must be >= 0, not {wait_replicas!r}")
        if wait_replicas and not 0 < wait_timeout < timeout:
            raise ValueError(
                f"wait_timeout must be > 0 and < timeout ({timeout!r}), "
                f"not {wait_timeout!r}"
            )
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        #: With Sentinel and links of the broker's own making, the sentinels.
        self.sentinels: Sentinels | None = None
        #: Whether Redis is a cluster (``redis+cluster://``).
        self.cluster = bool(address.cluster)
        if self.cluster and ("{" in prefix or "}" in prefix):
            raise ValueError(
                f"prefix must not hold '{{' or '}}' on Redis Cluster (the channel "
                f"name is the keys' hash tag), not {prefix!r}"
            )
        if make_link is None:
            if address.sentinels:
                self.sentinels = Sentinels(reactor, address)
            make_link = _redis_links(reactor, address, timeout, self.sentinels)
        if make_node is None:
            make_node = _node_links(reactor, timeout)
        if history < 0:
            raise ValueError(f"history must be >= 0 events, not {history!r}")
        if block_ms < 1:
            raise ValueError(f"block_ms must be >= 1, not {block_ms!r}")
        if not channel_ttl >= 0:
            raise ValueError(f"channel_ttl must be >= 0 seconds, not {channel_ttl!r}")
        if not idempotency_ttl >= 0:
            raise ValueError(
                f"idempotency_ttl must be >= 0 seconds, not {idempotency_ttl!r}"
            )
        self.idempotency_ttl = idempotency_ttl
        self._idempotency_ms = (
            max(1, round(idempotency_ttl * 1000)) if idempotency_ttl else 0
        )
        self.address = address
        self.history = history
        self.maxlen = max(history, 1)
        self.prefix = prefix
        self.block_ms = block_ms
        self.channel_ttl = channel_ttl
        self._ttl_ms = max(1, round(channel_ttl * 1000)) if channel_ttl else 0
        #: Seconds between two checks of the followed channels.
        self.check_interval = (
            min(channel_ttl / 3, _CHECK_INTERVAL) if channel_ttl else _CHECK_INTERVAL
        )
        self._commands: RedisLink = make_link(
            "twisted_sse:commands", self._commands_ready, self._commands_lost
        )
        #: Per channel, the newest event this process acknowledged (epoch,
        #: stream id) and when, for the last ``ACKED_WINDOW`` seconds.
        self._acked: OrderedDict[str, tuple[str, EventId, float]] = OrderedDict()
        #: When the command connection was lost, if it was since it was
        #: last ready.
        self._lost_at: float | None = None
        self._presence = RedisPresence(
            reactor,
            self._commands,
            prefix,
            lease=presence_lease,
            renew=presence_renew,
            flush=presence_flush,
            poll=presence_poll,
            cluster=self.cluster,
        )
        self._watches = Watches(self._commands, prefix)
        self._log_length = _watch.LOG_LENGTH
        self._reader = Reader(
            reactor,
            self._commands,
            make_link,
            block_ms=block_ms,
            maxlen=self.maxlen,
            ttl_ms=self._ttl_ms,
            check_interval=self.check_interval,
            on_checked=self._unpark,
            watches=None if self.cluster else self._watches,
            watch_shards=self._watch_shards(reactor, address, make_node),
        )
        self._clock: IReactorTime = reactor
        self._tokens = itertools.count()
        self._retry_call: IDelayedCall | None = None
        #: Replays whose last page read failed, to read again.
        self._failed: list[tuple[Channel, Replay]] = []

    def _watch_shards(
        self, reactor: Any, address: RedisAddress, make_node: MakeNode
    ) -> Callable[[Any, Callable[[str], object]], ShardWatch] | None:
        """On a cluster, how the reader makes its shard watch."""
        if not self.cluster:
            return None

        def watch_shards(link: Any, notify: Callable[[str], object]) -> ShardWatch:
            return ShardWatch(reactor, link, address, make_node, notify)

        return watch_shards

    @classmethod
    def with_links(
        cls, reactor: Any, address: RedisAddress, make_link: MakeLink, **options: Any
    ) -> RedisBroker:
        """
        A broker whose two connections ``make_link`` makes, from a client
        name and the ``on_ready`` and ``on_lost`` callbacks, instead of
        ``RedisLink``\\ s to ``address``: tests give it links to a fake
        Redis.

        :param options: Those of the constructor, but ``timeout`` (the
            links' own).
        """
        return cls(reactor, address, make_link=make_link, **options)

    @property
    def commands(self) -> RedisLink:
        """The connection for commands (publish, replay pages, checks)."""
        return self._commands

    @property
    def reader(self) -> Reader:
        """The reader: its connection, loop and the channels it follows."""
        return self._reader

    @property
    def watches(self) -> Watches:
        """The watches of this process, and how far it has read the log."""
        return self._watches

    @property
    def presence_state(self) -> RedisPresence:
        """This process's presence: its connections and followers."""
        return self._presence

    # Life cycle

    @property
    def available(self) -> bool:
        """Whether publishing and subscribing work right now."""
        return self._commands.ready and self._reader.ready

    @property
    def failovers(self) -> int:
        """Times the sentinels named another primary (0 without Sentinel)."""
        return 0 if self.sentinels is None else self.sentinels.failovers

    @property
    def redirections(self) -> int | None:
        """
        On a cluster, the ``MOVED`` and ``ASK`` answers followed (by the
        command and reader connections); ``None`` otherwise.
        """
        if not self.cluster:
            return None
        links: list[Any] = [self._commands, self._reader.link]
        return sum(getattr(link, "redirections", 0) for link in links)

    def topology(self) -> dict[str, Any] | None:
        """
        The state of the topology for ``/healthz``: with Sentinel, the
        service, primary, each sentinel up or down and the failovers; on a
        cluster, the slots covered, each primary with its slots and
        whether it is up, and the redirections followed; else ``None``.
        """
        if self.sentinels is not None:
            return self.sentinels.state()
        commands: Any = self._commands
        if self.cluster and isinstance(commands, ClusterLink):
            return commands.state()
        return None

    def startService(self) -> None:
        """Connect to Redis (in the background; see :attr:`available`)."""
        super().startService()  # type: ignore[no-untyped-call]
        self._presence.start()
        self._commands.start()
        self._reader.start()
        if self.sentinels is not None:
            self.sentinels.start()

    def stopService(self) -> Deferred[None]:
        """Close the connections; see :meth:`stop`."""
        super().stopService()  # type: ignore[no-untyped-call]
        return self.stop()

    def stop(self) -> Deferred[None]:
        """
        Remove this process's presence, close both connections and stop
        the timers; fires when closed.
        """
        self.running = False
        call, self._retry_call = self._retry_call, None
        if call is not None and call.active():
            call.cancel()
        self._reader.stop_checks()
        if self.sentinels is not None:
            self.sentinels.stop()
        goodbye = self._presence.stop()

        async def stop() -> None:
            await goodbye
            await self._commands.stop()
            await self._reader.stop()

        return Deferred.fromCoroutine(stop())

    def _commands_ready(self) -> None:
        """The command connection is (again) ready."""
        self._presence.connected()
        lost_at, self._lost_at = self._lost_at, None
        if lost_at is not None:
            Deferred.fromCoroutine(self._check_acked(lost_at)).addErrback(
                lambda failure: _log.failure(
                    "Checking the events acknowledged before a lost connection failed",
                    failure,
                )
            )

    def _commands_lost(self) -> None:
        """The command connection is lost (Redis died, or a failover)."""
        self._lost_at = self._clock.seconds()

    def _note_acked(self, event_id: str, channel: str) -> str:
        """Remember ``event_id``, just acknowledged on ``channel``."""
        position = parse_position(str(event_id))
        if position is not None:
            now = self._clock.seconds()
            acked = self._acked
            acked[channel] = (position[0], position[1], now)
            acked.move_to_end(channel)
            while acked:
                oldest = next(iter(acked.values()))
                if oldest[2] >= now - ACKED_WINDOW:
                    break
                acked.popitem(last=False)
        return event_id

    async def _check_acked(self, lost_at: float) -> None:
        """
        After a lost connection, check that Redis still has the events this
        process acknowledged shortly before: a failover to a replica that
        missed them loses them, and if no reader had read them yet, nobody
        would know.  Such a channel's epoch is rotated, so that its readers
        tell their subscribers ``history-lost`` and the lost ids are
        refused on resume.
        """
        recent = [
            (channel, epoch, position)
            for channel, (epoch, position, when) in self._acked.items()
            if when >= lost_at - ACKED_WINDOW
        ]
        self._acked.clear()
        for channel, epoch, position in recent:
            probe = Channel(channel, self.key(channel), self.epoch_key(channel))
            snapshot = await read_snapshot(self._commands, probe, None, 0, self._ttl_ms)
            held = snapshot.last_generated if snapshot.exists else (0, 0)
            if snapshot.epoch != epoch or held >= position:
                continue
            _log.warn(
                "Redis lost events of {channel} acknowledged before a "
                "failover (up to {position}); starting a new epoch",
                channel=channel,
                position=text_id(epoch, position),
            )
            await run_script(
                self._commands,
                ROTATE,
                (probe.key, probe.epoch_key),
                (epoch, self._ttl_ms),
            )
            state = self._reader.channels.get(channel)
            if state is not None:
                self._reader.recheck(state)

    # Presence

    def enter(self, channel: str, identity: str | None) -> None:
        """
        See :meth:`IPresenceBroker.enter`: counted here, written to Redis
        with the other changes of the next ``presence_flush`` seconds.
        """
        self._presence.enter(channel, identity)

    def leave(self, channel: str, identity: str | None) -> None:
        """See :meth:`IPresenceBroker.leave` (and :meth:`enter`)."""
        self._presence.leave(channel, identity)

    def presence(self, channel: str, limit: int) -> Deferred[PresenceInfo]:
        """
        See :meth:`IPresenceBroker.presence`: one script, after this
        process's own changes on ``channel`` if they wait (sent together);
        fails with :class:`BrokerUnavailable` while Redis is unreachable.
        """
        return self._presence.presence(channel, limit)

    def follow_presence(self, channel: str, limit: int, told: Told) -> PresenceFollow:
        """
        See :meth:`IPresenceBroker.follow_presence`: the first
        :class:`PresenceInfo` is read at the end of the reactor turn (or
        when Redis is back), changes every ``presence_poll`` seconds.

        :raises ValueError: for an invalid channel name.
        """
        return self._presence.follow_presence(channel, limit, told)

    # Publishing

    def key(self, channel: str) -> str:
        """
        The stream key of ``channel``: ``<prefix><channel>``, or on Redis
        Cluster ``<prefix>{<channel>}`` (the channel as the hash tag, so
        that the keys of a channel are on one node).
        """
        if self.cluster:
            return f"{self.prefix}{{{channel}}}"
        return self.prefix + channel

    def epoch_key(self, channel: str) -> str:
        """The key of the hash that holds ``channel``'s epoch."""
        return self.key(channel) + "#epoch"

    def idempotency_key(self, channel: str, idempotency_key: str) -> str:
        """
        The key under which Redis remembers ``idempotency_key`` of
        ``channel``: ``<prefix>#idem:{<channel>}:<SHA-256 of the key, in
        hex>`` (the channel as the hash tag: the keys of one channel live
        on one node of a cluster).
        """
        digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
        return f"{self.prefix}#idem:{{{channel}}}:{digest}"

    def publish(
        self,
        channel: str,
        event: Event,
        key: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Deferred[str]:
        """
        See :meth:`IBroker.publish`: one script (the epoch, ``XADD``, the
        TTLs, the publish log's entry); the id is ``<epoch>:<stream entry
        id>``.

        With ``idempotency_key``, the same script first looks for the key
        (see ``idempotency_key``): if it is there, it adds nothing and
        answers the id it holds; otherwise it adds the event and sets the
        key, with the id and the event's digest, for ``idempotency_ttl``
        seconds (``PX``).  Redis runs one script at a time, so repeats at
        once, on any process, publish once.
        """
        try:
            check_publish(channel, event, key, idempotency_key)
        except ValueError as error:
            return fail(error)
        keys: list[Arg] = [self.key(channel), self.epoch_key(channel)]
        args: list[Arg]
        if self.cluster:
            # No publish log (its one key would join every channel's
            # script); the readers are told on the stream's shard channel.
            args = [self.maxlen, self._ttl_ms, LIVE_FIELD]
        else:
            args = [
                self.maxlen,
                self._ttl_ms,
                LOG_FIELD,
                self._watches.key,
                channel,
                self._log_length,
            ]
        digest = ""
        if idempotency_key is not None:
            if not self._idempotency_ms:
                return fail(
                    IdempotencyUnavailable(
                        "idempotency keys are turned off on this broker"
                    )
                )
            digest = event_digest(event, key)
            keys.append(self.idempotency_key(channel, idempotency_key))
            args += [IDEMPOTENCY_FIELD, self._idempotency_ms, digest]
        added = run_script(
            self._commands, PUBLISH, keys, [*args, *event_fields(event, key)]
        )
        if self.wait_replicas:
            added.addCallback(self._replicated, keys[0])
        if idempotency_key is None:
            answered = added.addCallback(reply_text)
        else:
            answered = added.addCallback(_answer_once, digest)
        return answered.addCallback(self._note_acked, channel)

    def _replicated(self, reply: Reply, key: Arg) -> Deferred[Reply]:
        """
        ``WAIT`` for the replicas, then ``reply``; or fail.  On a cluster,
        on the connection to the primary of ``key`` (the channel's stream).
        """
        wanted = self.wait_replicas
        link: Any = self._commands
        if self.cluster and isinstance(link, ClusterLink):
            # WAIT counts the writes of its connection: the node's.
            link = link.node_for(reply_text(key))
            if link is None:
                return fail(BrokerUnavailable("the node of the channel is gone"))

        def counted(replicas: Reply) -> Reply:
            if not isinstance(replicas, int) or replicas < wanted:
                raise BrokerUnavailable(
                    f"the event reached {replicas!r} of the {wanted} replicas "
                    "asked for in time (it may still be delivered)"
                )
            return reply

        waiting: Deferred[Reply] = link.execute(
            "WAIT", wanted, max(1, round(self.wait_timeout * 1000))
        )
        return waiting.addCallback(counted)

    # Watching

    def watch(
        self,
        prefix: str,
        found: Found,
        since: str | None = None,
        known: Callable[[str], bool] | None = None,
    ) -> Watch | Deferred[Watch]:
        """
        See :meth:`IPatternBroker.watch`.  Markers are ids of the publish
        log (``<ms>-<n>``): how far this process's reader has read it.  A
        new watch is given at once when the reader reads the log already
        (another watch of this process); otherwise, or to resume from
        ``since``, once the log is read: what was published after
        ``since`` is scanned in pages of log entries, one script each.
        ``since`` is ``"trimmed"`` when it is older than the log (the
        channels are found from what it keeps), ``"unknown"`` past its end
        or from another Redis.  The channels ``known`` may accept are
        those of the index of the names patterns found (``<prefix>#names``),
        read in pages.

        :raises ValueError: if ``prefix`` is not a valid channel name
            followed by a dot.
        """
        if not prefix.endswith(".") or not valid_channel(prefix[:-1]):
            raise ValueError(f"invalid prefix: {prefix!r}")
        if self.cluster:
            return fail(
                ValueError(
                    f"pattern {prefix + '*'!r} is refused: on Redis Cluster "
                    "this server cannot watch channels; name channels"
                )
            )
        if not self.available:
            return fail(BrokerUnavailable("Redis is not connected"))
        return self._watches.watch(prefix, found, since, known)

    # Subscribing

    def subscribe(
        self, channel: str, deliver: Deliver, last_event_id: str | None = None
    ) -> Deferred[Subscription]:
        """
        See :meth:`IBroker.subscribe`.

        A new subscriber of a channel this process follows joins its
        fan-out at once, at the reader's position; of another channel, once
        the channel's state is read (shared by every new subscriber of the
        reactor turn).  A resuming subscriber's replay is read in pages
        (with the stream's state each time, so that a trim or an epoch
        change after its cursor is seen), delivered as its ``deliver``
        takes them, and joins the fan-out once it reaches the reader's
        position, with no gap and no duplicate.
        """
        if not valid_channel(channel):
            return fail(ValueError(f"invalid channel name: {channel!r}"))
        if not self.available:
            return fail(BrokerUnavailable("Redis is not connected"))
        if not last_event_id:
            at_once = self.subscribe_now(channel, deliver)
            if at_once is not None:
                return succeed(at_once)
        state = self._reader.channels.get(channel)
        if state is None:
            state = self._reader.add(
                Channel(channel, self.key(channel), self.epoch_key(channel))
            )
        token = next(self._tokens)
        local = Local(deliver)
        subscription = _RedisSubscription(
            channel, broker=self, state=state, token=token
        )
        if last_event_id:
            return Deferred.fromCoroutine(
                self._resume(state, local, subscription, token, last_event_id)
            )
        return Deferred.fromCoroutine(self._join(state, local, subscription, token))

    def subscribe_now(
        self, channel: str, deliver: Deliver, last_event_id: str | None = None
    ) -> Subscription | None:
        """
        See :meth:`IBroker.subscribe_now`: a new subscriber (no
        ``last_event_id``) of a channel this process follows is answered
        at once, at the reader's position; any other needs Redis (``None``).

        :raises ValueError: for an invalid channel name.
        """
        if not valid_channel(channel):
            raise ValueError(f"invalid channel name: {channel!r}")
        if last_event_id or not self.available:
            return None
        state = self._reader.channels.get(channel)
        if state is None or state.position is None:
            return None
        # Followed: every event after the reader's position reaches this
        # subscriber, and none before.
        token = next(self._tokens)
        subscription = _RedisSubscription(
            channel,
            position=state.text(state.position),
            broker=self,
            state=state,
            token=token,
        )
        state.subscribers[token] = Local(deliver)
        return subscription

    def watch_prefixes(self) -> dict[str, int]:
        """How many watches (of patterns) each watched prefix has."""
        return self._watches.prefixes()

    def channel_names(self) -> list[str]:
        """The channels that have local subscribers."""
        return list(self._reader.channels)

    def subscriber_count(self, channel: str) -> int:
        """How many local subscriptions ``channel`` has."""
        found = self._reader.channels.get(channel)
        return len(found.subscribers) + len(found.joining) if found else 0

    async def _join(
        self, state: Channel, local: Local, subscription: Subscription, token: int
    ) -> Subscription:
        """A new subscriber of a channel not followed yet."""
        state.joining[token] = local
        try:
            snapshot = await self._shared_snapshot(state)
        except BaseException:
            state.joining.pop(token, None)
            self.forget_if_idle(state)
            raise
        if state.joining.pop(token, None) is None:
            return subscription  # cancelled meanwhile
        self._reader.follow(state, snapshot)
        if state.position is not None:
            subscription.position = state.text(state.position)
        else:
            subscription.position = text_id(snapshot.epoch, snapshot.last_generated)
        state.subscribers[token] = local
        return subscription

    async def _resume(
        self,
        state: Channel,
        local: Local,
        subscription: Subscription,
        token: int,
        last_event_id: str,
    ) -> Subscription:
        """A subscriber resuming after ``last_event_id``: judge, first page."""
        replay = Replay(local, subscription, token)
        state.joining[token] = replay
        parsed = parse_position(last_event_id)
        try:
            if parsed is None or parsed[1] == LAST_ID:
                page = await self._shared_snapshot(state)
            else:
                page = await read_snapshot(
                    self._commands,
                    state,
                    parsed[1],
                    BATCH,
                    self._ttl_ms,
                    want=parsed[0],
                )
        except BaseException:
            state.joining.pop(token, None)
            self.forget_if_idle(state)
            raise
        if state.joining.get(token) is not replay:
            return subscription  # cancelled meanwhile
        self._reader.follow(state, page)
        head = page.last_generated
        subscription.position = (
            state.text(head) if page.epoch == state.epoch else text_id(page.epoch, head)
        )
        if parsed is None:
            # An id of a stream without epochs (before them) may be known:
            # it is not garbage, but cannot be judged.
            old = parse_event_id(last_event_id) is not None
            lost: str | None = "unknown" if old else "malformed"
        elif parsed[0] != page.epoch or parsed[1] > head:
            lost = "unknown"
        elif page.lost_after(parsed[1]):
            lost = "trimmed"
        else:
            lost = None
        subscription.history_lost = lost
        replay.epoch = page.epoch
        if lost is None and parsed is not None:
            replay.cursor = parsed[1]
            self._replay_page(state, replay, page)
        else:
            # Live from the channel's position, as the hub tells the client.
            replay.cursor = head
            self._replay_onwards(state, replay, more=False)
        return subscription

    def _replay_page(self, state: Channel, replay: Replay, page: Snapshot) -> None:
        """Go on with ``replay`` from ``page``, read after its cursor."""
        if state.joining.get(replay.token) is not replay:
            return
        self._reader.follow(state, page)
        entries, more = page.entries, page.more
        loss: Published | None = None
        if page.epoch != replay.epoch:
            # Redis lost the channel (or its tail) since the last page.
            start = restart_point(page, replay.cursor, replay.epoch)
            if start != replay.cursor:
                entries, more = [], True
            replay.epoch, replay.cursor = page.epoch, start
            loss = loss_event(state.name, text_id(page.epoch, start), "unknown")
        elif page.lost_after(replay.cursor):
            # Trimmed past the cursor while the replay waited.
            replay.cursor = max(replay.cursor, page.lost_up_to())
            loss = loss_event(state.name, text_id(page.epoch, replay.cursor), "trimmed")
        if loss is not None and not self._give(state, replay, loss):
            return
        prefix = page.epoch + ":"
        last = len(entries) - 1
        for index, (text, event_id, fields) in enumerate(entries):
            if event_id <= replay.cursor:
                continue
            replay.cursor = event_id
            published = self._reader.decode(state.name, prefix + text, fields)
            if published is None:
                continue
            replay.subscription.replayed += 1
            if not self._give(state, replay, published):
                if replay.paused and index == last and not more:
                    # It has no room, but the replay is done: live events
                    # go to it whatever it answers.
                    self._try_join(state, replay)
                return
        self._replay_onwards(state, replay, more)

    def _give(self, state: Channel, replay: Replay, published: Published) -> bool:
        """Deliver one replayed event; whether to go on."""
        replay.resumed = False
        try:
            taken = replay.local.deliver(published)
        except Exception:
            _log.failure("A subscriber failed to take an event")
            taken = None
        if state.joining.get(replay.token) is not replay:
            return False  # cancelled by its deliver
        if taken is False and not replay.resumed:
            replay.paused = True
            return False
        return True

    def _replay_onwards(self, state: Channel, replay: Replay, more: bool) -> None:
        """After a page: the next one, or the live fan-out, or a wait."""
        if more:
            self._read_page(state, replay)
        elif self._try_join(state, replay):
            pass
        elif state.position is not None and replay.epoch == state.epoch:
            # The reader has gone on since the page was read.
            self._read_page(state, replay)
        else:
            # The reader has not seen this epoch yet: it checks the
            # channel now, and then picks the replay up (_unpark).
            replay.parked = True
            self._reader.recheck(state)

    def _try_join(self, state: Channel, replay: Replay) -> bool:
        """Join the live fan-out if the replay has reached the reader."""
        position = state.position
        if position is None or replay.epoch != state.epoch or replay.cursor < position:
            return False
        del state.joining[replay.token]
        local = replay.local
        # Events up to the cursor that the reader has yet to handle were
        # replayed: skip them.
        local.floor = replay.cursor if replay.cursor > position else None
        state.subscribers[replay.token] = local
        replay.paused = replay.parked = False
        return True

    def _read_page(self, state: Channel, replay: Replay) -> None:
        """Read the page after the replay's cursor, and go on from it."""
        replay.parked = False

        def failed(failure: Failure) -> None:
            if state.joining.get(replay.token) is not replay:
                return
            _log.warn(
                "Reading the history of channel {channel} failed: {error}; "
                "trying again",
                channel=state.name,
                error=failure.getErrorMessage(),
            )
            self._failed.append((state, replay))
            if self._retry_call is None and self.running:
                self._retry_call = self._clock.callLater(_RETRY_PAGE, self._retry_pages)

        reading = read_snapshot(
            self._commands, state, replay.cursor, BATCH, self._ttl_ms
        )
        # A failed read is tried again; a failure while delivering is not
        # (it would deliver twice), only logged.
        reading.addCallbacks(
            lambda page: self._replay_page(state, replay, page), failed
        ).addErrback(lambda failure: _log.failure("A replay failed", failure))

    def _retry_pages(self) -> None:
        self._retry_call = None
        failed, self._failed = self._failed, []
        for state, replay in failed:
            if state.joining.get(replay.token) is replay:
                self._read_page(state, replay)

    def resume_replay(self, state: Channel, token: int) -> None:
        """
        The subscriber ``token`` of ``state`` has room again (what its
        :meth:`Subscription.resume_replay` calls): go on with its replay
        if it is paused.
        """
        replay = state.joining.get(token)
        if not isinstance(replay, Replay):
            return
        replay.resumed = True
        if replay.paused:
            replay.paused = False
            self._read_page(state, replay)

    def _unpark(self, state: Channel) -> None:
        """The reader has checked ``state``: the replays waiting for it go on."""
        for replay in list(state.joining.values()):
            if (
                isinstance(replay, Replay)
                and replay.parked
                and state.joining.get(replay.token) is replay
                and not self._try_join(state, replay)
            ):
                self._read_page(state, replay)

    def _shared_snapshot(self, state: Channel) -> Deferred[Snapshot]:
        """
        The channel's state (no entries), read once for every subscriber
        that asks during this reactor turn: a burst of new subscribers (a
        deploy, a network blip) costs Redis one script per channel and
        turn instead of one each.
        """
        answer: Deferred[Snapshot] = Deferred()
        if state.waiting is None:
            state.waiting = []
            self._clock.callLater(0, self._read_shared_snapshot, state)
        state.waiting.append(answer)
        return answer

    def _read_shared_snapshot(self, state: Channel) -> None:
        waiting, state.waiting = state.waiting or [], None

        def answer(result: Snapshot | Failure) -> None:
            for each in waiting:
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        read_snapshot(self._commands, state, None, 0, self._ttl_ms).addBoth(answer)

    def forget_if_idle(self, state: Channel) -> None:
        """A subscription of ``state`` ended: stop following it if idle."""
        self._reader.forget_if_idle(state)
