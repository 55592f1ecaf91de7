"""
The reader of a Redis broker: :class:`Reader`, the one loop per process
that ``XREAD``\\ s the streams of every channel with local subscribers (on
a :class:`~twisted_sse._redis._link.RedisLink` of its own) and hands each
entry, encoded once, to them; it catches up after a reconnection or a
full batch, follows epoch changes and checks the followed channels now
and then.  While the process has watches, it also reads the publish log
for them (:mod:`twisted_sse._redis._watch`).

On Redis Cluster it cannot block on streams of several slots: it waits
instead for its :class:`~twisted_sse._redis._pubsub.ShardWatch` to say
which streams have new entries, and reads those (one ``XREAD`` per slot,
all sent at once).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._broker import BrokerUnavailable, Published, loss_event
from ._channels import BATCH, Channel, Local, read_snapshot
from ._cluster import group_by_slot
from ._entries import (
    EPOCH_FIELD,
    ZERO,
    Entry,
    EventId,
    Snapshot,
    as_list,
    before,
    field_value,
    format_id,
    newer,
    published_from_fields,
    restart_point,
)
from ._entries import entries as reply_entries
from ._entries import text as reply_text
from ._link import MakeLink, RedisLink
from ._protocol import Arg, RedisCommandError, Reply
from ._pubsub import ShardWatch
from ._scripts import REFRESH, ROTATE, run_script
from ._watch import Watches

__all__ = ["Reader"]

_log = Logger()

#: Channels per refresh script.
_REFRESH_BATCH = 500
#: Seconds the reader waits after Redis refused its read.
_PAUSE = 5.0
#: Seconds a cluster's reader waits after one node failed a read.
_NODE_PAUSE = 0.5


class Reader:
    """
    The reader loop of a process, over the channels in :attr:`channels`.

    :param clock: Its time.
    :param commands: The broker's command connection (for ``CLIENT
        UNBLOCK`` and the periodic checks).
    :param make_link: Makes the reader's own connection.
    :param block_ms: Milliseconds an idle ``XREAD`` blocks.
    :param maxlen: The streams' ``MAXLEN ~``: a batch this long may hide
        trimmed entries.
    :param ttl_ms: The channels' TTL in milliseconds (0: none).
    :param check_interval: Seconds between two checks of the followed
        channels.
    :param on_checked: Called with a channel once the reader has checked
        it (the replays parked on it go on).
    :param watches: The process's watches: while there is one, the reader
        also reads the publish log for them.
    :param watch_shards: On Redis Cluster, makes the
        :class:`~twisted_sse._redis._pubsub.ShardWatch` over the reader's
        link that calls the function it is given with the key of a stream
        to read.
    """

    def __init__(
        self,
        clock: IReactorTime,
        commands: RedisLink,
        make_link: MakeLink,
        *,
        block_ms: int,
        maxlen: int,
        ttl_ms: int,
        check_interval: float,
        on_checked: Callable[[Channel], object],
        watches: Watches | None = None,
        watch_shards: Callable[[Any, Callable[[str], object]], ShardWatch]
        | None = None,
    ) -> None:
        self._clock = clock
        self._commands = commands
        self.link = make_link("twisted_sse:reader", self._connected, self._lost)
        self.block_ms = block_ms
        self.maxlen = maxlen
        self.ttl_ms = ttl_ms
        self.check_interval = check_interval
        self._on_checked = on_checked
        #: The channels with local subscribers, by name.
        self.channels: dict[str, Channel] = {}
        self._by_key: dict[bytes, Channel] = {}
        self._pause: Deferred[None] | None = None
        #: Bumped on every reader connection: a loop of an older one ends.
        self._generation = 0
        self._reader_id: int | None = None
        self._reading: Deferred[None] | None = None
        self._idle: Deferred[None] | None = None
        self._blocked = False
        self._warned: deque[str] = deque(maxlen=1024)
        self._check_call: IDelayedCall | None = None
        self.watches = watches
        if watches is not None:
            watches.wake = self._wake
        #: On Redis Cluster, what tells which streams to read.
        self.shards: ShardWatch | None = None
        if watch_shards is not None:
            self.shards = watch_shards(self.link, self._notified)

    # Life cycle

    @property
    def ready(self) -> bool:
        """Whether the reader's connection (and its shard watch) is ready."""
        shards = self.shards
        return self.link.ready and (shards is None or shards.ready)

    def start(self) -> None:
        """Connect (in the background) and start the periodic checks."""
        self.link.start()
        if self.shards is not None:
            self.shards.start()
        if self._check_call is None:
            self._check_call = self._clock.callLater(
                self.check_interval, self._check_channels
            )

    def stop_checks(self) -> None:
        """Stop the periodic checks (at once: :meth:`stop` may come later)."""
        call, self._check_call = self._check_call, None
        if call is not None and call.active():
            call.cancel()

    def stop(self) -> Deferred[None]:
        """Stop the checks, close the connection; fires when the loop ended."""
        self.stop_checks()

        async def stop() -> None:
            if self.shards is not None:
                for stopping in self.shards.stop():
                    await stopping
            await self.link.stop()
            self._wake_idle()
            if self._pause is not None:
                self._pause.cancel()
            reading, self._reading = self._reading, None
            if reading is not None:
                await reading

        return Deferred.fromCoroutine(stop())

    # The channels followed

    def add(self, state: Channel) -> Channel:
        """Keep ``state`` in :attr:`channels` (it is followed once known)."""
        self.channels[state.name] = state
        self._by_key[state.key.encode("utf-8")] = state
        return state

    def forget_if_idle(self, state: Channel) -> None:
        """A subscription of ``state`` ended: stop following it if idle."""
        if (
            not state.subscribers
            and not state.joining
            and self.channels.get(state.name) is state
        ):
            del self.channels[state.name]
            self._by_key.pop(state.key.encode("utf-8"), None)
            if self.shards is not None:
                self.shards.remove(state.key)

    def follow(self, state: Channel, snapshot: Snapshot) -> None:
        """Follow ``state`` from ``snapshot`` on, if new; check it if it moved."""
        if self.channels.get(state.name) is not state:
            return
        if state.position is None:
            state.position = snapshot.last_generated if snapshot.exists else ZERO
            state.epoch = snapshot.epoch
            if self.shards is not None:
                # Read once after the snapshot: entries added before the
                # subscription was confirmed are not announced.
                state.fresh = True
                self.shards.add(state.key)
            self._wake()
        elif snapshot.epoch != state.epoch and not state.check:
            # The reader is behind this read, or this read behind the
            # reader: the reader's own check tells which.
            state.check = True
            self._wake()

    def recheck(self, state: Channel) -> None:
        """Check ``state``'s stream at the next read, if followed."""
        if state.position is not None and not state.check:
            state.check = True
            self._wake()

    def decode(
        self, channel: str, event_id: str, fields: Sequence[Reply]
    ) -> Published | None:
        """A stream entry as an event, or ``None`` (logged once) if it is none."""
        try:
            return published_from_fields(
                channel, event_id, [field_value(value) for value in fields]
            )
        except ValueError as error:
            # A foreign publisher wrote something that cannot be sent: skip
            # it (once per entry in the log), never break the stream.
            if event_id not in self._warned:
                self._warned.append(event_id)
                _log.warn(
                    "Skipping stream entry {id} of channel {channel}: {error}",
                    id=event_id,
                    channel=channel,
                    error=str(error),
                )
            return None

    def _notified(self, key: str) -> None:
        """The shard watch says stream ``key`` may have new entries."""
        state = self._by_key.get(key.encode("utf-8"))
        if state is not None and state.position is not None and not state.fresh:
            state.fresh = True
            self._wake()

    # Fan-out

    def _call(self, local: Local, published: Published) -> None:
        try:
            local.deliver(published)
        except Exception:
            _log.failure("A subscriber failed to take an event")

    def _offer(self, local: Local, event_id: EventId, published: Published) -> None:
        if local.floor is not None:
            if event_id <= local.floor:
                return
            local.floor = None
        self._call(local, published)

    def _fan_out(self, state: Channel, entries: Iterable[Entry]) -> None:
        for text, event_id, fields in entries:
            position = state.position
            if position is None or event_id <= position:
                continue
            if fields and fields[0] == EPOCH_FIELD and len(fields) > 1:
                self._marked(state, event_id, fields[1])
            state.position = event_id
            published = self.decode(state.name, f"{state.epoch}:{text}", fields)
            if published is None:
                continue
            # The same Published, encoded once, goes to every local
            # subscriber, each with its own queue and slow-client policy.
            for local in list(state.subscribers.values()):
                floor = local.floor
                if floor is None:
                    self._call(local, published)
                elif event_id > floor:
                    local.floor = None
                    self._call(local, published)

    def _marked(self, state: Channel, event_id: EventId, value: Reply) -> None:
        """An entry that made a new epoch: if not the one followed, switch."""
        epoch = reply_text(value)
        if not newer(epoch, state.epoch):
            # The mark of this epoch, or of an older one, read again.
            return
        _log.warn(
            "Channel {channel} has a new epoch {epoch} (was {old}): Redis lost "
            "its history",
            channel=state.name,
            epoch=epoch,
            old=state.epoch,
        )
        self._switch_epoch(state, epoch, before(event_id))
        self._on_checked(state)

    def _switch_epoch(self, state: Channel, epoch: str, start: EventId) -> None:
        """
        Follow ``state`` in ``epoch`` from ``start`` on; its subscribers
        first get the loss event, whose id resumes from there.
        """
        state.epoch = epoch
        state.position = start
        loss = loss_event(state.name, state.text(start), "unknown")
        for local in list(state.subscribers.values()):
            # What their replays covered was in the old epoch.
            local.floor = None
            self._call(local, loss)

    # Checking the followed channels

    def _check_channels(self) -> None:
        """
        Refresh the TTL of the channels this process follows, and check
        their epochs (a flush with no publish since is seen here).
        """
        self._check_call = self._clock.callLater(
            self.check_interval, self._check_channels
        )
        if not self._commands.ready:
            return
        followed = [s for s in self.channels.values() if s.position is not None]
        # On a cluster, a script's keys must share a slot.
        groups = [followed] if self.shards is None else group_by_slot(followed, _key)
        for group in groups:
            for start in range(0, len(group), _REFRESH_BATCH):
                batch = group[start : start + _REFRESH_BATCH]
                keys = [key for state in batch for key in (state.key, state.epoch_key)]
                run_script(self._commands, REFRESH, keys, (self.ttl_ms,)).addCallback(
                    self._checked, batch
                ).addErrback(_check_failed)

    def _checked(self, reply: Reply, batch: list[Channel]) -> None:
        changed = False
        for state, epoch in zip(batch, as_list(reply), strict=True):
            if (
                self.channels.get(state.name) is state
                and state.position is not None
                and (epoch is None or reply_text(epoch) != state.epoch)
            ):
                state.check = changed = True
        if changed:
            self._wake()

    # The loop

    def _wake(self) -> None:
        if self._wake_idle():
            return
        if self._blocked and self._reader_id is not None and self._commands.ready:
            # The blocking XREAD does not name the new stream: end it now
            # rather than after block_ms.
            self._commands.execute("CLIENT", "UNBLOCK", self._reader_id).addErrback(
                _unblock_failed
            )

    def _wake_idle(self) -> bool:
        idle, self._idle = self._idle, None
        if idle is None:
            return False
        idle.callback(None)
        return True

    def _connected(self) -> None:
        self._generation += 1
        self._reader_id = None
        for state in self.channels.values():
            state.check = True
        if self.watches is not None and self.watches.position is not None:
            self.watches.check = True
        previous = self._reading
        generation = self._generation

        async def read() -> None:
            if previous is not None:
                await previous
            await self._read(generation)

        self._reading = Deferred.fromCoroutine(read())

    def _lost(self) -> None:
        self._reader_id = None
        self._wake_idle()

    async def _read(self, generation: int) -> None:
        try:
            if self.shards is None:
                # For CLIENT UNBLOCK: a cluster's reader never blocks.
                reply = await self.link.execute("CLIENT", "ID")
                self._reader_id = int(reply_text(reply))
            while self._generation == generation and self.link.ready:
                try:
                    await self._read_once()
                except RedisCommandError as error:
                    _log.error("The Redis reader failed: {error}", error=str(error))
                    if "WRONGTYPE" in str(error) and await self._drop_non_streams():
                        continue
                    # Keep the connection, try again now and then.
                    self._pause = deferLater(self._clock, _PAUSE, lambda: None)
                    try:
                        await self._pause
                    except CancelledError:
                        return
                    finally:
                        self._pause = None
                except BrokerUnavailable:
                    if self.shards is None:
                        raise
                    # On a cluster, a node's connection failed while the
                    # link as a whole stays ready (its other nodes are up,
                    # or a redirection found none): read every stream again
                    # once that node is back, rather than end the loop.
                    for state in self.channels.values():
                        if state.position is not None:
                            state.check = True
                    self._pause = deferLater(self._clock, _NODE_PAUSE, lambda: None)
                    try:
                        await self._pause
                    except CancelledError:
                        return
                    finally:
                        self._pause = None
        except BrokerUnavailable:
            # The connection is gone; the link reconnects and starts again.
            pass
        except Exception:
            _log.failure("The Redis reader failed; reconnecting")
            self.link.drop()

    async def _drop_non_streams(self) -> bool:
        """
        Stop reading the channels whose key is no longer a stream (another
        program replaced it): one such key fails every XREAD, and so every
        channel of this process.  Their subscribers stay, without events.

        :returns: Whether any was dropped.
        """
        followed = [s for s in self.channels.values() if s.position is not None]
        types = [self.link.execute("TYPE", state.key) for state in followed]
        dropped = False
        for state, checking in zip(followed, types, strict=True):
            kind = reply_text(await checking)
            if kind not in ("stream", "none"):
                _log.error(
                    "Channel {channel} is no longer read: its key {key} holds a "
                    "{kind}, not a stream",
                    channel=state.name,
                    key=state.key,
                    kind=kind,
                )
                state.position = None
                dropped = True
        watches = self.watches
        if watches is not None and watches.position is not None:
            kind = reply_text(await self.link.execute("TYPE", watches.key))
            if kind not in ("stream", "none"):
                _log.error(
                    "The publish log {key} is no longer read (patterns find no "
                    "channel): it holds a {kind}, not a stream",
                    key=watches.key,
                    kind=kind,
                )
                watches.drop()
                dropped = True
        return dropped

    async def _read_once(self) -> None:
        followed = [s for s in self.channels.values() if s.position is not None]
        due = [state for state in followed if state.check]
        if due:
            await self._catch_up(due)
            return
        watches = self.watches
        log = watches.position if watches is not None else None
        if watches is not None and log is not None and watches.check:
            await watches.check_log(self.link)
            return
        if self.shards is not None:
            await self._read_fresh(followed)
            return
        if not followed and log is None:
            self._idle = Deferred()
            await self._idle
            return
        keys: list[Arg] = [state.key for state in followed]
        ids: list[Arg] = [format_id(state.position or ZERO) for state in followed]
        if watches is not None and log is not None:
            keys.append(watches.key)
            ids.append(format_id(log))
        self._blocked = True
        try:
            reply = await self.link.execute(
                "XREAD",
                "COUNT",
                BATCH,
                "BLOCK",
                self.block_ms,
                "STREAMS",
                *keys,
                *ids,
                timeout=self.block_ms / 1000 + self.link.timeout,
            )
        finally:
            self._blocked = False
        if reply is None:
            return
        items = as_list(reply)
        if watches is not None and log is not None and self._read_log(watches, items):
            # The log is behind by a full batch: the channels' entries of
            # this read may be past it; they are read again after it.
            return
        self._take(items)

    async def _read_fresh(self, followed: list[Channel]) -> None:
        """
        On a cluster: read the streams the shard watch marked (one
        ``XREAD`` per slot, sent at once), or wait for one to be marked.
        """
        fresh = [state for state in followed if state.fresh]
        if not fresh:
            self._idle = Deferred()
            await self._idle
            return
        reads = []
        for group in group_by_slot(fresh, _key):
            for state in group:
                state.fresh = False
            keys: list[Arg] = [state.key for state in group]
            ids: list[Arg] = [format_id(state.position or ZERO) for state in group]
            reads.append(
                (
                    group,
                    self.link.execute("XREAD", "COUNT", BATCH, "STREAMS", *keys, *ids),
                )
            )
        try:
            for group, reading in reads:
                try:
                    reply = await reading
                except BaseException:
                    for state in group:
                        state.fresh = True
                    raise
                if reply is not None:
                    self._take(as_list(reply))
        finally:
            for _, reading in reads:
                reading.addErrback(lambda _: None)

    def _take(self, items: list[Reply]) -> None:
        """Hand the entries of an ``XREAD`` reply to the subscribers."""
        full = min(BATCH, self.maxlen)
        for item in items:
            key, entries = as_list(item)
            state = self._by_key.get(key if isinstance(key, bytes) else b"")
            if state is None:
                continue
            batch = reply_entries(entries)
            if len(batch) >= full:
                # Behind by a full batch: Redis may have trimmed entries not
                # read yet, which XREAD would skip without a word.  Read this
                # stream again with a check (a batch shorter than MAXLEN ~
                # cannot have a hole: trimming keeps at least that many).
                state.check = True
                continue
            self._fan_out(state, batch)

    def _read_log(self, watches: Watches, items: list[Reply]) -> bool:
        """
        Hand the log's entries of a read to the watches, first: a channel
        under a watched prefix is found before its entry reaches anyone.

        :returns: Whether the log's batch was full.
        """
        key = watches.key.encode("utf-8")
        for item in items:
            name, entries = as_list(item)
            if name == key:
                batch = reply_entries(entries)
                watches.take(batch)
                return len(batch) >= BATCH
        return False

    async def _catch_up(self, states: list[Channel]) -> None:
        # One script per stream, all sent at once (pipelined).
        reads = [
            (
                state,
                position,
                read_snapshot(self.link, state, position, BATCH, self.ttl_ms),
            )
            for state in states
            if (position := state.position) is not None
        ]
        rotate: list[Channel] = []
        try:
            for state, position, reading in reads:
                if self._caught_up(state, position, await reading):
                    rotate.append(state)
        finally:
            for _, _, reading in reads:
                reading.addErrback(lambda _: None)
        for state in rotate:
            await run_script(
                self.link,
                ROTATE,
                (state.key, state.epoch_key),
                (state.epoch, self.ttl_ms),
            )
            # The next check sees the new epoch, and goes on from there.
            state.check = True

    def _caught_up(self, state: Channel, position: EventId, snapshot: Snapshot) -> bool:
        """
        Go on with ``state`` from a check of its stream.

        :returns: Whether Redis holds less of the stream than this process
            read, under the same epoch: it lost writes (a failover to a
            replica that missed them), and the epoch must change so that
            the ids given out before are refused.
        """
        if state.position != position:
            return False
        state.check = snapshot.more
        if snapshot.epoch != state.epoch:
            start = restart_point(snapshot, position, state.epoch)
            _log.warn(
                "Channel {channel} has a new epoch {epoch} (was {old}): Redis "
                "lost its history; going on from {start}",
                channel=state.name,
                epoch=snapshot.epoch,
                old=state.epoch,
                start=format_id(start),
            )
            self._switch_epoch(state, snapshot.epoch, start)
            if start == position:
                self._fan_out(state, snapshot.entries)
            else:
                state.check = True  # read again from the new start
            self._on_checked(state)
            return False
        if (snapshot.last_generated if snapshot.exists else ZERO) < position:
            _log.warn(
                "Stream {key} ends before {position}, which this process read: "
                "Redis lost data; a new epoch follows",
                key=state.key,
                position=format_id(position),
            )
            return True
        if snapshot.lost_after(position):
            lost_up_to = snapshot.lost_up_to()
            _log.warn(
                "Events of channel {channel} after {position} were trimmed "
                "before this process read them",
                channel=state.name,
                position=format_id(position),
            )
            loss = loss_event(state.name, state.text(lost_up_to), "trimmed")
            for local in list(state.subscribers.values()):
                self._offer(local, lost_up_to, loss)
            # Resuming from the loss event's id is exact: it is just
            # before the first entry left.
            state.position = max(position, lost_up_to)
        self._fan_out(state, snapshot.entries)
        self._on_checked(state)
        return False


def _key(state: Channel) -> str:
    return state.key


def _unblock_failed(failure: Failure) -> None:
    # Refused (ACL) or the command connection is down: the reader's XREAD
    # ends by itself after block_ms.
    _log.debug("CLIENT UNBLOCK failed: {error}", error=failure.getErrorMessage())


def _check_failed(failure: Failure) -> None:
    # Redis is down: the reader checks every channel when it reconnects.
    _log.debug(
        "Checking the followed channels failed: {error}",
        error=failure.getErrorMessage(),
    )
