"""
Redis for the tests: whether one is reachable (skip, or fail when
``TWISTED_SSE_REQUIRE_REDIS=1``), a tiny blocking client that does not use
twisted_sse (for set-up, clean-up and as a "foreign publisher"), and private
``redis-server`` processes that the fault tests kill and restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from types import TracebackType
from typing import Union

#: Where the shared Redis of the tests is.  Tests use their own database
#: number and key prefix, and delete only their own keys.
REDIS_HOST = os.environ.get("TWISTED_SSE_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("TWISTED_SSE_REDIS_PORT", "6379"))
REDIS_DB = int(os.environ.get("TWISTED_SSE_REDIS_DB", "13"))
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

#: A RESP2 reply: bytes, str (status), int, None, a list, or an error.
Reply = Union[bytes, str, int, None, list["Reply"], "RedisReplyError"]


class RedisReplyError(Exception):
    """Redis answered an error."""


def required() -> bool:
    """Whether a missing Redis must fail the tests instead of skipping them."""
    return os.environ.get("TWISTED_SSE_REQUIRE_REDIS") == "1"


def unavailable_reason() -> str | None:
    """Why the shared Redis cannot be used, or ``None`` if it can."""
    try:
        reply = command(REDIS_PORT, "PING", host=REDIS_HOST, timeout=2.0)
    except (OSError, RedisReplyError) as error:
        return f"no Redis at {REDIS_HOST}:{REDIS_PORT} ({error})"
    if reply != "PONG":
        return f"Redis at {REDIS_HOST}:{REDIS_PORT} answered PING with {reply!r}"
    version = command(REDIS_PORT, "INFO", "server", host=REDIS_HOST)
    assert isinstance(version, bytes)
    for line in version.decode().splitlines():
        if line.startswith("redis_version:"):
            major = int(line.split(":", 1)[1].split(".")[0])
            if major < 7:
                return f"Redis at {REDIS_HOST}:{REDIS_PORT} is older than 7.0"
    return None


def server_unavailable_reason() -> str | None:
    """Why private ``redis-server`` processes cannot be started, or ``None``."""
    if not os.path.exists(REDIS_SERVER):
        return f"no redis-server binary ({REDIS_SERVER})"
    return None


def unique_prefix() -> str:
    """A key prefix no other test (or person) uses."""
    return f"sse-test-{uuid.uuid4().hex[:12]}:"


def _encode(arg: str | bytes | int) -> bytes:
    if isinstance(arg, bytes):
        return arg
    return str(arg).encode("utf-8")


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self.buffer += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size + 2:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size + 2 :]
        return data

    def reply(self) -> Reply:
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.exactly(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise ValueError(f"unexpected RESP line {line!r}")


def command(
    port: int,
    *args: str | bytes | int,
    host: str = "127.0.0.1",
    db: int = 0,
    password: str | None = None,
    timeout: float = 5.0,
) -> Reply:
    """
    Run one command on a fresh connection (blocking: set-up and clean-up
    only, or a quick foreign publish on 127.0.0.1).

    :raises RedisReplyError: when Redis answers an error.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        commands: list[tuple[str | bytes | int, ...]] = []
        if password is not None:
            commands.append(("AUTH", password))
        if db:
            commands.append(("SELECT", db))
        commands.append(args)
        for parts in commands:
            payload = b"*%d\r\n" % len(parts)
            for part in parts:
                data = _encode(part)
                payload += b"$%d\r\n%s\r\n" % (len(data), data)
            sock.sendall(payload)
        reader = _Reader(sock)
        replies = [reader.reply() for _ in commands]
    for reply in replies:
        if isinstance(reply, RedisReplyError):
            raise reply
    return replies[-1]


def delete_prefix(port: int, db: int, prefix: str, host: str = "127.0.0.1") -> None:
    """Delete every key that starts with ``prefix`` (and nothing else)."""
    cursor = b"0"
    while True:
        reply = command(
            port, "SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000, host=host, db=db
        )
        assert isinstance(reply, list)
        cursor_reply, keys = reply
        assert isinstance(cursor_reply, bytes) and isinstance(keys, list)
        for key in keys:
            assert isinstance(key, bytes)
            command(port, "DEL", key, host=host, db=db)
        cursor = cursor_reply
        if cursor == b"0":
            return


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """
    A private ``redis-server`` on 127.0.0.1 without persistence, that a test
    may kill, freeze and start again on the same port.
    """

    def __init__(
        self, port: int | None = None, tls: tuple[str, str] | None = None
    ) -> None:
        """
        :param tls: A key and a certificate (PEM files): also listen with TLS
            on :attr:`tls_port`.
        """
        self.port = port if port is not None else free_port()
        self.tls = tls
        self.tls_port = free_port() if tls is not None else 0
        self.directory = tempfile.mkdtemp(prefix="twisted-sse-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (again) and wait until it answers PING."""
        tls: list[str] = []
        if self.tls is not None:
            key, certificate = self.tls
            tls = [
                *("--tls-port", str(self.tls_port), "--tls-auth-clients", "no"),
                *("--tls-key-file", key, "--tls-cert-file", certificate),
            ]
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                *tls,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if command(self.port, "PING", timeout=1.0) == "PONG":
                    return self
            except (OSError, RedisReplyError):
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """Kill it at once (SIGKILL): everything it held is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
        self.process = None

    def freeze(self) -> None:
        """Stop it (SIGSTOP): connections stay open, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server go on (SIGCONT)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)
