"""
The Redis broker: :class:`~twisted_sse.IBroker` over Redis Streams, so that
any number of server processes share channels, ids and history.

One stream per channel (``sse:<channel>``) holds the events as fields
(``data``, ``event``, ``retry``, ``comment``, ``key``).  Each process keeps
two connections: one for commands (publish, replay) and one for a single
reader loop that ``XREAD BLOCK``\\ s on the streams of every channel with
local subscribers, from the last id it has handled in each, and hands each
entry, encoded once, to every local subscriber.  Because the reader always
resumes from the last id it has seen, an outage of Redis or of the network
loses nothing that Redis still holds, and what Redis trimmed in the
meantime is announced as a ``history-lost`` event.

Epochs: telling a lost history from a short one
-----------------------------------------------

Stream entry ids alone cannot tell that Redis lost a channel: after a
restart without persistence, a ``FLUSHALL``, an expiry or a failover to a
replica that missed writes, new entries get ids larger than the old ones,
and a client resuming from an old id would silently skip what was lost.
So, as Centrifugo does, each channel has an *epoch* kept beside its stream,
in the hash ``sse:<channel>#epoch`` (``#`` cannot occur in a channel
name): field ``e`` is a token made from Redis's clock in microseconds (base
36), new whenever the hash is created, ``p`` the epoch it replaced when a
process rotated it, and ``m`` is set until the epoch's first entry is
written.  Event ids are ``<epoch>:<stream entry id>``, e.g.
``kq3x9b1c0a:1765000000123-0``, and so are the positions given to new
subscribers, an empty channel's included (``kq3x9b1c0a:0-0``).  A client
resuming with an id of another epoch is told ``history_lost = "unknown"``
(an id without an epoch, from before epochs, too; garbage is
``"malformed"``).

Every command that may create the epoch is one Lua script (``EVALSHA``,
``EVAL`` when Redis answers ``NOSCRIPT``), so the epoch is created
atomically with what uses it: publishing is one script that reads (or
creates) the epoch, ``XADD``\\ s the entry (``MAXLEN ~ <history>``) and
sets both keys' TTL; reading a stream's state and a page of it is one
script that reads (or creates) the epoch, the stream's ``XINFO`` and up to
a page of entries.  The first entry published in an epoch carries it in a
first field ``sse-epoch``, so that readers that follow the channel see at
once, without reading the epoch per event, that Redis lost the channel and
started a new one.

A process's reader learns that a channel's epoch changed in three ways:
that marked entry (a flush or expiry followed by a publish); the check of
every channel after it reconnects (a restart or failover); and a periodic
check of the epochs of the channels it follows (a flush with no publish
since).  Its local subscribers then get a ``history-lost`` event (reason
``"unknown"``) whose id is in the new epoch and resumes exactly, followed
by the channel's new events.  When a reader finds that Redis holds less of
a stream than it has read, under the same epoch (a failover to a replica
that missed writes), it rotates the epoch (a compare-and-set script that
records the old one as ``p``), so that the ids given out before are
refused; every process then continues after what is left.

Channels are forgotten after ``channel_ttl`` of idleness: every publish
sets the TTL of the stream and of its epoch, in the same script, and each
process refreshes the TTL of the channels it follows (every third of the
TTL, one script for up to 500 channels), so a channel goes only when no
process has a subscriber on it and nobody published for the TTL.

A resuming subscriber's replay is paced (see
:meth:`~twisted_sse.IBroker.subscribe`): it is read in pages (a bounded
number of entries and bytes, with the stream's state, in one script) and
kept as a cursor between them; the subscriber joins the live fan-out only
when its replay reaches the position of the process's reader.

txredisapi supplies the protocol: the queue that matches replies to
commands, and the connection's life.  Its reply parser and command encoder
are replaced by faster ones (:class:`_RespParser`; measured in
docs/deployment.md), and the connection handling (reconnecting with
backoff, reply timeouts, TCP_NODELAY, typed replies) is in
:class:`RedisLink`, so that the untyped library stays behind one small
typed face.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Union
from urllib.parse import parse_qsl, unquote, urlsplit

from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._broker import (
    DEFAULT_CHANNEL_TTL,
    DEFAULT_HISTORY,
    MAX_KEY_LENGTH,
    BrokerUnavailable,
    Deliver,
    IBroker,
    Published,
    Subscription,
    _TokenSubscription,
    check_publish,
    loss_event,
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
#: Bytes of stream fields (names and values) a page of a replay or a
#: catch-up holds at most (one entry more if a single one is larger): a
#: subscriber that resumes from far back costs one page, not the history.
_PAGE_BYTES = 512 * 1024
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
#: Seconds between two checks of the channels a process follows (their
#: TTL refreshed, their epoch compared), at most.
_CHECK_INTERVAL = 60.0
#: Channels per refresh script.
_REFRESH_BATCH = 500
#: Seconds before a replay page that failed (Redis down) is read again.
_RETRY_PAGE = 1.0

_RETRY = re.compile(r"[0-9]{1,20}")
#: An event id of this broker: ``<epoch>:<stream entry id>``.
_POSITION = re.compile(r"([0-9a-z]{1,16}):([0-9]{1,20})-([0-9]{1,20})")
#: An epoch token (see the module docstring).
_EPOCH = re.compile(r"[0-9a-z]{1,16}")
#: The field that marks the first entry of a new epoch (always first).
_EPOCH_FIELD = b"sse-epoch"

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
    :param scripts: Lua scripts to ``SCRIPT LOAD`` on each new connection
        before it is ready, so that ``EVALSHA`` finds them (a refusal, by an
        ACL say, is ignored: ``EVAL`` then sends them whole).
    """

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        name: str,
        on_ready: Callable[[], object] | None = None,
        on_lost: Callable[[], object] | None = None,
        timeout: float = _COMMAND_TIMEOUT,
        scripts: Sequence[str] = (),
    ) -> None:
        self.scripts = tuple(scripts)
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
        for script in self.scripts:
            try:
                await send("SCRIPT", "LOAD", script)
            except RedisCommandError as error:
                _log.debug("SCRIPT LOAD refused: {error}", error=str(error))


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


# Scripts


@frozen
class _Script:
    """A Lua script, run by ``EVALSHA`` (``EVAL`` when Redis lost it)."""

    source: str
    sha: str


def _script(body: str) -> _Script:
    source = _NEW_EPOCH + body
    return _Script(source, hashlib.sha1(source.encode("utf-8")).hexdigest())


#: A new epoch token: Redis's clock in microseconds, in base 36, so that a
#: channel made again (after Redis lost it) never gets its old epoch back.
_NEW_EPOCH = """
local function new_epoch()
  local now = redis.call('TIME')
  local n = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local digits = '0123456789abcdefghijklmnopqrstuvwxyz'
  local text = ''
  repeat
    local d = n % 36
    text = string.sub(digits, d + 1, d + 1) .. text
    n = (n - d) / 36
  until n == 0
  return text
end
"""

#: Publish: KEYS stream, epoch; ARGV MAXLEN, TTL in ms (0: none), the
#: fields.  Returns ``<epoch>:<entry id>``.  The first entry of an epoch
#: (``m`` is set until it is written) carries the epoch first, for the
#: readers of the channel (see the module docstring).
_PUBLISH = _script("""
local stream, meta = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[2])
local known = redis.call('HMGET', meta, 'e', 'm')
local epoch = known[1]
local id
if epoch and not known[2] then
  id = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
else
  if epoch then
    redis.call('HDEL', meta, 'm')
  else
    epoch = new_epoch()
    redis.call('HSET', meta, 'e', epoch)
  end
  id = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*',
                  'sse-epoch', epoch, unpack(ARGV, 3))
end
if ttl > 0 then
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PEXPIRE', meta, ttl)
else
  redis.call('PERSIST', stream)
  redis.call('PERSIST', meta)
end
return epoch .. ':' .. id
""")

#: A stream's state and (if ARGV[3], an id, is not empty) a page of
#: entries after that id: KEYS stream, epoch; ARGV TTL in ms, the epoch
#: the entries are wanted in ('' for any), the id, the page's most entries
#: and bytes.  Reads the epoch, creating it if none (its first entry to be
#: marked); refreshes the TTLs.
#: Returns {epoch, previous epoch, exists, last-generated-id, first entry
#: id, length, entries-added, max-deleted-entry-id, more, entries}.
_SNAPSHOT = _script("""
local stream, meta = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[1])
local want, after = ARGV[2], ARGV[3]
local count, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local known = redis.call('HMGET', meta, 'e', 'p')
local epoch = known[1]
if not epoch then
  epoch = new_epoch()
  redis.call('HSET', meta, 'e', epoch, 'm', 1)
end
local exists = redis.call('EXISTS', stream)
if ttl > 0 then
  redis.call('PEXPIRE', meta, ttl)
  if exists == 1 then redis.call('PEXPIRE', stream, ttl) end
end
local last, first, length, added, deleted = '0-0', false, 0, 0, '0-0'
local entries, more = {}, 0
if exists == 1 then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    local name, value = info[i], info[i + 1]
    if name == 'last-generated-id' then last = value
    elseif name == 'first-entry' then if value then first = value[1] end
    elseif name == 'length' then length = value
    elseif name == 'entries-added' then added = value
    elseif name == 'max-deleted-entry-id' then deleted = value
    end
  end
  if after ~= '' and (want == '' or want == epoch) then
    entries = redis.call('XRANGE', stream, '(' .. after, '+', 'COUNT', count)
    if #entries >= count then more = 1 end
    local size = 0
    for i = 1, #entries do
      local fields = entries[i][2]
      for j = 1, #fields do size = size + #fields[j] end
      if size >= budget and i < #entries then
        for k = #entries, i + 1, -1 do entries[k] = nil end
        more = 1
        break
      end
    end
  end
end
return {epoch, known[2], exists, last, first, length, added, deleted, more, entries}
""")

#: Rotate an epoch that is still ARGV[1] (Redis lost writes under it):
#: KEYS stream, epoch; ARGV the epoch, TTL in ms.  The old one is kept as
#: ``p``, so that every process knows the stream itself went on.
_ROTATE = _script("""
local meta = KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if epoch ~= ARGV[1] then return epoch end
local new = new_epoch()
redis.call('HSET', meta, 'e', new, 'p', epoch, 'm', 1)
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', meta, ARGV[2]) end
return new
""")

#: Refresh the TTL of followed channels and tell their epochs: KEYS
#: stream, epoch, stream, epoch...; ARGV TTL in ms (0: none).  Returns
#: each channel's epoch (nil if it has none: Redis lost it).
_REFRESH = _script("""
local ttl = tonumber(ARGV[1])
local epochs = {}
for i = 1, #KEYS, 2 do
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[i], ttl)
    redis.call('PEXPIRE', KEYS[i + 1], ttl)
  end
  epochs[#epochs + 1] = redis.call('HGET', KEYS[i + 1], 'e')
end
return epochs
""")

_SCRIPTS = (_PUBLISH, _SNAPSHOT, _ROTATE, _REFRESH)


def _run_script(
    link: RedisLink, script: _Script, keys: Sequence[Arg], args: Sequence[Arg]
) -> Deferred[Reply]:
    """
    Run ``script``: one ``EVALSHA``, or, if Redis does not have the script
    (it restarted, or its scripts were flushed), one ``EVAL`` more.
    """

    sent = link.execute("EVALSHA", script.sha, len(keys), *keys, *args)
    return sent.addErrback(_script_again, link, script, keys, args)


def _script_again(
    failure: Failure,
    link: RedisLink,
    script: _Script,
    keys: Sequence[Arg],
    args: Sequence[Arg],
) -> Deferred[Reply]:
    if failure.check(RedisCommandError) and "NOSCRIPT" in str(failure.value):
        return link.execute("EVAL", script.source, len(keys), *keys, *args)
    return fail(failure)


# A stream's state


@frozen
class _Snapshot:
    """
    A stream and its epoch as :data:`_SNAPSHOT` saw them, atomically.

    ``entries-added`` and the first entry tell what trimming removed:
    ``MAXLEN`` trimming does not move ``max-deleted-entry-id`` (only
    ``XDEL`` does; checked on Redis 7.0), so that field alone cannot tell.

    :ivar epoch: The channel's epoch.
    :ivar previous: The epoch it replaced when a process rotated it.
    :ivar more: Whether entries after the page's last were left for the
        next read.
    """

    exists: bool
    last_generated: _EventId = _ZERO
    first: _EventId | None = None
    length: int = 0
    entries_added: int = 0
    max_deleted: _EventId = _ZERO
    entries: list[_Entry] = field(factory=list)
    epoch: str = ""
    previous: str | None = None
    more: bool = False

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

    def lost_up_to(self) -> _EventId:
        """
        The id just before the first entry left (the last one if none is):
        reading on from it misses nothing more.
        """
        return max(
            self.max_deleted,
            _before(self.first) if self.first else self.last_generated,
        )


def _snapshot(reply: Reply) -> _Snapshot:
    (
        epoch,
        previous,
        exists,
        last_generated,
        first,
        length,
        entries_added,
        max_deleted,
        more,
        entries,
    ) = _list(reply)
    return _Snapshot(
        exists=exists == 1,
        last_generated=_id(last_generated),
        first=_id(first) if first is not None else None,
        length=int(_text(length)),
        entries_added=int(_text(entries_added)),
        max_deleted=_id(max_deleted),
        entries=_entries(entries) if entries else [],
        epoch=_text(epoch),
        previous=_text(previous) if previous is not None else None,
        more=more == 1,
    )


def _restart_point(snapshot: _Snapshot, after: _EventId, epoch: str) -> _EventId:
    """
    Where a reader at ``after`` in ``epoch`` goes on in the snapshot's new
    epoch: from ``after`` in the stream as it is (it was only given a new
    epoch, or made again with later ids), from the end of what is left if
    the epoch was rotated from ``epoch`` (Redis lost its tail), or from the
    start (made again with earlier ids); past what was trimmed.
    """
    if not snapshot.exists:
        return _ZERO
    if snapshot.last_generated >= after or snapshot.previous == epoch:
        start = min(after, snapshot.last_generated)
    else:
        start = _ZERO
    if snapshot.lost_after(start):
        start = max(start, snapshot.lost_up_to())
    return start


def _parse_position(value: str) -> tuple[str, _EventId] | None:
    """Split an id of this broker into its epoch and stream id."""
    match = _POSITION.fullmatch(value)
    if match is None:
        return None
    ms, seq = int(match.group(2)), int(match.group(3))
    if ms >= 2**64 or seq >= 2**64:
        return None
    return match.group(1), (ms, seq)


# Events as stream fields


def event_fields(event: Event, key: str | None = None) -> list[str]:
    """
    The stream fields that carry ``event``, as a flat field-value list for
    ``XADD``: ``data``, ``event``, ``retry``, ``comment`` when set, and
    always ``key`` (the conflation key: ``key``, else the event type, else
    ``message``).  The event's own ``id`` is not stored: the broker gives
    the id (the channel's epoch and the stream entry id).
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


_KNOWN_FIELDS = frozenset(("data", "event", "retry", "comment", "key"))


def published_from_fields(
    channel: str, event_id: str, fields: Sequence[bytes | str]
) -> Published:
    """
    Make the event a stream entry describes, from its field-value list, as
    written by :func:`event_fields` or by any other program.

    Unknown fields are ignored (room for later additions, and the epoch
    mark); a repeated field counts once, the last value.

    :raises ValueError: if a known field's value cannot be sent (a newline
        in ``event``, a ``retry`` that is not digits or is past
        :data:`~twisted_sse.MAX_RETRY`, a ``key`` longer than
        :data:`~twisted_sse.MAX_KEY_LENGTH`, text that is not UTF-8, ...):
        the same bounds as a publish.
    """
    values: dict[str, str] = {}
    for index in range(0, len(fields) - 1, 2):
        name = fields[index]
        value = fields[index + 1]
        name_text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        if name_text not in _KNOWN_FIELDS:
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
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ValueError(f"key must be 1 to {MAX_KEY_LENGTH} characters")
    event = Event(
        data=values.get("data"),
        event=values.get("event") or None,
        id=event_id,
        # Event refuses a retry past MAX_RETRY, as it did at publish.
        retry=int(retry) if retry is not None else None,
        comment=values.get("comment"),
    )
    return Published(channel, event_id, event.encode(), key or event.event or "message")


# The broker


@define(eq=False)
class _Local:
    """One local subscriber of a channel, in the live fan-out."""

    deliver: Deliver
    #: Live events up to this id were covered by its replay; ``None`` once
    #: one after it was delivered.
    floor: _EventId | None = None


@define(eq=False)
class _Replay:
    """
    A resuming subscriber on its way to the live fan-out: a cursor in the
    stream, not the events (see :meth:`RedisBroker.subscribe`).
    """

    local: _Local
    subscription: Subscription
    token: int
    #: The epoch and stream id of the last entry delivered (or skipped).
    epoch: str = ""
    cursor: _EventId = _ZERO
    #: Its deliver said it had no room: resume_replay goes on.
    paused: bool = False
    #: At the stream's end, in an epoch the reader has not reached yet: the
    #: reader picks it up when it has checked the channel.
    parked: bool = False
    #: resume_replay was called during the current deliver call.
    resumed: bool = False


@define(eq=False)
class _Channel:
    """A channel with local subscribers, as the reader follows it."""

    name: str
    key: str
    epoch_key: str
    #: The last stream id the reader has handled; ``None`` until known.
    position: _EventId | None = None
    #: The channel's epoch as the reader knows it.
    epoch: str = ""
    #: Whether the next read must check the stream's state (after a
    #: reconnect, when the reader fell behind, or when its epoch may have
    #: changed).
    check: bool = False
    #: Subscribers in the live fan-out.
    subscribers: dict[int, _Local] = field(factory=dict)
    #: Subscribers on their way there: new ones waiting for the channel's
    #: first read (a _Local), resuming ones replaying (a _Replay).
    joining: dict[int, _Local | _Replay] = field(factory=dict)
    #: New subscribers waiting for the channel's snapshot that is read once
    #: for all of them at the end of this reactor turn; ``None`` when none.
    waiting: list[Deferred[_Snapshot]] | None = None
    #: The last position given out, as epoch, id and text.
    _position_text: tuple[str, _EventId, str] | None = field(default=None, init=False)

    def text(self, position: _EventId) -> str:
        """``position`` as an event id, one string for all who get it."""
        cached = self._position_text
        if cached is None or cached[1] != position or cached[0] != self.epoch:
            text = f"{self.epoch}:{position[0]}-{position[1]}"
            cached = self._position_text = (self.epoch, position, text)
        return cached[2]


@define(eq=False)
class _RedisSubscription(_TokenSubscription):
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
            broker._resume_replay(state, self._token)


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

    Event ids are ``<epoch>:<stream entry id>``; see the module docstring.

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
        (and, with ``#epoch`` after the name, the epoch's).
    :param block_ms: Milliseconds an idle reader's ``XREAD`` blocks.
    :param timeout: Seconds a Redis reply may take before the connection is
        deemed dead.
    :param channel_ttl: Seconds after which Redis forgets a channel (its
        stream and epoch) that nobody published on and no process followed
        meanwhile; 0 for never.  Use the same value on every process.
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
        channel_ttl: float = DEFAULT_CHANNEL_TTL,
    ) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0 events, not {history!r}")
        if block_ms < 1:
            raise ValueError(f"block_ms must be >= 1, not {block_ms!r}")
        if not channel_ttl >= 0:
            raise ValueError(f"channel_ttl must be >= 0 seconds, not {channel_ttl!r}")
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
        scripts = [script.source for script in _SCRIPTS]
        self._commands = RedisLink(
            reactor, address, "twisted_sse:commands", timeout=timeout, scripts=scripts
        )
        self._reader = RedisLink(
            reactor,
            address,
            "twisted_sse:reader",
            on_ready=self._reader_ready,
            on_lost=self._reader_lost,
            timeout=timeout,
            scripts=scripts,
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
        self._check_call: IDelayedCall | None = None
        self._retry_call: IDelayedCall | None = None
        #: Replays whose last page read failed, to read again.
        self._failed: list[tuple[_Channel, _Replay]] = []

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
        if self._check_call is None:
            self._check_call = self._clock.callLater(
                self.check_interval, self._check_channels
            )

    def stopService(self) -> Deferred[None]:
        """Close the connections; see :meth:`stop`."""
        super().stopService()  # type: ignore[no-untyped-call]
        return self.stop()

    def stop(self) -> Deferred[None]:
        """Close both connections and stop the timers; fires when closed."""
        self.running = False
        for call in (self._check_call, self._retry_call):
            if call is not None and call.active():
                call.cancel()
        self._check_call = self._retry_call = None

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

    def epoch_key(self, channel: str) -> str:
        """The key of the hash that holds ``channel``'s epoch."""
        return self.prefix + channel + "#epoch"

    def publish(
        self, channel: str, event: Event, key: str | None = None
    ) -> Deferred[str]:
        """
        See :meth:`IBroker.publish`: one script (the epoch, ``XADD``, the
        TTLs); the id is ``<epoch>:<stream entry id>``.
        """
        try:
            check_publish(channel, event, key)
        except ValueError as error:
            return fail(error)
        added = _run_script(
            self._commands,
            _PUBLISH,
            (self.key(channel), self.epoch_key(channel)),
            (self.maxlen, self._ttl_ms, *event_fields(event, key)),
        )
        return added.addCallback(_text)

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
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel(
                channel, self.key(channel), self.epoch_key(channel)
            )
            self._by_key[state.key.encode("utf-8")] = state
        token = next(self._tokens)
        local = _Local(deliver)
        subscription = _RedisSubscription(
            channel, broker=self, state=state, token=token
        )
        if last_event_id:
            return Deferred.fromCoroutine(
                self._resume(state, local, subscription, token, last_event_id)
            )
        if state.position is not None:
            # Followed: every event after the reader's position reaches
            # this subscriber, and none before.
            subscription.position = state.text(state.position)
            state.subscribers[token] = local
            return succeed(subscription)
        return Deferred.fromCoroutine(self._join(state, local, subscription, token))

    def channel_names(self) -> list[str]:
        """The channels that have local subscribers."""
        return list(self._channels)

    def subscriber_count(self, channel: str) -> int:
        """How many local subscriptions ``channel`` has."""
        found = self._channels.get(channel)
        return len(found.subscribers) + len(found.joining) if found else 0

    async def _join(
        self, state: _Channel, local: _Local, subscription: Subscription, token: int
    ) -> Subscription:
        """A new subscriber of a channel not followed yet."""
        state.joining[token] = local
        try:
            snapshot = await self._shared_snapshot(state)
        except BaseException:
            state.joining.pop(token, None)
            self._forget_if_idle(state)
            raise
        if state.joining.pop(token, None) is None:
            return subscription  # cancelled meanwhile
        self._follow(state, snapshot)
        if state.position is not None:
            subscription.position = state.text(state.position)
        else:
            subscription.position = _text_id(snapshot.epoch, snapshot.last_generated)
        state.subscribers[token] = local
        return subscription

    async def _resume(
        self,
        state: _Channel,
        local: _Local,
        subscription: Subscription,
        token: int,
        last_event_id: str,
    ) -> Subscription:
        """A subscriber resuming after ``last_event_id``: judge, first page."""
        replay = _Replay(local, subscription, token)
        state.joining[token] = replay
        parsed = _parse_position(last_event_id)
        try:
            if parsed is None or parsed[1] == _LAST_ID:
                page = await self._shared_snapshot(state)
            else:
                page = await self._read_snapshot(
                    self._commands, state, parsed[1], _BATCH, want=parsed[0]
                )
        except BaseException:
            state.joining.pop(token, None)
            self._forget_if_idle(state)
            raise
        if state.joining.get(token) is not replay:
            return subscription  # cancelled meanwhile
        self._follow(state, page)
        head = page.last_generated
        subscription.position = (
            state.text(head)
            if page.epoch == state.epoch
            else _text_id(page.epoch, head)
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

    def _replay_page(self, state: _Channel, replay: _Replay, page: _Snapshot) -> None:
        """Go on with ``replay`` from ``page``, read after its cursor."""
        if state.joining.get(replay.token) is not replay:
            return
        self._follow(state, page)
        entries, more = page.entries, page.more
        loss: Published | None = None
        if page.epoch != replay.epoch:
            # Redis lost the channel (or its tail) since the last page.
            start = _restart_point(page, replay.cursor, replay.epoch)
            if start != replay.cursor:
                entries, more = [], True
            replay.epoch, replay.cursor = page.epoch, start
            loss = loss_event(state.name, _text_id(page.epoch, start), "unknown")
        elif page.lost_after(replay.cursor):
            # Trimmed past the cursor while the replay waited.
            replay.cursor = max(replay.cursor, page.lost_up_to())
            loss = loss_event(
                state.name, _text_id(page.epoch, replay.cursor), "trimmed"
            )
        if loss is not None and not self._give(state, replay, loss):
            return
        prefix = page.epoch + ":"
        last = len(entries) - 1
        for index, (text, event_id, fields) in enumerate(entries):
            if event_id <= replay.cursor:
                continue
            replay.cursor = event_id
            published = self._decode(state.name, prefix + text, fields)
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

    def _give(self, state: _Channel, replay: _Replay, published: Published) -> bool:
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

    def _replay_onwards(self, state: _Channel, replay: _Replay, more: bool) -> None:
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
            if state.position is not None and not state.check:
                state.check = True
                self._wake_reader()

    def _try_join(self, state: _Channel, replay: _Replay) -> bool:
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

    def _read_page(self, state: _Channel, replay: _Replay) -> None:
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

        reading = self._read_snapshot(self._commands, state, replay.cursor, _BATCH)
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

    def _resume_replay(self, state: _Channel, token: int) -> None:
        replay = state.joining.get(token)
        if not isinstance(replay, _Replay):
            return
        replay.resumed = True
        if replay.paused:
            replay.paused = False
            self._read_page(state, replay)

    def _unpark(self, state: _Channel) -> None:
        """The reader has checked ``state``: the replays waiting for it go on."""
        for replay in list(state.joining.values()):
            if (
                isinstance(replay, _Replay)
                and replay.parked
                and state.joining.get(replay.token) is replay
                and not self._try_join(state, replay)
            ):
                self._read_page(state, replay)

    def _read_snapshot(
        self,
        link: RedisLink,
        state: _Channel,
        after: _EventId | None,
        count: int,
        want: str = "",
    ) -> Deferred[_Snapshot]:
        """
        Read the channel's epoch and stream state and (if ``after`` is
        given) a page of entries after it, in one script, so that nothing
        is trimmed or added between them.

        :param want: Read the entries only if the epoch is this one.
        """
        reading = _run_script(
            link,
            _SNAPSHOT,
            (state.key, state.epoch_key),
            (
                self._ttl_ms,
                want,
                "" if after is None else _format_id(after),
                count,
                _PAGE_BYTES,
            ),
        )
        return reading.addCallback(_snapshot)

    def _shared_snapshot(self, state: _Channel) -> Deferred[_Snapshot]:
        """
        The channel's state (no entries), read once for every subscriber
        that asks during this reactor turn: a burst of new subscribers (a
        deploy, a network blip) costs Redis one script per channel and
        turn instead of one each.
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

        self._read_snapshot(self._commands, state, None, 0).addBoth(answer)

    def _follow(self, state: _Channel, snapshot: _Snapshot) -> None:
        """Have the reader follow ``state`` from the snapshot on, if new."""
        if self._channels.get(state.name) is not state:
            return
        if state.position is None:
            state.position = snapshot.last_generated if snapshot.exists else _ZERO
            state.epoch = snapshot.epoch
            self._wake_reader()
        elif snapshot.epoch != state.epoch and not state.check:
            # The reader is behind this read, or this read behind the
            # reader: the reader's own check tells which.
            state.check = True
            self._wake_reader()

    def _forget_if_idle(self, state: _Channel) -> None:
        if (
            not state.subscribers
            and not state.joining
            and self._channels.get(state.name) is state
        ):
            del self._channels[state.name]
            self._by_key.pop(state.key.encode("utf-8"), None)

    # Fan-out

    def _call(self, local: _Local, published: Published) -> None:
        try:
            local.deliver(published)
        except Exception:
            _log.failure("A subscriber failed to take an event")

    def _offer(self, local: _Local, event_id: _EventId, published: Published) -> None:
        if local.floor is not None:
            if event_id <= local.floor:
                return
            local.floor = None
        self._call(local, published)

    def _fan_out(self, state: _Channel, entries: Iterable[_Entry]) -> None:
        for text, event_id, fields in entries:
            position = state.position
            if position is None or event_id <= position:
                continue
            if fields and fields[0] == _EPOCH_FIELD and len(fields) > 1:
                self._marked(state, event_id, fields[1])
            state.position = event_id
            published = self._decode(state.name, f"{state.epoch}:{text}", fields)
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

    def _marked(self, state: _Channel, event_id: _EventId, value: Reply) -> None:
        """An entry that made a new epoch: if not the one followed, switch."""
        epoch = _text(value)
        if not _newer(epoch, state.epoch):
            # The mark of this epoch, or of an older one, read again.
            return
        _log.warn(
            "Channel {channel} has a new epoch {epoch} (was {old}): Redis lost "
            "its history",
            channel=state.name,
            epoch=epoch,
            old=state.epoch,
        )
        self._switch_epoch(state, epoch, _before(event_id))
        self._unpark(state)

    def _switch_epoch(self, state: _Channel, epoch: str, start: _EventId) -> None:
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
        followed = [s for s in self._channels.values() if s.position is not None]
        for start in range(0, len(followed), _REFRESH_BATCH):
            batch = followed[start : start + _REFRESH_BATCH]
            keys = [key for state in batch for key in (state.key, state.epoch_key)]
            _run_script(self._commands, _REFRESH, keys, (self._ttl_ms,)).addCallback(
                self._checked, batch
            ).addErrback(_check_failed)

    def _checked(self, reply: Reply, batch: list[_Channel]) -> None:
        changed = False
        for state, epoch in zip(batch, _list(reply), strict=True):
            if (
                self._channels.get(state.name) is state
                and state.position is not None
                and (epoch is None or _text(epoch) != state.epoch)
            ):
                state.check = changed = True
        if changed:
            self._wake_reader()

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
        # One script per stream, all sent at once (pipelined).
        reads = [
            (
                state,
                position,
                self._read_snapshot(self._reader, state, position, _BATCH),
            )
            for state in states
            if (position := state.position) is not None
        ]
        rotate: list[_Channel] = []
        try:
            for state, position, reading in reads:
                if self._caught_up(state, position, await reading):
                    rotate.append(state)
        finally:
            for _, _, reading in reads:
                reading.addErrback(lambda _: None)
        for state in rotate:
            await _run_script(
                self._reader,
                _ROTATE,
                (state.key, state.epoch_key),
                (state.epoch, self._ttl_ms),
            )
            # The next check sees the new epoch, and goes on from there.
            state.check = True

    def _caught_up(
        self, state: _Channel, position: _EventId, snapshot: _Snapshot
    ) -> bool:
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
            start = _restart_point(snapshot, position, state.epoch)
            _log.warn(
                "Channel {channel} has a new epoch {epoch} (was {old}): Redis "
                "lost its history; going on from {start}",
                channel=state.name,
                epoch=snapshot.epoch,
                old=state.epoch,
                start=_format_id(start),
            )
            self._switch_epoch(state, snapshot.epoch, start)
            if start == position:
                self._fan_out(state, snapshot.entries)
            else:
                state.check = True  # read again from the new start
            self._unpark(state)
            return False
        if (snapshot.last_generated if snapshot.exists else _ZERO) < position:
            _log.warn(
                "Stream {key} ends before {position}, which this process read: "
                "Redis lost data; a new epoch follows",
                key=state.key,
                position=_format_id(position),
            )
            return True
        if snapshot.lost_after(position):
            lost_up_to = snapshot.lost_up_to()
            _log.warn(
                "Events of channel {channel} after {position} were trimmed "
                "before this process read them",
                channel=state.name,
                position=_format_id(position),
            )
            loss = loss_event(state.name, state.text(lost_up_to), "trimmed")
            for local in list(state.subscribers.values()):
                self._offer(local, lost_up_to, loss)
            # Resuming from the loss event's id is exact: it is just
            # before the first entry left.
            state.position = max(position, lost_up_to)
        self._fan_out(state, snapshot.entries)
        self._unpark(state)
        return False


#: The largest stream id: there is nothing after it to read.
_LAST_ID: _EventId = (2**64 - 1, 2**64 - 1)


def _before(value: _EventId) -> _EventId:
    ms, seq = value
    return (ms, seq - 1) if seq else (ms - 1, 2**64 - 1) if ms else _ZERO


def _newer(epoch: str, than: str) -> bool:
    """
    Whether epoch token ``epoch`` was made after ``than``: they are Redis's
    clock in microseconds, in base 36.
    """
    if not _EPOCH.fullmatch(epoch):
        return False
    if not _EPOCH.fullmatch(than):
        return True
    return int(epoch, 36) > int(than, 36)


def _text_id(epoch: str, position: _EventId) -> str:
    return f"{epoch}:{position[0]}-{position[1]}"


def _field(value: Reply) -> bytes | str:
    if isinstance(value, bytes | str):
        return value
    return _text(value)


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
