"""
Real-socket tests (pytest-twisted) of the client against hostile servers on
127.0.0.1: an endless line, an endless event, endless response headers, and
``retry: 0`` with an immediate close.  For each, the client holds no more
than its cap, reports a clear error, and reconnects a bounded number of
times; ``twisted-sse listen`` runs as a real process against two of them.

These run under pytest only (trial does not collect plain functions); the
socket-free equivalents in test_agent.py, test_client.py, test_parser.py and
test_cli.py run under both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IConsumer, IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import Certificate
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS

from twisted_sse import (
    MAX_RESPONSE_HEADER_BYTES,
    EventParser,
    EventSource,
    MessageEvent,
    ReadyState,
    _agent,
    _client,
)
from twisted_sse._parser import LimitExceeded

from ._certs import self_signed
from ._helpers import Endless

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
CAP = MiB

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Turn the reactor until ``predicate()`` holds; fail after ``timeout``."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await deferLater(_reactor(), 0.02)
    raise AssertionError(f"timed out waiting for {predicate}")


async def sleep(seconds: float) -> None:
    """Let the reactor run for ``seconds``."""
    await deferLater(_reactor(), seconds)


class HostileConnection(Protocol):
    """One connection to a L{Hostile} server."""

    def __init__(self, server: Hostile) -> None:
        self.server = server
        self.request = b""
        self.answered = False
        self.sent = 0
        self.lost = False

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.request += data
        if self.answered or b"\r\n\r\n" not in self.request:
            return
        self.answered = True
        assert self.transport is not None
        self.transport.write(self.server.head)
        self.sent += len(self.server.head)
        if self.server.endless:
            IConsumer(self.transport).registerProducer(
                Endless(self, self.server.endless), streaming=False
            )
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True


class Hostile(Factory):
    """
    A server that answers every request with ``head``, then writes
    ``endless`` without end (or, without it, hangs up at once).
    """

    def __init__(
        self, head: bytes, endless: bytes = b"", tls: tuple[Path, Path] | None = None
    ) -> None:
        self.head = head
        self.endless = endless
        self.tls = tls
        self.connections: list[HostileConnection] = []
        self.port: IListeningPort | None = None

    def buildProtocol(self, addr: Any) -> HostileConnection:
        return HostileConnection(self)

    async def start(self) -> str:
        """Listen on 127.0.0.1 (TLS if given a key and certificate); the URL."""
        if self.tls is None:
            endpoint = TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1")
        else:
            key, cert = self.tls
            endpoint = serverFromString(
                _reactor(),
                f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            )
        self.port = await endpoint.listen(self)
        port: int = self.port.getHost().port  # type: ignore[union-attr]
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{port}/events"

    async def stop(self) -> None:
        """Stop listening, once every connection is gone."""
        await wait_until(lambda: all(c.lost for c in self.connections))
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)


class SpyParser(EventParser):
    """An L{EventParser} that records how much it was fed and held."""

    made: list[SpyParser] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fed = 0
        self.most = 0
        SpyParser.made.append(self)

    def feed(self, chunk: bytes) -> list[MessageEvent]:
        self.fed += len(chunk)
        try:
            return super().feed(chunk)
        finally:
            self.most = max(self.most, self.buffered)


class SpyHead(_agent.HeadLimit):
    """The response head counter, recording what it let through."""

    made: list[SpyHead] = []

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.forwarded = 0
        SpyHead.made.append(self)

    def dataReceived(self, data: bytes) -> None:
        dropped = self.exceeded is not None
        super().dataReceived(data)
        if not dropped and self.exceeded is None:
            self.forwarded += len(data)


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the client use the spying parser and head counter."""
    SpyParser.made = []
    SpyHead.made = []
    monkeypatch.setattr(_client, "EventParser", SpyParser)
    monkeypatch.setattr(_agent, "HeadLimit", SpyHead)
    yield


class Client:
    """An L{EventSource} on the real reactor and its default agent."""

    def __init__(self, url: str) -> None:
        self.source = EventSource(
            url,
            reactor=_reactor(),
            reconnection_time=0,
            max_line_bytes=CAP,
            max_event_bytes=CAP,
        )
        self.errors: list[Failure] = []
        self.events: list[MessageEvent] = []
        self.source.on_error = self.errors.append
        self.source.on_message = self.events.append

    def close(self) -> None:
        """Close the source; nothing of it may stay scheduled."""
        self.source.close()
        assert self.source.ready_state is ReadyState.CLOSED
        assert self.source.reconnect_delay is None
        leftovers = [
            call
            for call in _reactor().getDelayedCalls()
            if "EventSource" in repr(call) or "HostnameEndpoint" in repr(call)
        ]
        assert leftovers == []


async def run_against(server: Hostile) -> Client:
    """
    Point a client at ``server`` until it has reconnected once and a second
    more has passed; return the closed client.
    """
    client = Client(await server.start())
    try:
        await wait_until(lambda: len(server.connections) >= 2)
        # The next attempt is due 3 s or more after the second: none may
        # come in the next second.
        await sleep(1.0)
        assert len(server.connections) == 2
    finally:
        client.close()
        await server.stop()
    return client


def assert_cut_off(server: Hostile) -> None:
    """
    The server, which never stops writing, could not push more than a few
    socket buffers past the cap before the client hung up on it.
    """
    assert all(connection.sent < 64 * MiB for connection in server.connections)


def limit_errors(client: Client) -> list[LimitExceeded]:
    """The caps the client reported passing; every error must be one."""
    errors = [failure.value for failure in client.errors]
    assert all(isinstance(error, LimitExceeded) for error in errors), errors
    return [error for error in errors if isinstance(error, LimitExceeded)]


@pytest_twisted.ensureDeferred
async def test_endless_line(spies: None) -> None:
    """A line without end: dropped at the cap, holding no more, retried later."""
    server = Hostile(SSE_HEAD, b"x" * 65536)
    client = await run_against(server)
    messages = {str(error) for error in limit_errors(client)}
    assert messages == {f"a line longer than max_line_bytes ({CAP} bytes)"}
    assert len(client.errors) == 2
    assert [parser.most <= CAP for parser in SpyParser.made] == [True, True]
    # What the parser was given before the drop: the cap and one read more.
    assert all(parser.fed <= CAP + 256 * 1024 for parser in SpyParser.made)
    assert client.events == []
    assert_cut_off(server)


@pytest_twisted.ensureDeferred
async def test_huge_event(spies: None) -> None:
    """An event that never ends: dropped at the cap, holding no more."""
    server = Hostile(SSE_HEAD + b"data: 1\n\n", (b"data: " + b"x" * 1017 + b"\n") * 64)
    client = await run_against(server)
    messages = {str(error) for error in limit_errors(client)}
    assert messages == {f"an event's data longer than max_event_bytes ({CAP} bytes)"}
    assert all(parser.most <= CAP + 1024 for parser in SpyParser.made)
    assert all(parser.fed <= CAP + 256 * 1024 for parser in SpyParser.made)
    # The event before the flood was delivered, on each connection.
    assert [event.data for event in client.events] == ["1", "1"]
    assert_cut_off(server)


@pytest_twisted.ensureDeferred
async def test_endless_headers(spies: None) -> None:
    """Response headers without end: dropped within 16 KiB of head, retried later."""
    server = Hostile(
        b"HTTP/1.1 200 OK\r\n", (b"X-Filler: " + b"y" * 100 + b"\r\n") * 512
    )
    client = await run_against(server)
    messages = {str(error) for error in limit_errors(client)}
    assert messages == {"response headers longer than 16384 bytes"}
    assert len(SpyHead.made) == 2
    assert all(head.forwarded <= MAX_RESPONSE_HEADER_BYTES for head in SpyHead.made)
    assert SpyParser.made == []
    assert_cut_off(server)


@pytest_twisted.ensureDeferred
async def test_many_small_headers(spies: None) -> None:
    """Many tiny header lines: dropped after the 500th."""
    server = Hostile(b"HTTP/1.1 200 OK\r\n", b"X:\r\n" * 4096)
    client = await run_against(server)
    messages = {str(error) for error in limit_errors(client)}
    assert messages == {"more than 500 response header lines"}


@pytest_twisted.ensureDeferred
async def test_retry_zero_and_close() -> None:
    """retry: 0 and a close at once: the second connection comes seconds later."""
    server = Hostile(SSE_HEAD + b"retry: 0\n\n")
    client = Client(await server.start())
    try:
        await wait_until(lambda: len(server.connections) >= 2)
        await sleep(1.0)
        # Before backoff counted such streams as failures, this was ~900/s.
        assert len(server.connections) == 2
        assert client.source.reconnection_time == 0
        assert len(client.errors) == 2
        delay = client.source.reconnect_delay
        assert delay is not None and delay >= 3.0
    finally:
        client.close()
        await server.stop()


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


@pytest.mark.parametrize(
    ("head", "endless", "options", "message"),
    [
        (
            SSE_HEAD,
            b"x" * 65536,
            ["--max-line-bytes", "65536"],
            "a line longer than --max-line-bytes (65536 bytes)",
        ),
        (
            b"HTTP/1.1 200 OK\r\n",
            (b"X-Filler: " + b"y" * 100 + b"\r\n") * 100,
            [],
            "response headers longer than 16384 bytes",
        ),
    ],
    ids=["endless line", "endless headers"],
)
@pytest_twisted.ensureDeferred
async def test_listen_process(
    head: bytes, endless: bytes, options: list[str], message: str
) -> None:
    """twisted-sse listen -v: one clear stderr line per drop, no traceback, exit 0."""
    server = Hostile(head, endless)
    url = await server.start()
    try:
        argv = [sys.executable, "-m", "twisted_sse", "listen", url, "--timeout", "3"]
        argv += [*options, "--reconnection-time", "0", "--verbose"]
        run = await deferToThread(
            subprocess.run,
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=_environment(),
        )
    finally:
        await server.stop()
    assert (run.returncode, run.stdout) == (0, ""), run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert 1 <= len(lines) <= 3, run.stderr
    for line in lines:
        assert line.startswith(f"twisted-sse: {message}; reconnecting in "), line
    assert 1 <= len(server.connections) <= 3


@pytest.fixture
def tls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    """A key and certificate for 127.0.0.1, which the default agent trusts."""
    key, cert = self_signed(tmp_path)
    trust = Certificate.loadPEM(cert.read_bytes())
    monkeypatch.setattr(
        _agent,
        "BrowserLikePolicyForHTTPS",
        lambda: BrowserLikePolicyForHTTPS(trustRoot=trust),
    )
    return key, cert


@pytest_twisted.ensureDeferred
async def test_https_stream(tls: tuple[Path, Path]) -> None:
    """Over https the stream reads through the head counter as over http."""
    server = Hostile(SSE_HEAD + b"data: hello\n\n", tls=tls)
    client = Client(await server.start())
    try:
        await wait_until(lambda: bool(client.events))
        assert client.events[0].data == "hello"
    finally:
        client.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_https_endless_headers(tls: tuple[Path, Path]) -> None:
    """Over https, response headers without end are dropped at the cap too."""
    server = Hostile(
        b"HTTP/1.1 200 OK\r\n", (b"X-Filler: " + b"y" * 100 + b"\r\n") * 100, tls=tls
    )
    client = Client(await server.start())
    try:
        await wait_until(lambda: bool(client.errors))
        messages = {str(error) for error in limit_errors(client)}
        assert messages == {"response headers longer than 16384 bytes"}
        await wait_until(lambda: all(c.lost for c in server.connections))
    finally:
        client.close()
        await server.stop()
