"""
Watching the channels under a prefix on Redis, what the hub's patterns
(``news.*``) are made of: the publish log that a process's reader reads
while the process has watches, the watches it tells, the scan of the log
that a watch resuming from a marker begins with, and the index of the
names patterns found, for the channels a resuming cursor holds (the
design is in :mod:`twisted_sse._redis`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._broker import Found, Watch, parse_event_id, valid_channel
from ._entries import (
    LAST_ID,
    ZERO,
    Entry,
    EventId,
    as_list,
    before,
    entry_id,
    format_id,
    text,
    text_id,
)
from ._link import RedisLink
from ._protocol import Reply
from ._scripts import HEADS, LOG, NAMES, run_script

__all__ = [
    "LOG_LENGTH",
    "NAMES_KEPT",
    "SCAN_PAGE",
    "LogState",
    "Watches",
    "judge",
    "log_state",
]

_log = Logger()

#: Entries the publish log keeps (``XADD MAXLEN ~``), over all channels: a
#: pattern resumes exactly from a marker at most this many publishes old
#: (about 54 bytes each in Redis, a few megabytes in all).
LOG_LENGTH = 100_000
#: Log entries a resuming watch's scan reads per script.
SCAN_PAGE = 1000
#: Names of the index a resuming watch reads per script.
NAMES_PAGE = 1000
#: Names the index keeps at most before the names of forgotten channels
#: leave it (as the resuming watches read them).
NAMES_KEPT = 100_000
#: Names a process remembers having added to the index (then it forgets
#: them all, and adds them again as they come).
_INDEXED = 100_000

#: A channel found in the log: its name, the epoch and entry id of its
#: first entry after the scan's start, and its epoch now (``None``: none).
Finding = tuple[str, str, EventId, str | None]


@frozen
class LogState:
    """
    The publish log as the log script saw it, and the page it read.

    :ivar last: The log's last-generated id (``0-0`` if there is no log).
    :ivar first: Its first entry's id, ``None`` if it has none.
    :ivar trimmed: Whether it ever lost entries (``MAXLEN`` trimming).
    :ivar present: Whether the id asked about is one of its entries.
    :ivar page_end: The page's last entry id, ``None`` if it read none.
    :ivar more: Whether the page was full.
    :ivar found: Each channel under the prefix with entries in the page,
        at its first.
    """

    last: EventId
    first: EventId | None
    trimmed: bool
    present: bool
    page_end: EventId | None = None
    more: bool = False
    found: list[Finding] = field(factory=list)


def log_state(reply: Reply) -> LogState:
    """The :class:`LogState` in a reply of the log script."""
    last, first, trimmed, present, page_end, more, found = as_list(reply)
    findings: list[Finding] = []
    for item in as_list(found):
        parts = as_list(item)
        channel, epoch, entry = parts[:3]
        now = parts[3] if len(parts) > 3 else None
        findings.append(
            (
                text(channel),
                text(epoch),
                entry_id(entry),
                text(now) if now is not None else None,
            )
        )
    return LogState(
        last=entry_id(last),
        first=entry_id(first) if first is not None else None,
        trimmed=trimmed == 1,
        present=present == 1,
        page_end=entry_id(page_end) if page_end is not None else None,
        more=more == 1,
        found=findings,
    )


def judge(since: EventId, state: LogState) -> str | None:
    """
    Whether the log can tell what happened after ``since`` (a marker: an
    entry id of the log, or ``0-0`` for a log that was empty), or why not:
    ``"unknown"`` beyond its end or for an id it never had (another Redis,
    or it was lost), ``"trimmed"`` when entries after it are gone.
    """
    if since > state.last:
        return "unknown"
    if state.present or (since == ZERO and not state.trimmed):
        return None
    if state.first is None or since < state.first:
        return "trimmed" if state.trimmed else "unknown"
    return "unknown"


@define(eq=False)
class _Watching:
    """A watch of this process: who to tell, and what it was told."""

    key: bytes
    token: int
    found: Found
    watch: Watch = field(init=False)
    told: set[str] = field(factory=set)
    #: While its scan runs: the channels the reader found meanwhile, told
    #: after those the scan finds (whose positions are earlier).
    held: dict[str, str] | None = None


class Watches:
    """
    The watches of a process, and the publish log its reader reads for
    them (from :attr:`position`, while there is one).

    :param commands: The broker's command connection, for the scripts.
    :param prefix: The broker's key prefix: the log is ``<prefix>#log``,
        the index of names ``<prefix>#names``.
    """

    def __init__(self, commands: RedisLink, prefix: str) -> None:
        self._commands = commands
        self._prefix = prefix
        #: The publish log's key.
        self.key = prefix + "#log"
        #: The key of the index of the names patterns found.
        self.names_key = prefix + "#names"
        self._indexed: set[str] = set()
        self._to_index: list[str] = []
        #: The id of the last log entry the reader handled; ``None`` while
        #: there is no watch (the log is not read).
        self.position: EventId | None = None
        #: Whether the reader must check the log before reading on (after
        #: a reconnect).
        self.check = False
        #: Called when the reader must start or stop reading the log.
        self.wake: Callable[[], object] = lambda: None
        self._by_prefix: dict[bytes, dict[int, _Watching]] = {}
        self._tokens = itertools.count()
        #: Watches waiting for the read of where the log ends.
        self._starting: list[tuple[_Watching, Deferred[EventId]]] = []
        self._starting_read = False
        self._marker: tuple[EventId, str] = (ZERO, "0-0")

    @property
    def count(self) -> int:
        """How many watches there are."""
        return sum(len(watches) for watches in self._by_prefix.values())

    def prefixes(self) -> dict[str, int]:
        """How many watches each watched prefix has."""
        return {
            key.decode("utf-8"): len(watches)
            for key, watches in self._by_prefix.items()
        }

    def marker(self) -> str:
        """Every watch's marker: how far the reader has read the log."""
        position = self.position
        cached = self._marker
        if position is not None and cached[0] != position:
            cached = self._marker = (position, format_id(position))
        return cached[1]

    # Watching

    def watch(
        self,
        prefix: str,
        found: Found,
        since: str | None,
        known: Callable[[str], bool] | None = None,
    ) -> Watch | Deferred[Watch]:
        """
        See :meth:`~twisted_sse.IPatternBroker.watch`: at once when the
        reader reads the log already and there is neither ``since`` nor
        ``known``.
        """
        watching = _Watching(prefix.encode("utf-8"), next(self._tokens), found)
        watching.watch = Watch(
            prefix, marker=self.marker, cancel=lambda: self._cancel(watching)
        )
        if since is not None or known is not None:
            watching.held = {}
        if self.position is not None and watching.held is None:
            self._add(watching)
            return watching.watch
        return Deferred.fromCoroutine(self._open(watching, since, known))

    async def _open(
        self,
        watching: _Watching,
        since: str | None,
        known: Callable[[str], bool] | None,
    ) -> Watch:
        try:
            if self.position is None:
                # Where the log ends is read once for every watch waiting.
                def cancel(_: Deferred[EventId]) -> None:
                    if (watching, waiting) in self._starting:
                        self._starting.remove((watching, waiting))

                waiting: Deferred[EventId] = Deferred(cancel)
                self._starting.append((watching, waiting))
                self._start()
                start = await waiting
            else:
                start = self.position
                self._add(watching)
            if since is not None:
                watching.watch.history_lost = await self._scan(watching, since, start)
            if known is not None:
                await self._tell_known(watching, known)
            self._release(watching)
        except BaseException:
            watching.watch.cancel()
            raise
        return watching.watch

    def _start(self) -> None:
        if self._starting_read:
            return
        self._starting_read = True
        run_script(
            self._commands,
            LOG,
            (self.key, self.names_key),
            (self._prefix, "", "", "", 0),
        ).addCallbacks(self._started, self._start_failed)

    def _started(self, reply: Reply) -> None:
        self._starting_read = False
        starting, self._starting = self._starting, []
        if not starting:
            return
        if self.position is None:
            self.position = log_state(reply).last
            self.check = False
            self.wake()
        # Registered now, at the reader's position: nothing after it is
        # missed, nothing before it is told live.
        for watching, _ in starting:
            self._add(watching)
        for _, waiting in starting:
            if not waiting.called:
                waiting.callback(self.position)

    def _start_failed(self, failure: Failure) -> None:
        self._starting_read = False
        starting, self._starting = self._starting, []
        for _, waiting in starting:
            waiting.errback(failure)

    def _add(self, watching: _Watching) -> None:
        self._by_prefix.setdefault(watching.key, {})[watching.token] = watching

    def _cancel(self, watching: _Watching) -> None:
        # Told nothing more: its marker stays where it stopped.
        watching.watch.moved(self.marker())
        watches = self._by_prefix.get(watching.key)
        if watches is None or watches.pop(watching.token, None) is None:
            return
        if not watches:
            del self._by_prefix[watching.key]
        if not self._by_prefix and self.position is not None:
            # No watch left: the reader stops reading the log.
            self.position = None
            self.check = False
            self.wake()

    # Resuming from a marker

    async def _scan(self, watching: _Watching, since: str, upto: EventId) -> str | None:
        """
        Tell ``watching`` of the channels under its prefix with log entries
        in (``since``, ``upto``]; why ``since`` cannot be honoured, if so.
        """
        parsed = parse_event_id(since)
        if parsed is None or max(parsed) >= 2**64:
            return "malformed"
        if parsed == LAST_ID:
            return "unknown"
        state = await self._page(watching, parsed, upto)
        lost = judge(parsed, state)
        if lost == "unknown":
            return lost
        while True:
            self._tell_found(watching, state.found)
            end = state.page_end
            if not state.more or end is None or end >= upto:
                return lost
            state = await self._page(watching, end, upto)

    def _page(
        self, watching: _Watching, after: EventId, upto: EventId
    ) -> Deferred[LogState]:
        reading = run_script(
            self._commands,
            LOG,
            (self.key, self.names_key),
            (
                self._prefix,
                watching.key,
                format_id(after),
                format_id(upto),
                SCAN_PAGE,
            ),
        )
        return reading.addCallback(log_state)

    def _tell_found(self, watching: _Watching, found: Iterable[Finding]) -> None:
        for channel, epoch, entry, now in found:
            if channel in watching.told:
                continue
            if now == epoch:
                self._tell(watching, channel, text_id(epoch, before(entry)), None)
            else:
                # Redis lost the channel since (or forgot it): from now on.
                self._tell(watching, channel, "", "unknown")

    async def _tell_known(
        self, watching: _Watching, known: Callable[[str], bool]
    ) -> None:
        """
        Tell ``watching`` of the channels under its prefix in the index of
        names that ``known`` accepts (those a resuming cursor holds), at
        their heads (``""`` for one forgotten).
        """
        prefix = watching.key.decode("utf-8")
        after = ""
        accepted: list[str] = []
        while True:
            reply = await run_script(
                self._commands,
                NAMES,
                (self.names_key,),
                (self._prefix, prefix, after, NAMES_PAGE, NAMES_KEPT),
            )
            page = [text(name) for name in as_list(reply)]
            accepted += [
                name
                for name in page
                if name not in watching.told and valid_channel(name) and known(name)
            ]
            if len(page) < NAMES_PAGE:
                break
            after = page[-1]
        if not accepted:
            return
        keys = [
            key
            for name in accepted
            for key in (self._prefix + name, self._prefix + name + "#epoch")
        ]
        heads = as_list(await run_script(self._commands, HEADS, keys, ()))
        for name, head in zip(accepted, heads, strict=True):
            epoch, last = as_list(head)
            position = "" if epoch is None else text_id(text(epoch), entry_id(last))
            if name not in watching.told:
                self._tell(watching, name, position, None)

    def _release(self, watching: _Watching) -> None:
        """The scan is done: tell what the reader found meanwhile."""
        held, watching.held = watching.held, None
        for channel, position in (held or {}).items():
            if channel not in watching.told:
                self._tell(watching, channel, position, None)

    def _tell(
        self, watching: _Watching, channel: str, position: str, lost: str | None
    ) -> None:
        watching.told.add(channel)
        try:
            watching.found(channel, position, lost)
        except Exception:
            _log.failure("A watch failed to take a channel")

    # Live: what the reader reads

    def take(self, entries: Iterable[Entry]) -> None:
        """
        The reader read ``entries`` of the log: tell the watches of each
        channel under their prefix, then move past the entry.
        """
        for _, entry, fields in entries:
            position = self.position
            if position is None or entry <= position:
                continue
            if self._by_prefix:
                self._found_live(fields)
            self.position = entry
        if self._to_index:
            self._index()

    def _index(self) -> None:
        """Add the names found live to the index (once per process)."""
        names, self._to_index = self._to_index, []
        if len(self._indexed) > _INDEXED:
            self._indexed.clear()
        self._indexed.update(names)
        members = [part for name in names for part in (0, name)]
        self._commands.execute("ZADD", self.names_key, *members).addErrback(
            _index_failed
        )

    def _found_live(self, fields: Sequence[Reply]) -> None:
        channel = _field(fields, b"c")
        if channel is None:
            return
        at = channel.find(b".")
        position: str | None = None
        while at != -1:
            watches = self._by_prefix.get(channel[: at + 1])
            at = channel.find(b".", at + 1)
            if not watches:
                continue
            name = channel.decode("utf-8", "replace")
            for watching in list(watches.values()):
                if name in watching.told:
                    continue
                if position is None:
                    position = _position(fields)
                    if position is None:
                        return
                    if name not in self._indexed:
                        self._to_index.append(name)
                if watching.held is not None:
                    watching.held.setdefault(name, position)
                else:
                    self._tell(watching, name, position, None)

    async def check_log(self, link: RedisLink) -> None:
        """
        After a reconnect: whether the log still holds the reader's
        position, or Redis lost it (a restart, a failover: the reader goes
        on from the log's end) or trimmed entries not read yet; either is
        logged, as watches may have missed channels.
        """
        position = self.position
        self.check = False
        if position is None:
            return
        reply = await run_script(
            link,
            LOG,
            (self.key, self.names_key),
            (self._prefix, "", format_id(position), "", 0),
        )
        state = log_state(reply)
        if self.position != position or judge(position, state) is None:
            return
        if state.last < position:
            self.position = state.last
            _log.warn(
                "The publish log {key} ends before {position}, which this process "
                "read: Redis lost it; patterns may miss channels published since",
                key=self.key,
                position=format_id(position),
            )
        else:
            _log.warn(
                "Entries of the publish log {key} after {position} are gone "
                "before this process read them: patterns may miss channels "
                "published then",
                key=self.key,
                position=format_id(position),
            )

    def drop(self) -> None:
        """The log's key holds no stream: stop reading it."""
        self.position = None
        self.check = False


def _index_failed(failure: Failure) -> None:
    # Redis is down: the reader reads nothing either until it is back.
    _log.debug(
        "Indexing channel names failed: {error}", error=failure.getErrorMessage()
    )


def _field(fields: Sequence[Reply], name: bytes) -> bytes | None:
    """The value of field ``name`` in a log entry's fields."""
    if len(fields) > 1 and fields[0] == name:
        value = fields[1]
        return value if isinstance(value, bytes) else None
    for index in range(0, len(fields) - 1, 2):
        if fields[index] == name:
            value = fields[index + 1]
            return value if isinstance(value, bytes) else None
    return None


def _position(fields: Sequence[Reply]) -> str | None:
    """The position just before a log entry's channel entry, or ``None``."""
    epoch, entry = _field(fields, b"e"), _field(fields, b"i")
    parsed = parse_event_id(entry.decode("ascii", "replace")) if entry else None
    if epoch is None or parsed is None:
        return None
    return text_id(epoch.decode("ascii", "replace"), before(parsed))
