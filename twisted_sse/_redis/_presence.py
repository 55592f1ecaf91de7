"""
Presence over Redis: :class:`RedisPresence`, what
:class:`~twisted_sse.RedisBroker` answers :class:`~twisted_sse.IPresenceBroker`
with.

Each process counts its own connections (a
:class:`~twisted_sse._presence.LocalPresence`) and keeps them in Redis
under a lease; the keys are in :mod:`twisted_sse._redis`'s design text, the
scripts in :mod:`twisted_sse._redis._scripts`.  What the hub calls on every
connection (:meth:`RedisPresence.enter`, :meth:`RedisPresence.leave`) only
counts and marks the channel; the marked channels are written every
``flush`` seconds, what changed since the last write of each (whole again
when Redis lost it or a write failed), up to :data:`BATCH_CHANNELS`
channels and :data:`BATCH_CHANGES` identities a script (a channel with
more changes is written in parts), so that a storm of connections costs
Redis a few scripts of a few milliseconds each.  Every ``renew``
seconds one script per batch renews the lease of every channel this
process has connections on; a renewal that finds the process's entry gone
or of another version (Redis restarted, was flushed, failed over, or the
lease ended before the process renewed it) has the channel written whole.

Followers: each followed channel's log is read every ``poll`` seconds,
every followed channel in one script per batch, from the first change any
of its followers lacks; each follower is told the changes after the one
it has.  A follower starts from a :class:`~twisted_sse.PresenceInfo` read
with the number of the last change logged (one script, atomically), shared
by the followers of a channel that start in the same reactor turn; it is
told a new one when it would miss changes: the log was trimmed past it, or
the presence was made anew (another epoch).
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._broker import BrokerUnavailable, valid_channel
from .._presence import (
    JOIN_EVENT,
    LEAVE_EVENT,
    MAX_PRESENCE_MEMBERS,
    LocalPresence,
    Member,
    PresenceChange,
    PresenceFollow,
    PresenceInfo,
    Told,
)
from ._cluster import group_by_slot, key_slot
from ._entries import as_list, text
from ._protocol import Arg, Reply
from ._scripts import (
    PRESENCE_CHANGES,
    PRESENCE_READ,
    PRESENCE_UPDATE,
    Script,
    run_script,
)

__all__ = [
    "BATCH_BYTES",
    "BATCH_CHANGES",
    "BATCH_CHANNELS",
    "LOG_LENGTH",
    "POLL_PAGE",
    "PRESENCE_FLUSH",
    "PRESENCE_LEASE",
    "PRESENCE_POLL",
    "PRESENCE_RENEW",
    "WRITE_CHANGES",
    "RedisPresence",
]

_log = Logger()

#: Seconds a process's entry lasts in Redis unless renewed.
PRESENCE_LEASE = 15.0
#: Seconds between two renewals of a process's leases.
PRESENCE_RENEW = 5.0
#: Seconds between a change of the local connections and its write.
PRESENCE_FLUSH = 0.2
#: Seconds between two reads of the followed channels' logs.
PRESENCE_POLL = 0.5
#: Changes each channel's log keeps: a follower further behind is told a
#: new PresenceInfo instead.
LOG_LENGTH = 1000
#: The most changes of a channel one poll reads (more are read at once
#: after).
POLL_PAGE = 1000
#: The most channels one script writes, renews or polls.
BATCH_CHANNELS = 200
#: The most identities whose connections one write script changes (each
#: costs Redis a few commands): a script stays within milliseconds.
BATCH_CHANGES = 2000
#: About the most bytes of identities one write script carries.
BATCH_BYTES = 128 * 1024
#: The most identities one write of a channel changes: more are written in
#: parts (consecutive versions), so that no script is long.
WRITE_CHANGES = 1000


#: A write of one channel: the channel, its new version, the version it
#: changes (``*``: any, ``''``: none), its connections (-1: a renewal),
#: the identities' connections (or their changes) as JSON, and how many
#: identities that is.
_Write = tuple[str, int, str, int, str, int]


def _json(identities: dict[str, int]) -> str:
    return json.dumps(identities, separators=(",", ":"))


@define(eq=False)
class _Written:
    """What this process last sent to Redis for a channel."""

    #: The version sent (each write has a new one).
    version: int
    #: The connections sent.
    total: int
    #: Whether the next write must be whole (the last one may be lost, or
    #: Redis holds another version).
    whole: bool = False


@define(eq=False)
class _Follower:
    """One follower of a channel."""

    limit: int
    told: Told
    #: The number of the last change it has (``None``: it waits for a
    #: PresenceInfo).
    after: int | None = None


@define(eq=False)
class _Followed:
    """A followed channel: its followers, and the epoch they know."""

    channel: str
    #: The presence's epoch every follower with a position has ('': none).
    epoch: str = ""
    followers: dict[int, _Follower] = field(factory=dict)
    #: Whether a read for the followers that wait is sent or due.
    reading: bool = False

    def positioned(self) -> list[_Follower]:
        return [f for f in self.followers.values() if f.after is not None]


@frozen
class _Read:
    """What the read script answered for a channel."""

    epoch: str
    changes: int
    count: int
    identities: int
    members: tuple[Member, ...]

    def info(self, channel: str, limit: int) -> PresenceInfo:
        members = self.members[:limit]
        return PresenceInfo(channel, self.count, members, self.identities > limit)


def _read_reply(reply: Reply) -> _Read:
    epoch, changes, count, identities, flat = as_list(reply)
    pairs = as_list(flat)
    members = tuple(
        Member(text(pairs[i]), -round(float(text(pairs[i + 1]))))
        for i in range(0, len(pairs) - 1, 2)
    )
    return _Read(
        text(epoch) if epoch is not None else "",
        int(text(changes)),
        int(text(count)),
        int(text(identities)),
        members,
    )


def _limit(limit: int) -> int:
    return max(0, min(int(limit), MAX_PRESENCE_MEMBERS))


def _change(channel: str, entry: Reply) -> PresenceChange:
    value = text(entry)
    return PresenceChange(
        channel, JOIN_EVENT if value[:1] == "j" else LEAVE_EVENT, value[1:]
    )


class RedisPresence:
    """
    The presence of a :class:`~twisted_sse.RedisBroker`: this process's
    connections, written to Redis under a lease, and its followers.

    :param clock: Times the writes, renewals and polls.
    :param commands: The broker's command link (``ready``, ``execute``).
    :param prefix: The broker's key prefix.
    :param lease: Seconds an entry lasts unless renewed.
    :param renew: Seconds between two renewals.
    :param flush: Seconds from a change to its write.
    :param poll: Seconds between two reads of the followed channels.

    :raises ValueError: unless ``0 < renew < lease`` and ``flush`` and
        ``poll`` are positive.
    """

    def __init__(
        self,
        clock: IReactorTime,
        commands: Any,
        prefix: str,
        *,
        lease: float = PRESENCE_LEASE,
        renew: float = PRESENCE_RENEW,
        flush: float = PRESENCE_FLUSH,
        poll: float = PRESENCE_POLL,
        cluster: bool = False,
    ) -> None:
        if not 0 < renew < lease:
            raise ValueError(
                f"presence renewals must come more often than the lease ends: "
                f"0 < renew ({renew!r}) < lease ({lease!r})"
            )
        if not flush > 0 or not poll > 0:
            raise ValueError(
                f"presence flush ({flush!r}) and poll ({poll!r}) must be > 0 seconds"
            )
        self._clock = clock
        self._commands = commands
        self.prefix = prefix
        self.lease = lease
        self.renew = renew
        self.flush = flush
        self.poll = poll
        #: On Redis Cluster, a script holds the channels of one slot only.
        self.cluster = cluster
        self._lease_ms = max(1, round(lease * 1000))
        #: The keys outlive the lease: an entry is reaped before they go.
        self._ttl_ms = 2 * self._lease_ms
        #: This process's id in Redis: new at each start.
        self.process_id = secrets.token_hex(8)
        self.local = LocalPresence()
        self.running = False
        self._versions = itertools.count(1)
        self._tokens = itertools.count()
        #: Channels whose connections changed since their last write.
        self._dirty: set[str] = set()
        #: Per channel, how many connections each identity gained (or lost,
        #: if negative) since the last write planned: what the next write
        #: sends, so that a write costs its changes, not the channel's size.
        self._changes: dict[str, dict[str, int]] = {}
        #: What was last sent of each channel that may have an entry.
        self._written: dict[str, _Written] = {}
        self._followed: dict[str, _Followed] = {}
        self._flush_call: IDelayedCall | None = None
        self._renew_call: IDelayedCall | None = None
        self._poll_call: IDelayedCall | None = None
        self._polling = False
        #: Whether a failure is logged and not yet followed by a success.
        self._failing = False

    # Keys

    def keys(self, channel: str) -> tuple[str, str, str]:
        """
        The keys of ``channel``'s presence: its processes' hash, its
        identities (a sorted set) and its log (a list).
        """
        base = f"{self.prefix}#presence:{{{channel}}}:"
        return base + "procs", base + "subs", base + "log"

    def process_key(self, channel: str, process_id: str | None = None) -> str:
        """The key of a process's connections by identity on ``channel``."""
        base = f"{self.prefix}#presence:{{{channel}}}:"
        return base + "proc:" + (process_id or self.process_id)

    # Life cycle

    def start(self) -> None:
        """Write what is counted, and renew and poll from now on."""
        if self.running:
            return
        self.running = True
        self.process_id = secrets.token_hex(8)
        self._dirty.update(self.local.channels())
        self._schedule_flush()
        if self._followed:
            for followed in self._followed.values():
                for follower in followed.followers.values():
                    follower.after = None
                self._want_read(followed)
            self._schedule_poll()

    def stop(self) -> Deferred[None]:
        """
        Stop the timers and remove this process's entries (the identities
        that were only here leave); fires when Redis answered (or could
        not).
        """
        self.running = False
        calls = (self._flush_call, self._renew_call, self._poll_call)
        self._flush_call = self._renew_call = self._poll_call = None
        for call in calls:
            if call is not None and call.active():
                call.cancel()
        self._dirty.update(self.local.channels())
        written, self._written = self._written, {}
        # After a start, each channel's first write carries all of it.
        noted, self._changes = self._changes, {}
        if not written or not self._commands.ready:
            return succeed(None)
        removals: list[_Write] = []
        for channel, last in written.items():
            if last.whole:
                version = next(self._versions)
                removals.append((channel, version, "*", 0, "{}", 0))
                continue
            # What was sent: what is counted, less what changed since.
            sent = self.local.identities(channel)
            for sub, delta in noted.get(channel, {}).items():
                if left := sent.get(sub, 0) - delta:
                    sent[sub] = left
                else:
                    sent.pop(sub, None)
            if not sent and last.total == 0:
                continue  # already removed
            removals += self._parts(
                channel,
                str(last.version),
                0,
                last.total,
                {sub: -n for sub, n in sent.items()},
            )
        goodbyes = [
            self._run(PRESENCE_UPDATE, keys, args).addErrback(_goodbye_failed)
            for keys, args, _ in self._update_batches(removals)
        ]
        return DeferredList(goodbyes).addCallback(lambda _: None)

    def connected(self) -> None:
        """The command link is (again) ready: renew now, write what waits."""
        if not self.running:
            return
        self._renew()
        self._schedule_flush(at_once=True)
        if self._followed:
            for followed in self._followed.values():
                if any(f.after is None for f in followed.followers.values()):
                    self._want_read(followed)
            self._schedule_poll(at_once=True)

    # Counting

    def enter(self, channel: str, identity: str | None) -> None:
        """See :meth:`~twisted_sse.IPresenceBroker.enter`."""
        self.local.enter(channel, identity)
        if identity is not None:
            self._change(channel, identity, 1)
        self._mark(channel)

    def leave(self, channel: str, identity: str | None) -> None:
        """See :meth:`~twisted_sse.IPresenceBroker.leave`."""
        local = self.local
        before = local.count(channel)
        local.leave(channel, identity)
        if local.count(channel) == before:
            return  # never entered: nothing changed
        if identity is not None:
            self._change(channel, identity, -1)
        self._mark(channel)

    def _change(self, channel: str, identity: str, delta: int) -> None:
        changes = self._changes.get(channel)
        if changes is None:
            self._changes[channel] = {identity: delta}
        else:
            changes[identity] = changes.get(identity, 0) + delta

    def _mark(self, channel: str) -> None:
        self._dirty.add(channel)
        self._schedule_flush()

    def _schedule_flush(self, at_once: bool = False) -> None:
        if not self.running or not self._dirty:
            return
        call = self._flush_call
        if call is not None:
            if at_once and call.active():
                call.reset(0)
            return
        self._flush_call = self._clock.callLater(
            0 if at_once else self.flush, self._flush_dirty
        )

    def _flush_dirty(self) -> None:
        self._flush_call = None
        if not self._dirty or not self._commands.ready:
            # Redis is down: connected() writes them.
            return
        channels, self._dirty = sorted(self._dirty), set()
        self._write(channels)

    def _write(self, channels: Sequence[str]) -> None:
        """Send what changed on ``channels`` since their last write."""
        writes: list[_Write] = []
        for channel in channels:
            writes += self._plan(channel)
        self._send(writes)
        self._schedule_renew()

    def _plan(self, channel: str) -> list[_Write]:
        """
        The writes that take ``channel``'s entry from what was last sent to
        what is counted now: the identities whose connections changed since
        (what :meth:`enter` and :meth:`leave` noted, so that it costs the
        changes, not the channel's size), in parts of :data:`WRITE_CHANGES`
        identities (consecutive versions); or all of them when there is no
        entry yet, or Redis may hold another version.
        """
        noted = self._changes.pop(channel, None)
        total = self.local.count(channel)
        last = self._written.get(channel)
        if last is not None and last.whole:
            identities = self.local.identities(channel)
            version = next(self._versions)
            self._written[channel] = _Written(version, total)
            return [(channel, version, "*", total, _json(identities), len(identities))]
        if last is None:
            if total == 0:
                return []  # nothing here, nothing in Redis
            base, changes, interim = "", self.local.identities(channel), total
        else:
            changes = {} if noted is None else {s: d for s, d in noted.items() if d}
            if not changes and total == last.total:
                return []
            base = str(last.version)
            interim = last.total
        writes = self._parts(channel, base, total, interim, changes)
        self._written[channel] = _Written(writes[-1][1], total)
        return writes

    def _parts(
        self,
        channel: str,
        base: str,
        total: int,
        interim: int,
        changes: dict[str, int],
    ) -> list[_Write]:
        """
        The writes of ``changes`` on version ``base`` of ``channel``'s
        entry, in parts of :data:`WRITE_CHANGES` identities (consecutive
        versions, at least one): the last sets ``total`` connections, those
        before it ``interim`` (or ``total`` if ``interim`` is 0: only the
        last part of a removal removes the entry).
        """
        if interim <= 0:
            interim = total
        step = WRITE_CHANGES
        if len(changes) <= step:
            parts = [changes]
        else:
            items = list(changes.items())
            parts = [dict(items[i : i + step]) for i in range(0, len(items), step)]
        writes: list[_Write] = []
        for number, part in enumerate(parts, 1):
            version = next(self._versions)
            writes.append(
                (
                    channel,
                    version,
                    base,
                    total if number == len(parts) else interim,
                    _json(part),
                    len(part),
                )
            )
            base = str(version)
        return writes

    def _send(self, writes: Sequence[_Write]) -> None:
        for keys, args, batch in self._update_batches(writes):
            self._run(PRESENCE_UPDATE, keys, args).addCallbacks(
                self._updated,
                self._update_failed,
                callbackArgs=(batch,),
                errbackArgs=(batch,),
            ).addErrback(_log_error)

    def _update_batches(
        self, writes: Sequence[_Write]
    ) -> Iterator[tuple[list[Arg], list[Arg], list[tuple[str, int]]]]:
        """
        The scripts for ``writes``, each of at most :data:`BATCH_CHANNELS`
        writes, :data:`BATCH_CHANGES` identities and about
        :data:`BATCH_BYTES` bytes of them: their keys, arguments, and the
        channels with the versions written.
        """
        keys: list[Arg] = []
        args: list[Arg] = []
        batch: list[tuple[str, int]] = []
        size = changed = 0
        head: list[Arg] = [self.process_id, self._lease_ms, self._ttl_ms, LOG_LENGTH]
        slot = -1
        if self.cluster:
            # Stable: the parts of a channel stay in order.
            writes = sorted(writes, key=lambda write: self._slot(write[0]))
        for channel, version, base, total, given, count in writes:
            if self.cluster:
                slot, last_slot = self._slot(channel), slot
                if batch and slot != last_slot:
                    yield keys, [*head, *args], batch
                    keys, args, batch, size, changed = [], [], [], 0, 0
            if batch and (
                len(batch) >= BATCH_CHANNELS
                or size + len(given) > BATCH_BYTES
                or changed + count > BATCH_CHANGES
            ):
                yield keys, [*head, *args], batch
                keys, args, batch, size, changed = [], [], [], 0, 0
            keys += [*self.keys(channel), self.process_key(channel)]
            args += [version, base, total, given]
            batch.append((channel, version))
            size += len(given)
            changed += count

        if batch:
            yield keys, [*head, *args], batch

    def _updated(self, reply: Reply, batch: list[tuple[str, int]]) -> None:
        self._succeeded()
        for (channel, version), stale in zip(batch, as_list(reply), strict=True):
            last = self._written.get(channel)
            if last is None or last.version != version:
                continue
            if stale == 1:
                # Redis holds another version (or none): write all of it.
                last.whole = True
                self._mark(channel)
            elif last.total == 0:
                del self._written[channel]

    def _update_failed(self, failure: Failure, batch: list[tuple[str, int]]) -> None:
        self._failed("Writing presence to Redis", failure)
        for channel, version in batch:
            last = self._written.get(channel)
            if last is not None and last.version == version:
                # Perhaps written, perhaps not: write all of it again.
                last.whole = True
                self._mark(channel)

    # Renewing

    def _schedule_renew(self) -> None:
        """Renew in ``renew`` seconds, while this process has entries."""
        if self.running and self._renew_call is None and self._written:
            self._renew_call = self._clock.callLater(self.renew, self._renew_due)

    def _renew_due(self) -> None:
        self._renew_call = None
        self._renew()
        self._schedule_renew()

    def _renew(self) -> None:
        """Renew the lease of every channel this process has written."""
        if not self._commands.ready:
            return
        renewals = [
            (channel, last.version, str(last.version), -1, "", 0)
            for channel, last in self._written.items()
            if last.total > 0 and not last.whole and channel not in self._dirty
        ]
        for keys, args, batch in self._update_batches(renewals):
            self._run(PRESENCE_UPDATE, keys, args).addCallbacks(
                self._updated,
                lambda failure: self._failed("Renewing presence in Redis", failure),
                callbackArgs=(batch,),
            ).addErrback(_log_error)

    # Reading

    def presence(self, channel: str, limit: int) -> Deferred[PresenceInfo]:
        """
        See :meth:`~twisted_sse.IPresenceBroker.presence`: one script (after
        the write of this process's changes on ``channel``, if any wait,
        sent at once before it); ``limit`` is bounded by
        :data:`~twisted_sse.MAX_PRESENCE_MEMBERS`.
        """
        if not valid_channel(channel):
            return fail(ValueError(f"invalid channel name: {channel!r}"))
        if not self._commands.ready:
            return fail(BrokerUnavailable("Redis is not connected"))
        limit = _limit(limit)
        return self._read(channel, limit).addCallback(
            lambda read: read.info(channel, limit)
        )

    def _read(self, channel: str, limit: int) -> Deferred[_Read]:
        if channel in self._dirty and self.running:
            # This process's own changes first: what it answers includes them.
            self._dirty.discard(channel)
            self._write([channel])
        keys = self.keys(channel)
        return self._run(
            PRESENCE_READ, keys, (limit, LOG_LENGTH, self._ttl_ms)
        ).addCallback(_read_reply)

    # Following

    def follow_presence(self, channel: str, limit: int, told: Told) -> PresenceFollow:
        """
        See :meth:`~twisted_sse.IPresenceBroker.follow_presence`: the first
        PresenceInfo comes once read (at the end of the reactor turn, or
        when Redis is back), the changes every ``poll`` seconds.

        :raises ValueError: for an invalid channel name.
        """
        if not valid_channel(channel):
            raise ValueError(f"invalid channel name: {channel!r}")
        followed = self._followed.get(channel)
        if followed is None:
            followed = self._followed[channel] = _Followed(channel)
        token = next(self._tokens)
        followed.followers[token] = _Follower(_limit(limit), told)

        def cancel() -> None:
            followed.followers.pop(token, None)
            if not followed.followers and self._followed.get(channel) is followed:
                del self._followed[channel]

        self._want_read(followed)
        self._schedule_poll()
        return PresenceFollow(channel, cancel)

    def followed(self) -> dict[str, int]:
        """How many followers each followed channel has."""
        return {name: len(f.followers) for name, f in self._followed.items()}

    def _want_read(self, followed: _Followed) -> None:
        if followed.reading or not self.running:
            return
        followed.reading = True
        self._clock.callLater(0, self._read_for, followed)

    def _read_for(self, followed: _Followed) -> None:
        """Read the channel for its followers that wait (shared by all)."""
        if self._followed.get(followed.channel) is not followed or not self.running:
            followed.reading = False
            return
        if not self._commands.ready or not any(
            f.after is None for f in followed.followers.values()
        ):
            # None waits any more; or connected() (or the next poll) reads
            # again.
            followed.reading = False
            return
        limit = max(f.limit for f in followed.followers.values())

        def failed(failure: Failure) -> None:
            followed.reading = False
            self._failed("Reading presence from Redis", failure)

        self._read(followed.channel, limit).addCallbacks(
            lambda read: self._started(followed, read, limit), failed
        ).addErrback(_log_error)

    def _started(self, followed: _Followed, read: _Read, limit: int) -> None:
        """The read for the followers that wait came: tell them."""
        followed.reading = False
        self._succeeded()
        if self._followed.get(followed.channel) is not followed or not self.running:
            return
        # Those with a position know another epoch: they may have missed
        # changes (Redis lost the presence), so they start again too.  A
        # follower that knew none (nobody was there) has missed none.
        again = followed.epoch != read.epoch and followed.epoch != ""
        followed.epoch = read.epoch
        later = False
        infos: dict[int, PresenceInfo] = {}
        for token, follower in list(followed.followers.items()):
            if follower.after is not None and not again:
                continue
            if follower.limit > limit:
                follower.after = None  # came after the read was sent
                later = True
                continue
            follower.after = read.changes
            info = infos.get(follower.limit)
            if info is None:
                info = infos[follower.limit] = read.info(
                    followed.channel, follower.limit
                )
            if followed.followers.get(token) is follower:
                _tell(follower, info)
        if later:
            self._want_read(followed)

    def _schedule_poll(self, at_once: bool = False) -> None:
        if not self.running or not self._followed:
            return
        call = self._poll_call
        if call is not None:
            if at_once and call.active():
                call.reset(0)
            return
        self._poll_call = self._clock.callLater(
            0 if at_once else self.poll, self._poll_followed
        )

    def _poll_followed(self) -> None:
        """Read the changes of every followed channel."""
        self._poll_call = None
        if not self._followed:
            return
        self._schedule_poll()
        if not self._commands.ready or self._polling:
            return
        asked: list[tuple[_Followed, str, int]] = []
        for followed in list(self._followed.values()):
            positioned = followed.positioned()
            if len(positioned) < len(followed.followers):
                self._want_read(followed)
            if positioned:
                after = min(f.after for f in positioned if f.after is not None)
                asked.append((followed, followed.epoch, after))
        if not asked:
            return
        polls = []
        groups = [asked]
        if self.cluster:
            groups = group_by_slot(asked, lambda item: self.keys(item[0].channel)[0])
        batches = [
            group[start : start + BATCH_CHANNELS]
            for group in groups
            for start in range(0, len(group), BATCH_CHANNELS)
        ]
        for batch in batches:
            keys: list[Arg] = []
            args: list[Arg] = [POLL_PAGE, LOG_LENGTH, self._ttl_ms]
            for followed, epoch, after in batch:
                keys += self.keys(followed.channel)
                args += [epoch, after]
            polls.append(
                self._run(PRESENCE_CHANGES, keys, args).addCallback(self._polled, batch)
            )
        self._polling = True

        def done(results: list[tuple[bool, Any]]) -> None:
            self._polling = False
            failures = [result for ok, result in results if not ok]
            if failures:
                self._failed("Reading presence changes from Redis", failures[0])
            else:
                self._succeeded()
            if any(ok and result for ok, result in results):
                # A channel had more changes than a page: read on now.
                self._schedule_poll(at_once=True)

        DeferredList(polls, consumeErrors=True).addCallback(done).addErrback(_log_error)

    def _polled(self, reply: Reply, batch: list[tuple[_Followed, str, int]]) -> bool:
        """
        Tell the followers of each channel the changes they lack.

        :returns: Whether a channel has more changes than were given.
        """
        more = False
        for (followed, epoch, _), answer in zip(batch, as_list(reply), strict=True):
            if self._followed.get(followed.channel) is not followed or not self.running:
                continue
            if followed.epoch != epoch:
                # A read changed the epoch known meanwhile: the next poll.
                continue
            now, changes, first, start, entries = as_list(answer)
            now_epoch = text(now) if now is not None else ""
            last, oldest, begin = int(text(changes)), int(text(first)), int(text(start))
            given = as_list(entries)
            if epoch and now_epoch != epoch:
                # Redis lost the presence they know: start again.
                for follower in followed.followers.values():
                    follower.after = None
                self._want_read(followed)
                continue
            if not now_epoch:
                continue
            followed.epoch = now_epoch
            end = begin + len(given) - 1
            more = more or end < last
            told = [_change(followed.channel, entry) for entry in given]
            for token, follower in list(followed.followers.items()):
                after = follower.after
                if after is None:
                    continue
                if last < after or (last > after and oldest > after + 1):
                    # Changes it lacks are no longer logged.
                    follower.after = None
                    self._want_read(followed)
                    continue
                for number, change in enumerate(told, begin):
                    if number <= after:
                        continue
                    if followed.followers.get(token) is not follower:
                        break
                    follower.after = number
                    _tell(follower, change)
        return more

    def _slot(self, channel: str) -> int:
        return key_slot(self.keys(channel)[0])

    # Running scripts

    def _run(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> Deferred[Reply]:
        return run_script(self._commands, script, keys, args)

    def _failed(self, what: str, failure: Failure) -> None:
        if not self._failing:
            self._failing = True
            _log.warn(
                "{what} failed: {error}; trying again",
                what=what,
                error=failure.getErrorMessage(),
            )

    def _succeeded(self) -> None:
        if self._failing:
            self._failing = False
            _log.info("Presence in Redis works again")


def _tell(follower: _Follower, told: PresenceInfo | PresenceChange) -> None:
    try:
        follower.told(told)
    except Exception:
        _log.failure("A presence follower failed")


def _goodbye_failed(failure: Failure) -> None:
    _log.warn(
        "Removing this process's presence from Redis failed: {error}; it "
        "goes when its lease ends",
        error=failure.getErrorMessage(),
    )


def _log_error(failure: Failure) -> None:
    _log.failure("Presence failed", failure)
