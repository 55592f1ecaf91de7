"""
The Redis broker: :class:`~twisted_sse.IBroker` over Redis Streams, so that
any number of server processes share channels, ids and history.

One stream per channel (``sse:<channel>``) holds the events as fields
(``data``, ``event``, ``retry``, ``comment``, ``key``); the stream entry id is
the event id.  Publishing is one ``XADD ... MAXLEN ~ <history>``.  Each
process keeps two connections: one for commands (publish, replay) and one
for a single reader loop that ``XREAD BLOCK``\\ s on the streams of every
channel with local subscribers, from the last id it has handled in each,
and hands each entry, encoded once, to every local subscriber.  Because the
reader always resumes from the last id it has seen, an outage of Redis or of
the network loses nothing that Redis still holds, and what Redis trimmed in
the meantime is announced as a ``history-lost`` event.

txredisapi supplies the protocol: the queue that matches replies to
commands, and the connection's life.  Its reply parser and command encoder
are replaced by faster ones (:class:`_RespParser`; measured in
docs/deployment.md), and the connection handling (reconnecting with
backoff, reply timeouts, TCP_NODELAY, typed replies) is in
:class:`RedisLink`, so that the untyped library stays behind one small
typed face.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Union
from urllib.parse import parse_qsl, unquote, urlsplit

from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._broker import (
    DEFAULT_HISTORY,
    BrokerUnavailable,
    Deliver,
    IBroker,
    Published,
    Subscription,
    _TokenSubscription,
    parse_event_id,
    valid_channel,
)
from ._event import Event

__all__ = [
    "DEFAULT_PREFIX",
    "RedisAddress",
    "RedisBroker",
    "RedisCommandError",
    "RedisLink",
    "event_fields",
    "parse_redis_url",
    "published_from_fields",
]

_log = Logger()

#: Key prefix of the channel streams: channel ``news`` is the stream
#: ``sse:news``.
DEFAULT_PREFIX = "sse:"

#: Stream entries fetched per read (XREAD COUNT, XRANGE COUNT).
_BATCH = 1000
#: Milliseconds a reader's XREAD blocks when nothing arrives.  A new channel
#: wakes the reader at once with CLIENT UNBLOCK; this bound only matters when
#: that is refused (ACLs of some managed services) or races the XREAD, and it
#: is how often an idle reader proves its connection still works.
_BLOCK_MS = 2000
#: Seconds to wait for a reply before the connection is deemed dead.
_COMMAND_TIMEOUT = 5.0
#: Seconds to wait for a TCP (and TLS) connection.
_CONNECT_TIMEOUT = 5.0
#: Reconnection backoff: first delay, cap, growth.
_BACKOFF_INITIAL = 0.1
_BACKOFF_MAX = 5.0
_BACKOFF_FACTOR = 2.0
#: The oldest Redis with the stream fields this broker relies on
#: (``XRANGE (id`` is 6.2; ``XINFO STREAM`` ``entries-added`` is 7.0).
_MIN_REDIS = (7, 0)

_MAX_KEY_LENGTH = 256
_RETRY = re.compile(r"[0-9]{1,15}")
#: The hub's loss signal (``twisted_sse._hub.HISTORY_LOST_EVENT``): the
#: broker sends it itself when Redis trimmed events a live reader had not
#: read yet.
_HISTORY_LOST_EVENT = "history-lost"

#: A Redis reply as txredisapi gives it with ``charset=None`` and
#: ``convertNumbers=False``: bulk strings as bytes, status lines as str,
#: integers, nil, arrays, and errors nested in arrays as exception values.
Reply = Union[bytes, str, int, None, list["Reply"], Exception]  # noqa: UP007
#: A command argument.
Arg = str | bytes | int

_EventId = tuple[int, int]
_ZERO: _EventId = (0, 0)


class RedisCommandError(BrokerUnavailable):
    """Redis refused a command (out of memory, read-only replica, ACL, ...)."""


# The address


@frozen
class RedisAddress:
    """
    Where a Redis server is and how to log in, from a ``redis://`` URL.

    :ivar host: Host name or address.
    :ivar port: TCP port.
    :ivar db: Database number (``SELECT``).
    :ivar username: ACL user name (Redis 6+), or ``None``.
    :ivar password: Password, or ``None``; never shown by ``str`` or
        ``repr``.
    :ivar tls: Whether to speak TLS (``rediss://``).
    :ivar ca_certs: A PEM file of the authorities that sign the server's
        certificate (``rediss://...?ssl_ca_certs=/path``); the system's
        trust roots if ``None``.
    """

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_certs: str | None = None

    def __str__(self) -> str:
        """The URL with the password masked, for logs and messages."""
        scheme = "rediss" if self.tls else "redis"
        login = ""
        if self.username is not None or self.password is not None:
            login = (self.username or "") + (":***" if self.password else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{login}{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """
    Parse ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for
    TLS, with an optional ``?ssl_ca_certs=/path/ca.pem``).

    :raises ValueError: naming what is wrong; the message never contains the
        password.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise ValueError("the URL must start with redis:// or rediss://")
    try:
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise ValueError("the Redis URL has an invalid port") from None
    if not host:
        raise ValueError("the Redis URL names no host, as in redis://host:6379/0")
    if port == 0:
        raise ValueError("the Redis URL has an invalid port")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(
            "the Redis database must be a number, as in redis://host:6379/0"
        )
    ca_certs = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "ssl_ca_certs" and scheme == "rediss" and value:
            ca_certs = value
        else:
            raise ValueError(
                f"unknown Redis URL parameter {name!r} (only ssl_ca_certs, "
                "with rediss://)"
            )
    if parts.fragment:
        raise ValueError("a Redis URL has no #fragment")
    return RedisAddress(
        host=host,
        port=port if port is not None else 6379,
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=scheme == "rediss",
        ca_certs=ca_certs,
    )


def _endpoint(reactor: Any, address: RedisAddress) -> IStreamClientEndpoint:
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, address.host, address.port, timeout=_CONNECT_TIMEOUT
    )
    if not address.tls:
        return endpoint
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    trust_root = None
    if address.ca_certs is not None:
        with open(address.ca_certs, "rb") as pem:
            trust_root = Certificate.loadPEM(pem.read())
    return wrapClientTLS(
        optionsForClientTLS(address.host, trustRoot=trust_root), endpoint
    )


# The connection: a typed face for txredisapi


class _RespParser:
    """
    An incremental RESP2 reply parser, iterative and in one pass per chunk.

    txredisapi's own parser leaves line mode after every bulk string and
    resumes on the next reactor turn (``callLater(0)``), so a reply of n
    strings takes n reactor turns: a 10 000-event replay took 1.8 s, and
    0.14-0.28 s with this parser (bench/redis_broker.py).
    """

    def __init__(self, error: Callable[[str], Exception]) -> None:
        self._buffer = bytearray()
        #: Arrays being filled: their items so far and their length.
        self._stack: list[tuple[list[Reply], int]] = []
        self._error = error

    def feed(self, data: bytes) -> list[Reply]:
        """
        Take bytes off the wire; return the replies they complete.

        :raises ValueError: on bytes that are not RESP2.
        """
        buffer = self._buffer
        buffer += data
        stack = self._stack
        replies: list[Reply] = []
        position = 0
        size = len(buffer)
        while True:
            end = buffer.find(b"\r\n", position)
            if end < 0:
                break
            kind = buffer[position]
            value: Reply
            if kind == 36:  # $: bulk string
                length = int(buffer[position + 1 : end])
                if length < 0:
                    value = None
                    position = end + 2
                elif end + 2 + length + 2 > size:
                    break
                else:
                    value = bytes(buffer[end + 2 : end + 2 + length])
                    position = end + 2 + length + 2
            elif kind == 42:  # *: array
                count = int(buffer[position + 1 : end])
                position = end + 2
                if count > 0:
                    stack.append(([], count))
                    continue
                value = None if count < 0 else []
            elif kind == 58:  # :: integer
                value = int(buffer[position + 1 : end])
                position = end + 2
            elif kind == 43:  # +: status
                value = buffer[position + 1 : end].decode("utf-8", "replace")
                position = end + 2
            elif kind == 45:  # -: error
                value = self._error(
                    buffer[position + 1 : end].decode("utf-8", "replace")
                )
                position = end + 2
            else:
                raise ValueError(f"not a RESP2 reply: {bytes(buffer[position:end])!r}")
            while stack:
                items, count = stack[-1]
                items.append(value)
                if len(items) < count:
                    break
                stack.pop()
                value = items
            else:
                replies.append(value)
        del buffer[:position]
        return replies


_protocol_class: Any = None


def _make_protocol() -> Any:
    """
    A txredisapi protocol (command encoding, the queue of replies, the
    connection's life) with :class:`_RespParser` in place of its parser.
    """
    global _protocol_class
    if _protocol_class is None:
        # Imported when first needed: txredisapi imports the global reactor,
        # and importing twisted_sse must not install one (a program may want
        # to install the asyncio reactor after importing us).
        import txredisapi

        def response_error(text: str) -> Exception:
            # As txredisapi words them: "ERR " is dropped.
            error: Exception = txredisapi.ResponseError(
                text[4:] if text.startswith("ERR ") else text
            )
            return error

        class Protocol(txredisapi.BaseRedisProtocol):
            def connectionMade(self) -> Any:
                self._parser = _RespParser(response_error)
                return super().connectionMade()

            def _build_command(self, *args: Arg, **kwargs: object) -> bytes:
                # txredisapi's encoder spends more time than the rest of a
                # publish together; this one does the same in one join.
                parts = [b"*%d\r\n" % len(args)]
                for arg in args:
                    data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
                    parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
                return b"".join(parts)

            def dataReceived(self, data: bytes, unpause: bool = False) -> None:
                try:
                    replies = self._parser.feed(data)
                except ValueError:
                    _log.failure("Redis sent something that is not RESP2")
                    transport: Any = self.transport
                    transport.abortConnection()
                    return
                for reply in replies:
                    self.replyReceived(reply)  # type: ignore[no-untyped-call]

        _protocol_class = Protocol
    return _protocol_class(charset=None, convertNumbers=False)


class _ProtocolFactory(Factory):
    """
    Makes txredisapi protocols that give raw bytes (``charset=None``: event
    data is not always UTF-8, and a foreign entry must not break decoding)
    and leave numbers alone (``convertNumbers=False``: data ``"42"`` stays
    text).  AUTH and SELECT are sent by :class:`RedisLink`, not by the
    protocol, so that their failure is an ordinary failed attempt.
    """

    # txredisapi's protocol reaches for these only when its own AUTH or
    # SELECT fails, which never happens here; they are kept for safety.
    isLazy = False
    noisy = False

    def buildProtocol(self, addr: object) -> Any:
        protocol = _make_protocol()
        protocol.factory = self
        return protocol

    def stopTrying(self) -> None:
        pass

    def connectionError(self, why: str) -> None:
        _log.error("Redis connection error: {why}", why=why)


def _txredisapi() -> Any:
    import txredisapi

    return txredisapi


def _backoff(attempt: int) -> float:
    # Exponential, capped, with jitter so that many processes that lost the
    # same Redis do not come back in step.
    delay = min(_BACKOFF_INITIAL * _BACKOFF_FACTOR ** min(attempt, 30), _BACKOFF_MAX)
    return delay * random.uniform(0.5, 1.0)


class RedisLink:
    """
    One connection to Redis, kept open: reconnected with backoff when it
    fails, each command with a reply timeout.  The typed face of txredisapi's
    protocol for this package.

    :param reactor: The reactor to connect with (``IReactorTCP``) and to
        time out with (``IReactorTime``).
    :param address: Where Redis is.
    :param name: The connection's ``CLIENT SETNAME``, also used in logs.
    :param on_ready: Called when a new connection is ready (after AUTH,
        SELECT and the version check).
    :param on_lost: Called when a ready connection is lost.
    :param timeout: Seconds a reply may take before the connection is deemed
        dead and dropped.
    """

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        name: str,
        on_ready: Callable[[], object] | None = None,
        on_lost: Callable[[], object] | None = None,
        timeout: float = _COMMAND_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.address = address
        self.name = name
        self.timeout = timeout
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._protocol: Any = None
        self._ready = False
        self._running: Deferred[None] | None = None
        self._waiting: Deferred[Any] | None = None
        self._stopping = False

    @property
    def ready(self) -> bool:
        """Whether commands can be sent now."""
        return self._ready

    def start(self) -> None:
        """Start connecting (and reconnecting)."""
        if self._running is None:
            self._stopping = False
            self._running = Deferred.fromCoroutine(self._run()).addErrback(
                lambda failure: _log.failure(
                    "The Redis connection loop failed", failure
                )
            )

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the connection; fires when closed."""
        self._stopping = True
        running, self._running = self._running, None
        if running is None:
            return Deferred.fromCoroutine(_nothing())
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.loseConnection()
        return running

    def drop(self) -> None:
        """Abort the current connection (it is reconnected)."""
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abortConnection()

    def execute(self, *args: Arg, timeout: float | None = None) -> Deferred[Reply]:
        """
        Send one command.

        :param timeout: Seconds to wait for the reply (the link's default if
            ``None``); past it the connection is dropped.
        :returns: A Deferred firing with the reply, or failing with
            :class:`BrokerUnavailable` when the connection is down or lost,
            or :class:`RedisCommandError` when Redis answers an error.
        """
        if not self._ready:
            return fail(BrokerUnavailable("Redis is not connected"))
        return self._execute(self._protocol, args, timeout)

    def _execute(
        self, protocol: Any, args: Sequence[Arg], timeout: float | None
    ) -> Deferred[Reply]:
        txredisapi = _txredisapi()
        try:
            sent: Deferred[Reply] = protocol.execute_command(*args)
        except txredisapi.ConnectionError:
            return fail(BrokerUnavailable("Redis is not connected"))
        except Exception as error:
            return fail(error)
        result: Deferred[Reply] = Deferred()
        expired: list[bool] = []

        def expire() -> None:
            # Every command behind this one is stuck too: dropping the
            # connection fails them all and reconnects.
            expired.append(True)
            if protocol.transport is not None:
                protocol.transport.abortConnection()

        timer = self.clock.callLater(
            self.timeout if timeout is None else timeout, expire
        )

        def done(reply: Reply | Failure) -> None:
            if timer.active():
                timer.cancel()
            if not isinstance(reply, Failure):
                result.callback(reply)
            elif reply.check(txredisapi.ResponseError):
                result.errback(
                    RedisCommandError(f"Redis refused {args[0]!r}: {reply.value}")
                )
            elif expired:
                result.errback(BrokerUnavailable("Redis did not answer in time"))
            elif reply.check(txredisapi.RedisError):
                result.errback(BrokerUnavailable("lost the connection to Redis"))
            else:
                result.errback(reply)

        sent.addBoth(done)
        return result

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                _, lost = await self._connect()
            except Exception as error:
                if self._stopping:
                    break
                attempt += 1
                delay = _backoff(attempt)
                if attempt == 1 or attempt % 20 == 0:
                    _log.warn(
                        "Cannot connect to Redis at {address} ({name}): {error}; "
                        "retrying in {delay:.1f} s (attempt {attempt})",
                        address=str(self.address),
                        name=self.name,
                        error=_describe(error),
                        delay=delay,
                        attempt=attempt,
                    )
                await self._sleep(delay)
                continue
            _log.info(
                "Connected to Redis at {address} ({name})",
                address=str(self.address),
                name=self.name,
            )
            attempt = 0
            self._ready = True
            self._notify(self._on_ready)
            await lost
            self._ready = False
            self._protocol = None
            if not self._stopping:
                _log.warn(
                    "Lost the connection to Redis at {address} ({name})",
                    address=str(self.address),
                    name=self.name,
                )
            self._notify(self._on_lost)
            attempt = 1
            await self._sleep(_backoff(0))

    def _notify(self, callback: Callable[[], object] | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            _log.failure("A Redis connection callback failed")

    async def _sleep(self, delay: float) -> None:
        if self._stopping:
            return
        self._waiting = deferLater(self.clock, delay, lambda: None)
        try:
            await self._waiting
        except CancelledError:
            pass
        finally:
            self._waiting = None

    async def _connect(self) -> tuple[Any, Deferred[Any]]:
        self._waiting = _endpoint(self.reactor, self.address).connect(
            _ProtocolFactory()
        )
        try:
            protocol: Any = await self._waiting
        finally:
            self._waiting = None
        lost: Deferred[Any] = protocol.whenDisconnected()
        # Known before it is ready, so that stop() and drop() can close it.
        self._protocol = protocol
        _no_delay(protocol.transport)
        try:
            if self._stopping:
                raise CancelledError()
            await self._prepare(protocol)
        except BaseException:
            protocol.transport.abortConnection()
            await lost
            self._protocol = None
            raise
        return protocol, lost

    async def _prepare(self, protocol: Any) -> None:
        address = self.address

        async def send(*args: Arg) -> Reply:
            return await self._execute(protocol, args, None)

        if address.password is not None:
            if address.username is not None:
                await send("AUTH", address.username, address.password)
            else:
                await send("AUTH", address.password)
        if address.db:
            await send("SELECT", address.db)
        info = await send("INFO", "server")
        version = _redis_version(info)
        if version < _MIN_REDIS:
            raise RedisCommandError(
                f"Redis {'.'.join(map(str, version))} is too old: twisted_sse "
                f"needs Redis {'.'.join(map(str, _MIN_REDIS))} or later"
            )
        await send("CLIENT", "SETNAME", self.name)


def _no_delay(transport: Any) -> None:
    # Commands are small writes, often several in flight: with Nagle's
    # algorithm each one waits for the ACK of the previous, which Redis's
    # kernel may delay by 40 ms.  Measured (bench/run.py, hub-redis, 1000
    # clients, saturation): 38k -> 112k-189k deliveries/s, p99 610 -> 41-58 ms.
    while transport is not None:
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
            return
        # TLS: the TCP transport is under the TLS protocol.
        transport = getattr(transport, "transport", None)


async def _nothing() -> None:
    return None


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _redis_version(info: Reply) -> tuple[int, ...]:
    text = _text(info)
    match = re.search(r"^redis_version:(\d+)\.(\d+)", text, re.MULTILINE)
    if match is None:
        return (0, 0)
    return int(match.group(1)), int(match.group(2))


# Replies


def _text(reply: Reply) -> str:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    if isinstance(reply, str):
        return reply
    if isinstance(reply, int):
        return str(reply)
    raise ValueError(f"expected a string reply, not {reply!r}")


def _id(reply: Reply) -> _EventId:
    parsed = parse_event_id(_text(reply))
    if parsed is None:
        raise ValueError(f"not a stream id: {reply!r}")
    return parsed


def _format_id(value: _EventId) -> str:
    return f"{value[0]}-{value[1]}"


def _list(reply: Reply) -> list[Reply]:
    if isinstance(reply, list):
        return reply
    if isinstance(reply, Exception):
        raise reply
    raise ValueError(f"expected an array reply, not {reply!r}")


#: A stream entry: its id as text and as numbers, and its field-value list.
_Entry = tuple[str, _EventId, list[Reply]]


def _entries(reply: Reply) -> list[_Entry]:
    result: list[_Entry] = []
    for item in _list(reply):
        entry_id, fields = _list(item)
        text = _text(entry_id)
        result.append((text, _id(text), _list(fields) if fields is not None else []))
    return result


@frozen
class _Snapshot:
    """
    A stream as ``MULTI / XINFO STREAM / XRANGE / EXEC`` saw it, atomically.

    ``entries-added`` and the first entry tell what trimming removed:
    ``MAXLEN`` trimming does not move ``max-deleted-entry-id`` (only
    ``XDEL`` does; checked on Redis 7.0), so that field alone cannot tell.
    """

    exists: bool
    last_generated: _EventId = _ZERO
    first: _EventId | None = None
    length: int = 0
    entries_added: int = 0
    max_deleted: _EventId = _ZERO
    entries: list[_Entry] = field(factory=list)

    def lost_after(self, position: _EventId) -> bool:
        """
        Whether an entry with an id greater than ``position`` was removed,
        so that reading on from ``position`` would silently miss it.

        Conservative: when ``position`` itself is gone, entries between it
        and the first one left are assumed to have existed, unless the two
        ids are adjacent or the stream never lost an entry.
        """
        if not self.exists:
            return False
        if self.max_deleted > position:
            return True
        if self.entries_added <= self.length:
            return False
        if self.first is None:
            return self.last_generated > position
        if position >= self.first:
            return False
        return position != _before(self.first)


def _snapshot(reply: Reply) -> _Snapshot:
    info, entries = _list(reply)
    if isinstance(info, Exception):
        if "no such key" in str(info):
            return _Snapshot(exists=False)
        raise RedisCommandError(f"Redis refused XINFO STREAM: {info}")
    items = _list(info)
    fields = {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}
    first_entry = fields.get("first-entry")
    first = None
    if isinstance(first_entry, list) and first_entry:
        first = _id(first_entry[0])
    return _Snapshot(
        exists=True,
        last_generated=_id(fields["last-generated-id"]),
        first=first,
        length=int(_text(fields["length"])),
        entries_added=int(_text(fields.get("entries-added", 0))),
        max_deleted=_id(fields.get("max-deleted-entry-id", b"0-0")),
        entries=_entries(entries) if entries is not None else [],
    )


def _read_snapshot(
    link: RedisLink, key: str, after: _EventId | None, count: int
) -> Deferred[_Snapshot]:
    """
    Read a stream's metadata and (if ``after`` is given) up to ``count``
    entries after it in one transaction, so that nothing is trimmed or
    added between the two.
    """
    # The four commands go out back to back on one connection, so nothing
    # else this process sends can land inside the transaction.
    commands: list[Deferred[Reply]] = [
        link.execute("MULTI"),
        link.execute("XINFO", "STREAM", key),
    ]
    if after is not None:
        commands.append(
            link.execute("XRANGE", key, "(" + _format_id(after), "+", "COUNT", count)
        )
    exec_reply = link.execute("EXEC")
    for queued in commands:
        queued.addErrback(lambda _: None)

    def parse(reply: Reply) -> _Snapshot:
        replies = _list(reply)
        if after is None:
            replies = [replies[0], []]
        return _snapshot(replies)

    return exec_reply.addCallback(parse)


# Events as stream fields


def event_fields(event: Event, key: str | None = None) -> list[str]:
    """
    The stream fields that carry ``event``, as a flat field-value list for
    ``XADD``: ``data``, ``event``, ``retry``, ``comment`` when set, and
    always ``key`` (the conflation key: ``key``, else the event type, else
    ``message``).  The event's own ``id`` is not stored: the stream entry id
    is the event id.
    """
    fields: list[str] = []
    if event.data is not None:
        fields += ["data", event.data]
    if event.event is not None:
        fields += ["event", event.event]
    if event.retry is not None:
        fields += ["retry", str(event.retry)]
    if event.comment is not None:
        fields += ["comment", event.comment]
    fields += ["key", key if key is not None else (event.event or "message")]
    return fields


def published_from_fields(
    channel: str, event_id: str, fields: Sequence[bytes | str]
) -> Published:
    """
    Make the event a stream entry describes, from its field-value list, as
    written by :func:`event_fields` or by any other program.

    Unknown fields are ignored (room for later additions); a repeated field
    counts once, the last value.

    :raises ValueError: if a known field's value cannot be sent (a newline
        in ``event``, a ``retry`` that is not digits, text that is not
        UTF-8, ...).
    """
    values: dict[str, str] = {}
    for index in range(0, len(fields) - 1, 2):
        name = fields[index]
        value = fields[index + 1]
        name_text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        if name_text not in ("data", "event", "retry", "comment", "key"):
            continue
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{name_text} is not UTF-8") from None
        values[name_text] = value
    retry = values.get("retry")
    if retry is not None and not _RETRY.fullmatch(retry):
        raise ValueError(f"retry must be digits, not {retry!r}")
    key = values.get("key")
    if key is not None and (len(key) > _MAX_KEY_LENGTH or not key):
        raise ValueError(f"key must be 1 to {_MAX_KEY_LENGTH} characters")
    event = Event(
        data=values.get("data"),
        event=values.get("event") or None,
        id=event_id,
        retry=int(retry) if retry is not None else None,
        comment=values.get("comment"),
    )
    return Published(channel, event_id, event.encode(), key or event.event or "message")


def _loss_event(channel: str, lost_up_to: _EventId) -> Published:
    event_id = _format_id(lost_up_to)
    event = Event(
        event=_HISTORY_LOST_EVENT,
        id=event_id,
        data=json.dumps({"reason": "trimmed"}),
    )
    return Published(channel, event_id, event.encode(), _HISTORY_LOST_EVENT)


# The broker


@define(eq=False)
class _Local:
    """One local subscriber of a channel."""

    deliver: Deliver
    #: Live events that arrived while the replay was running, or ``None``
    #: once the subscriber is live.
    backlog: list[tuple[_EventId, Published]] | None = field(factory=list)
    #: Live events up to this id were covered by the replay; ``None`` once
    #: one after it was delivered.
    floor: _EventId | None = None


@define(eq=False)
class _Channel:
    """A channel with local subscribers, as the reader follows it."""

    name: str
    key: str
    #: The last stream id the reader has handled; ``None`` until known.
    position: _EventId | None = None
    #: Whether the next read must check what Redis trimmed (after a
    #: reconnect, or when the reader fell behind).
    check: bool = False
    subscribers: dict[int, _Local] = field(factory=dict)
    #: New subscribers waiting for the channel's snapshot that is read once
    #: for all of them at the end of this reactor turn; ``None`` when none.
    waiting: list[Deferred[_Snapshot]] | None = None
    #: The last position given to a subscriber, as an id and as text.
    _position_text: tuple[_EventId, str] | None = field(default=None, init=False)

    def position_text(self, position: _EventId) -> str:
        """``position`` as an event id, one string for all who get it."""
        cached = self._position_text
        if cached is None or cached[0] != position:
            cached = self._position_text = (position, _format_id(position))
        return cached[1]


@implementer(IBroker)
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

    :param reactor: Provides ``IReactorTCP`` and ``IReactorTime``.
    :param address: Where Redis is (see :func:`parse_redis_url`).
    :param history: Events kept per channel: ``XADD MAXLEN ~ history`` (at
        least 1: the stream is also how events reach the other processes).
        Use the same value on every process.
    :param prefix: Prepended to the channel name to make the stream key.
    :param block_ms: Milliseconds an idle reader's ``XREAD`` blocks.
    :param timeout: Seconds a Redis reply may take before the connection is
        deemed dead.
    """

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        *,
        history: int = DEFAULT_HISTORY,
        prefix: str = DEFAULT_PREFIX,
        block_ms: int = _BLOCK_MS,
        timeout: float = _COMMAND_TIMEOUT,
    ) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0 events, not {history!r}")
        if block_ms < 1:
            raise ValueError(f"block_ms must be >= 1, not {block_ms!r}")
        self.address = address
        self.history = history
        self.maxlen = max(history, 1)
        self.prefix = prefix
        self.block_ms = block_ms
        self._commands = RedisLink(
            reactor, address, "twisted_sse:commands", timeout=timeout
        )
        self._reader = RedisLink(
            reactor,
            address,
            "twisted_sse:reader",
            on_ready=self._reader_ready,
            on_lost=self._reader_lost,
            timeout=timeout,
        )
        self._clock: IReactorTime = reactor
        self._pause: Deferred[None] | None = None
        self._channels: dict[str, _Channel] = {}
        self._by_key: dict[bytes, _Channel] = {}
        self._tokens = itertools.count()
        #: Bumped on every reader connection: a loop of an older one ends.
        self._generation = 0
        self._reader_id: int | None = None
        self._reading: Deferred[None] | None = None
        self._idle: Deferred[None] | None = None
        self._blocked = False
        self._warned: deque[str] = deque(maxlen=1024)

    # Life cycle

    @property
    def available(self) -> bool:
        """Whether publishing and subscribing work right now."""
        return self._commands.ready and self._reader.ready

    def startService(self) -> None:
        """Connect to Redis (in the background; see :attr:`available`)."""
        super().startService()  # type: ignore[no-untyped-call]
        self._commands.start()
        self._reader.start()

    def stopService(self) -> Deferred[None]:
        """Close the connections; see :meth:`stop`."""
        super().stopService()  # type: ignore[no-untyped-call]
        return self.stop()

    def stop(self) -> Deferred[None]:
        """Close both connections; fires when they are closed."""
        self.running = False

        async def stop() -> None:
            await self._commands.stop()
            await self._reader.stop()
            self._wake_idle()
            if self._pause is not None:
                self._pause.cancel()
            reading, self._reading = self._reading, None
            if reading is not None:
                await reading

        return Deferred.fromCoroutine(stop())

    # Publishing

    def key(self, channel: str) -> str:
        """The stream key of ``channel``."""
        return self.prefix + channel

    def publish(
        self, channel: str, event: Event, key: str | None = None
    ) -> Deferred[str]:
        """See :meth:`IBroker.publish`: one ``XADD``, the entry id is the id."""
        if not valid_channel(channel):
            return fail(ValueError(f"invalid channel name: {channel!r}"))
        if key is not None and (not key or len(key) > _MAX_KEY_LENGTH):
            return fail(ValueError(f"key must be 1 to {_MAX_KEY_LENGTH} characters"))
        added = self._commands.execute(
            "XADD",
            self.key(channel),
            "MAXLEN",
            "~",
            self.maxlen,
            "*",
            *event_fields(event, key),
        )
        return added.addCallback(_text)

    # Subscribing

    def subscribe(
        self, channel: str, deliver: Deliver, last_event_id: str | None = None
    ) -> Deferred[Subscription]:
        """
        See :meth:`IBroker.subscribe`.

        The subscriber joins this process's fan-out first (live events are
        held back), then the history after ``last_event_id`` is read in one
        transaction with the stream's state; the held events that the
        replay did not already cover follow it.
        """
        if not valid_channel(channel):
            return fail(ValueError(f"invalid channel name: {channel!r}"))
        if not self.available:
            return fail(BrokerUnavailable("Redis is not connected"))
        return Deferred.fromCoroutine(self._subscribe(channel, deliver, last_event_id))

    def channel_names(self) -> list[str]:
        """The channels that have local subscribers."""
        return list(self._channels)

    def subscriber_count(self, channel: str) -> int:
        """How many local subscriptions ``channel`` has."""
        found = self._channels.get(channel)
        return len(found.subscribers) if found else 0

    async def _subscribe(
        self, channel: str, deliver: Deliver, last_event_id: str | None
    ) -> Subscription:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel(channel, self.key(channel))
            self._by_key[state.key.encode("utf-8")] = state
        token = next(self._tokens)
        local = _Local(deliver)
        state.subscribers[token] = local
        subscription = _TokenSubscription(
            channel, broker=self, state=state, token=token
        )
        try:
            replay, floor = await self._replay(state, subscription, last_event_id)
        except BaseException:
            state.subscribers.pop(token, None)
            self._forget_if_idle(state)
            raise
        # The replay, then what arrived live meanwhile and is newer than what
        # the replay covered: no gap, no duplicate.
        for published in replay:
            self._call(local, published)
        backlog, local.backlog = local.backlog or [], None
        local.floor = floor
        for event_id, published in backlog:
            self._offer(local, event_id, published)
        return subscription

    async def _replay(
        self, state: _Channel, subscription: Subscription, last_event_id: str | None
    ) -> tuple[list[Published], _EventId]:
        after = parse_event_id(last_event_id) if last_event_id else None
        if last_event_id and after is None:
            subscription.history_lost = "malformed"
        if after is None:
            snapshot = await self._shared_snapshot(state)
        else:
            snapshot = await _read_snapshot(self._commands, state.key, after, _BATCH)
        self._follow(state, snapshot)
        # 0-0 for a stream that does not exist (yet): resuming from it gets
        # every event from the first on.
        position = snapshot.last_generated
        subscription.position = state.position_text(position)
        if after is None:
            return [], position
        if after > position:
            subscription.history_lost = "unknown"
            return [], position
        if snapshot.lost_after(after):
            subscription.history_lost = "trimmed"
            return [], position
        replay: list[Published] = []
        while True:
            replay += self._decode_all(state.name, snapshot.entries)
            if len(snapshot.entries) < _BATCH:
                break
            after = snapshot.entries[-1][1]
            snapshot = await _read_snapshot(self._commands, state.key, after, _BATCH)
            position = snapshot.last_generated
            if snapshot.lost_after(after):
                # Trimmed while the replay was paging: say so, go live.
                subscription.history_lost = "trimmed"
                break
        subscription.replayed = len(replay)
        subscription.position = _format_id(position)
        return replay, position

    def _shared_snapshot(self, state: _Channel) -> Deferred[_Snapshot]:
        """
        The channel's state (no entries), read once for every subscriber
        that asks during this reactor turn: a burst of new subscribers (a
        deploy, a network blip) costs Redis one transaction per channel and
        turn instead of one each.

        It is read at the end of the turn, after every subscriber sharing it
        has joined the fan-out, and the reader's next events are handled
        only after that: so every event after the position it gives reaches
        all of them, with no gap.
        """
        answer: Deferred[_Snapshot] = Deferred()
        if state.waiting is None:
            state.waiting = []
            self._clock.callLater(0, self._read_shared_snapshot, state)
        state.waiting.append(answer)
        return answer

    def _read_shared_snapshot(self, state: _Channel) -> None:
        waiting, state.waiting = state.waiting or [], None

        def answer(result: _Snapshot | Failure) -> None:
            for each in waiting:
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        _read_snapshot(self._commands, state.key, None, 0).addBoth(answer)

    def _follow(self, state: _Channel, snapshot: _Snapshot) -> None:
        """Have the reader follow ``state`` from the snapshot on, if new."""
        if state.position is not None or self._channels.get(state.name) is not state:
            return
        state.position = snapshot.last_generated if snapshot.exists else _ZERO
        self._wake_reader()

    def _forget_if_idle(self, state: _Channel) -> None:
        if not state.subscribers and self._channels.get(state.name) is state:
            del self._channels[state.name]
            self._by_key.pop(state.key.encode("utf-8"), None)

    # Fan-out

    def _call(self, local: _Local, published: Published) -> None:
        try:
            local.deliver(published)
        except Exception:
            _log.failure("A subscriber failed to take an event")

    def _offer(self, local: _Local, event_id: _EventId, published: Published) -> None:
        if local.backlog is not None:
            local.backlog.append((event_id, published))
            return
        if local.floor is not None:
            if event_id <= local.floor:
                return
            local.floor = None
        self._call(local, published)

    def _fan_out(self, state: _Channel, entries: Iterable[_Entry]) -> None:
        for text, event_id, fields in entries:
            if state.position is None or event_id <= state.position:
                continue
            state.position = event_id
            published = self._decode(state.name, text, fields)
            if published is None:
                continue
            # The same Published, encoded once, goes to every local
            # subscriber, each with its own queue and slow-client policy.
            for local in list(state.subscribers.values()):
                if local.backlog is None and local.floor is None:
                    # Live and past its replay: nothing to check.
                    self._call(local, published)
                else:
                    self._offer(local, event_id, published)

    def _decode(
        self, channel: str, event_id: str, fields: Sequence[Reply]
    ) -> Published | None:
        try:
            return published_from_fields(
                channel, event_id, [_field(value) for value in fields]
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

    def _decode_all(self, channel: str, entries: list[_Entry]) -> list[Published]:
        decoded = (self._decode(channel, text, fields) for text, _, fields in entries)
        return [published for published in decoded if published is not None]

    # The reader

    def _wake_reader(self) -> None:
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

    def _reader_ready(self) -> None:
        self._generation += 1
        self._reader_id = None
        for state in self._channels.values():
            state.check = True
        previous = self._reading
        generation = self._generation

        async def read() -> None:
            if previous is not None:
                await previous
            await self._read(generation)

        self._reading = Deferred.fromCoroutine(read())

    def _reader_lost(self) -> None:
        self._reader_id = None
        self._wake_idle()

    async def _read(self, generation: int) -> None:
        try:
            reply = await self._reader.execute("CLIENT", "ID")
            self._reader_id = int(_text(reply))
            while self._generation == generation and self._reader.ready:
                try:
                    await self._read_once()
                except RedisCommandError as error:
                    _log.error("The Redis reader failed: {error}", error=str(error))
                    if "WRONGTYPE" in str(error) and await self._drop_non_streams():
                        continue
                    # Keep the connection, try again now and then.
                    self._pause = deferLater(self._clock, _BACKOFF_MAX, lambda: None)
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
            self._reader.drop()

    async def _drop_non_streams(self) -> bool:
        """
        Stop reading the channels whose key is no longer a stream (another
        program replaced it): one such key fails every XREAD, and so every
        channel of this process.  Their subscribers stay, without events.

        :returns: Whether any was dropped.
        """
        followed = [s for s in self._channels.values() if s.position is not None]
        types = [self._reader.execute("TYPE", state.key) for state in followed]
        dropped = False
        for state, checking in zip(followed, types, strict=True):
            kind = _text(await checking)
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
        return dropped

    async def _read_once(self) -> None:
        followed = [s for s in self._channels.values() if s.position is not None]
        due = [state for state in followed if state.check]
        if due:
            await self._catch_up(due)
            return
        if not followed:
            self._idle = Deferred()
            await self._idle
            return
        keys: list[Arg] = [state.key for state in followed]
        ids: list[Arg] = [_format_id(state.position or _ZERO) for state in followed]
        self._blocked = True
        try:
            reply = await self._reader.execute(
                "XREAD",
                "COUNT",
                _BATCH,
                "BLOCK",
                self.block_ms,
                "STREAMS",
                *keys,
                *ids,
                timeout=self.block_ms / 1000 + self._reader.timeout,
            )
        finally:
            self._blocked = False
        if reply is None:
            return
        full = min(_BATCH, self.maxlen)
        for item in _list(reply):
            key, entries = _list(item)
            state = self._by_key.get(key if isinstance(key, bytes) else b"")
            if state is None:
                continue
            batch = _entries(entries)
            if len(batch) >= full:
                # Behind by a full batch: Redis may have trimmed entries not
                # read yet, which XREAD would skip without a word.  Read this
                # stream again with a check (a batch shorter than MAXLEN ~
                # cannot have a hole: trimming keeps at least that many).
                state.check = True
                continue
            self._fan_out(state, batch)

    async def _catch_up(self, states: list[_Channel]) -> None:
        # One transaction per stream, all sent at once (pipelined).
        reads = [
            (state, position, _read_snapshot(self._reader, state.key, position, _BATCH))
            for state in states
            if (position := state.position) is not None
        ]
        try:
            for state, position, reading in reads:
                self._caught_up(state, position, await reading)
        finally:
            for _, _, reading in reads:
                reading.addErrback(lambda _: None)

    def _caught_up(
        self, state: _Channel, position: _EventId, snapshot: _Snapshot
    ) -> None:
        if state.position != position:
            return
        state.check = len(snapshot.entries) >= _BATCH
        if not snapshot.exists:
            return
        if snapshot.last_generated < position:
            # Redis came back with less than this process had read (a
            # restart without persistence, or from an older snapshot).
            _log.warn(
                "Stream {key} restarted before {position}: Redis lost data",
                key=state.key,
                position=_format_id(position),
            )
            state.position = snapshot.last_generated
            return
        if snapshot.lost_after(position):
            lost_up_to = max(
                snapshot.max_deleted,
                _before(snapshot.first) if snapshot.first else snapshot.last_generated,
            )
            _log.warn(
                "Events of channel {channel} after {position} were trimmed "
                "before this process read them",
                channel=state.name,
                position=_format_id(position),
            )
            loss = _loss_event(state.name, lost_up_to)
            for local in list(state.subscribers.values()):
                self._offer(local, lost_up_to, loss)
            # Resuming from the loss event's id is exact: it is just
            # before the first entry left.
            state.position = max(position, lost_up_to)
        self._fan_out(state, snapshot.entries)


def _before(value: _EventId) -> _EventId:
    ms, seq = value
    return (ms, seq - 1) if seq else (ms - 1, 2**64 - 1) if ms else _ZERO


def _field(value: Reply) -> bytes | str:
    if isinstance(value, bytes | str):
        return value
    return _text(value)


def _unblock_failed(failure: Failure) -> None:
    # Refused (ACL) or the command connection is down: the reader's XREAD
    # ends by itself after block_ms.
    _log.debug("CLIENT UNBLOCK failed: {error}", error=failure.getErrorMessage())
