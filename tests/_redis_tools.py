"""
Redis for the tests: whether one is reachable (skip, or fail when
``TWISTED_SSE_REQUIRE_REDIS=1``), a tiny blocking client that does not use
twisted_sse (for set-up, clean-up and as a "foreign publisher"), and private
``redis-server`` processes that the fault tests kill and restart, alone, as
a Sentinel topology or as a Redis Cluster (whose slots a test can move
live).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Union
from unittest import SkipTest

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, ITransport
from zope.interface import implementer

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


def require(testcase: Any) -> None:
    """
    Skip ``testcase`` when the shared Redis cannot be used, or fail it
    when ``TWISTED_SSE_REQUIRE_REDIS=1`` (as in CI).
    """
    reason = unavailable_reason()
    if reason is not None:
        if required():
            testcase.fail(f"{reason}, and TWISTED_SSE_REQUIRE_REDIS=1")
        testcase.skipTest(reason)


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
        self,
        port: int | None = None,
        tls: tuple[str, str] | None = None,
        extra: Iterable[str] = (),
    ) -> None:
        """
        :param tls: A key and a certificate (PEM files): also listen with TLS
            on :attr:`tls_port`.
        :param extra: More command-line options (``--replicaof`` ...).
        """
        self.port = port if port is not None else free_port()
        self.extra = tuple(extra)
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
                *self.extra,
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


class Sentinel:
    """A private ``redis-server --sentinel`` on 127.0.0.1, monitoring one primary."""

    def __init__(self, service: str, primary: int, down_after_ms: int) -> None:
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="twisted-sse-sentinel-")
        self.config = os.path.join(self.directory, "sentinel.conf")
        with open(self.config, "w") as config:
            config.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {service} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                f"sentinel failover-timeout {service} 10000\n"
                f"sentinel parallel-syncs {service} 1\n"
            )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Sentinel:
        """Start and wait until it answers PING."""
        self.process = subprocess.Popen(
            [REDIS_SERVER, self.config, "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_ping(self.port, self.process, timeout)
        return self

    def kill(self) -> None:
        """Kill it (SIGKILL) and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _wait_ping(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if command(port, "PING", timeout=1.0) == "PONG":
                return
        except (OSError, RedisReplyError):
            pass
        if process.poll() is not None:
            break
        time.sleep(0.02)
    raise AssertionError(f"redis-server did not start on port {port}")


class SentinelTopology:
    """
    A primary, one replica and three sentinels, each a private process on
    127.0.0.1 and a free port; torn down (killed, directories removed) on
    exit.

    :ivar service: The name the sentinels monitor the primary under.
    """

    def __init__(self, service: str = "sse", down_after_ms: int = 1000) -> None:
        self.service = service
        self.primary = RedisServer()
        self.replica = RedisServer(
            extra=("--replicaof", "127.0.0.1", str(self.primary.port))
        )
        self.sentinels = [
            Sentinel(service, self.primary.port, down_after_ms) for _ in range(3)
        ]

    def url(self, db: int = 0) -> str:
        """The ``redis+sentinel://`` URL of the topology."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/{db}"

    def master(self) -> tuple[str, int] | None:
        """Where the first sentinel that answers says the primary is."""
        for sentinel in self.sentinels:
            try:
                reply = command(
                    sentinel.port,
                    "SENTINEL",
                    "get-master-addr-by-name",
                    self.service,
                    timeout=1.0,
                )
            except (OSError, RedisReplyError):
                continue
            if isinstance(reply, list) and len(reply) == 2:
                host, port = reply
                assert isinstance(host, bytes) and isinstance(port, bytes)
                return host.decode(), int(port)
        return None

    def start(self, timeout: float = 20.0) -> SentinelTopology:
        """
        Start every process, and wait until the replica is in sync and
        every sentinel knows the replica and the other sentinels.
        """
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._settled():
                return self
            time.sleep(0.1)
        raise AssertionError("the Sentinel topology did not settle")

    def _settled(self) -> bool:
        info = command(self.replica.port, "INFO", "replication")
        assert isinstance(info, bytes)
        if b"master_link_status:up" not in info:
            return False
        for sentinel in self.sentinels:
            reply = command(sentinel.port, "SENTINEL", "master", self.service)
            assert isinstance(reply, list)
            fields = dict(zip(reply[::2], reply[1::2], strict=True))
            if fields.get(b"num-slaves") != b"1":
                return False
            if fields.get(b"num-other-sentinels") != b"2":
                return False
        return True

    def __enter__(self) -> SentinelTopology:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill every process and remove their directories."""
        for sentinel in self.sentinels:
            sentinel.kill()
        for server in (self.primary, self.replica):
            server.kill()
            shutil.rmtree(server.directory, ignore_errors=True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def cluster_unavailable_reason() -> str | None:
    """Why a private Redis Cluster cannot be made, or ``None``."""
    reason = server_unavailable_reason()
    if reason is None and not os.path.exists(REDIS_CLI):
        reason = f"no redis-cli binary ({REDIS_CLI})"
    return reason


class ClusterTopology:
    """
    A Redis Cluster of private ``redis-server --cluster-enabled yes``
    processes on 127.0.0.1 (free ports, their own directories, no
    persistence), joined by ``redis-cli --cluster create``; torn down
    (killed, directories removed) on exit.

    :ivar nodes: The servers, primaries first as ``redis-cli`` was given
        them (it may choose otherwise with replicas: ask :meth:`owner`).
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 5000,
        tls: tuple[str, str] | None = None,
    ) -> None:
        """
        :param primaries: How many primaries share the slots (3 at least).
        :param replicas: How many replicas each primary has.
        :param node_timeout_ms: ``cluster-node-timeout``: how long a node
            may not answer before it is deemed failing.
        :param tls: A key and a self-signed certificate (PEM files): every
            node also listens with TLS (``tls_port``), and the cluster bus
            and replication speak TLS; ``CLUSTER SLOTS`` asked over TLS
            names the TLS ports.
        """
        if primaries < 3:
            raise ValueError("Redis Cluster needs 3 primaries at least")
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        for _ in range(primaries * (1 + replicas)):
            self.nodes.append(
                RedisServer(
                    extra=(
                        *("--cluster-enabled", "yes"),
                        # The bus port is port + 10000 unless told: a free
                        # port above 55535 would have none.
                        *("--cluster-port", str(free_port())),
                        *("--cluster-config-file", "nodes.conf"),
                        *("--cluster-node-timeout", str(node_timeout_ms)),
                        # A replica's first sync at once, not after the
                        # default 5 s wait for more replicas.
                        *("--repl-diskless-sync-delay", "0"),
                        *(
                            ()
                            if tls is None
                            else (
                                *("--tls-cluster", "yes"),
                                *("--tls-replication", "yes"),
                                *("--tls-ca-cert-file", tls[1]),
                            )
                        ),
                    ),
                    tls=tls,
                )
            )

    @property
    def ports(self) -> list[int]:
        """The ports of every node."""
        return [node.port for node in self.nodes]

    def url(self) -> str:
        """The ``redis+cluster://`` URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def tls_url(self, ca_certs: str) -> str:
        """The ``rediss+cluster://`` URL of the nodes' TLS ports."""
        seeds = ",".join(f"127.0.0.1:{node.tls_port}" for node in self.nodes)
        return f"rediss+cluster://{seeds}?ssl_ca_certs={ca_certs}"

    def start(self, timeout: float = 30.0) -> ClusterTopology:
        """
        Start every node, create the cluster, and wait until every node
        says ``cluster_state:ok`` and knows every other.
        """
        try:
            for node in self.nodes:
                node.start()
            created = subprocess.run(
                [
                    REDIS_CLI,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    *("--cluster-replicas", str(self.replicas)),
                    "--cluster-yes",
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
            )
            if created.returncode != 0:
                raise AssertionError(
                    "redis-cli --cluster create failed: "
                    + created.stdout.decode(errors="replace")[-2000:]
                    + created.stderr.decode(errors="replace")[-2000:]
                )
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node says ``cluster_state:ok`` and knows all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._settled():
                return
            time.sleep(0.05)
        raise AssertionError("the Redis Cluster did not settle")

    def _settled(self) -> bool:
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                info = command(node.port, "CLUSTER", "INFO", timeout=1.0)
                nodes = command(node.port, "CLUSTER", "NODES", timeout=1.0)
            except (OSError, RedisReplyError):
                return False
            assert isinstance(info, bytes) and isinstance(nodes, bytes)
            if b"cluster_state:ok" not in info:
                return False
            lines = nodes.decode().strip().splitlines()
            if len(lines) != len(self.nodes):
                return False
            if any(" handshake" in line or "connected" not in line for line in lines):
                return False
            if b"role:slave" in (role := self._replication(node.port)) and (
                b"master_link_status:up" not in role
            ):
                # A replica that never synced cannot be promoted.
                return False
        return True

    @staticmethod
    def _replication(port: int) -> bytes:
        try:
            reply = command(port, "INFO", "replication", timeout=1.0)
        except (OSError, RedisReplyError):
            return b""
        return reply if isinstance(reply, bytes) else b""

    def slots(self, port: int | None = None) -> list[tuple[int, int, int]]:
        """The slot ranges and the port of their primary, as a node says."""
        asked = port if port is not None else self._live_port()
        reply = command(asked, "CLUSTER", "SLOTS")
        assert isinstance(reply, list)
        ranges: list[tuple[int, int, int]] = []
        for item in reply:
            assert isinstance(item, list)
            start, end, primary = item[0], item[1], item[2]
            assert isinstance(start, int) and isinstance(end, int)
            assert isinstance(primary, list) and isinstance(primary[1], int)
            ranges.append((start, end, primary[1]))
        return sorted(ranges)

    def primaries(self) -> list[int]:
        """The ports of the primaries that own slots, in slot order."""
        ports: list[int] = []
        for _, _, port in self.slots():
            if port not in ports:
                ports.append(port)
        return ports

    def owner(self, slot: int) -> int:
        """The port of the primary that owns ``slot``."""
        for start, end, port in self.slots():
            if start <= slot <= end:
                return port
        raise AssertionError(f"no primary owns slot {slot}")

    def key_slot(self, key: str | bytes) -> int:
        """``CLUSTER KEYSLOT key``, as a node computes it."""
        slot = command(self._live_port(), "CLUSTER", "KEYSLOT", key)
        assert isinstance(slot, int)
        return slot

    def node_id(self, port: int) -> str:
        """The cluster id of the node on ``port`` (``CLUSTER MYID``)."""
        reply = command(port, "CLUSTER", "MYID")
        assert isinstance(reply, bytes)
        return reply.decode()

    def migration(self, slot: int, target: int, batch: int = 10) -> SlotMigration:
        """
        A live move of ``slot`` from its owner to the primary on port
        ``target``, step by step (see :class:`SlotMigration`).
        """
        return SlotMigration(self, slot, self.owner(slot), target, batch)

    def move_slot(self, slot: int, target: int, batch: int = 10) -> int:
        """
        Move ``slot`` to the primary on port ``target`` at once (every
        step of :meth:`migration`); the number of keys moved.
        """
        return self.migration(slot, target, batch).run()

    def _live_port(self) -> int:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                return node.port
        raise AssertionError("no node of the cluster runs")

    def __enter__(self) -> ClusterTopology:
        return self.start()

    def stop(self) -> None:
        """Kill every node and remove their directories (again is harmless)."""
        for node in self.nodes:
            try:
                node.kill()
            finally:
                shutil.rmtree(node.directory, ignore_errors=True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class SlotMigration:
    """
    One slot moved live from a primary to another, as ``redis-cli
    --cluster reshard`` does, in steps a test can interleave with its
    commands: :meth:`begin` (``CLUSTER SETSLOT IMPORTING`` on the target,
    ``MIGRATING`` on the source: the source then answers ``ASK`` for the
    slot's keys it no longer has), :meth:`step` (``MIGRATE`` a batch of
    keys) until it returns 0, and :meth:`finish` (``CLUSTER SETSLOT
    NODE`` on the target, the source and every other node: they answer
    ``MOVED`` from then on).
    """

    def __init__(
        self,
        topology: ClusterTopology,
        slot: int,
        source: int,
        target: int,
        batch: int = 10,
    ) -> None:
        if source == target:
            raise ValueError(f"slot {slot} is on port {target} already")
        self.topology = topology
        self.slot = slot
        self.source = source
        self.target = target
        self.batch = batch
        self.source_id = topology.node_id(source)
        self.target_id = topology.node_id(target)
        #: Keys moved so far.
        self.moved = 0

    def begin(self) -> None:
        """Mark the slot importing on the target and migrating on the source."""
        command(
            self.target, "CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source_id
        )
        command(
            self.source, "CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target_id
        )

    def step(self) -> int:
        """``MIGRATE`` up to a batch of the slot's keys; how many (0: none left)."""
        keys = command(self.source, "CLUSTER", "GETKEYSINSLOT", self.slot, self.batch)
        assert isinstance(keys, list)
        if not keys:
            return 0
        moved = [key for key in keys if isinstance(key, bytes)]
        command(
            self.source,
            "MIGRATE",
            "127.0.0.1",
            self.target,
            "",
            0,
            5000,
            "KEYS",
            *moved,
        )
        self.moved += len(moved)
        return len(moved)

    def finish(self) -> None:
        """Give the slot to the target, telling every primary."""
        others = [
            port
            for port in self.topology.ports
            if port not in (self.source, self.target)
        ]
        for port in [self.target, self.source, *others]:
            try:
                command(port, "CLUSTER", "SETSLOT", self.slot, "NODE", self.target_id)
            except RedisReplyError:
                # A replica refuses SETSLOT; it learns from its primary.
                if port in (self.source, self.target):
                    raise

    def run(self) -> int:
        """Every step; the number of keys moved."""
        self.begin()
        while self.step():
            pass
        self.finish()
        return self.moved


# A fake Redis, for unit tests of the broker's logic


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(number: int) -> str:
    """``number`` in base 36, as the Redis broker writes its epochs."""
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = _DIGITS[digit] + text
        if not number:
            return text


class _FakeStream:
    """A Redis stream: entries in id order, and what XINFO STREAM tells."""

    def __init__(self) -> None:
        self.entries: list[tuple[tuple[int, int], list[bytes]]] = []
        self.last_generated = (0, 0)
        self.entries_added = 0
        self.max_deleted = (0, 0)

    def add(self, now_ms: int, fields: list[bytes], maxlen: int) -> tuple[int, int]:
        ms, seq = self.last_generated
        new = (ms, seq + 1) if now_ms <= ms else (now_ms, 0)
        self.entries.append((new, fields))
        self.last_generated = new
        self.entries_added += 1
        # MAXLEN ~ keeps at least maxlen; the fake keeps exactly that many.
        del self.entries[: max(0, len(self.entries) - maxlen)]
        return new

    def after(self, position: tuple[int, int]) -> list[Any]:
        return [
            [_format(entry_id), list(fields)]
            for entry_id, fields in self.entries
            if entry_id > position
        ]


def _format(entry_id: tuple[int, int]) -> bytes:
    return b"%d-%d" % entry_id


def _parse(text: bytes | str) -> tuple[int, int]:
    raw = text.decode() if isinstance(text, bytes) else text
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq)


class FakeRedis:
    """
    Just enough of Redis for :class:`~twisted_sse.RedisBroker`: its
    scripts (run by sha or source, mirrored in Python, the publish log and
    the index of names included), ``ZADD``, ``XREAD BLOCK``
    (answered when an entry arrives, ``CLIENT UNBLOCK`` or the clock says
    so), ``CLIENT ID``, ``TYPE``, ``SCRIPT LOAD``.  Entry ids come from the
    clock; a restart or ``FLUSHALL`` is :meth:`flush`.

    Commands run when sent.  Their replies come at once, or, while
    :attr:`lagging`, when :meth:`answer` says, in order per connection:
    as on a network, where a reader may be behind or ahead of a replay.
    """

    def __init__(self, clock: Any) -> None:
        from twisted_sse._redis import _scripts

        self.clock = clock
        self.streams: dict[bytes, _FakeStream] = {}
        self.hashes: dict[bytes, dict[bytes, bytes]] = {}
        self.strings: dict[bytes, bytes] = {}
        #: Sorted sets whose scores are all 0 (read by name).
        self.names: dict[bytes, set[bytes]] = {}
        #: Blocked XREADs: the answer, keys, ids, count and client id.
        self.blocked: list[
            tuple[Any, list[bytes], list[tuple[int, int]], int, int]
        ] = []
        self.commands: list[tuple[Any, ...]] = []
        #: The ids the publish script gave, in order, heard or not.
        self.published: list[str] = []
        self._epochs = 0
        self._scripts = {script.sha: script for script in _scripts.SCRIPTS} | {
            script.source: script for script in _scripts.SCRIPTS
        }
        self._handlers = {
            _scripts.PUBLISH: self._publish,
            _scripts.SNAPSHOT: self._snapshot,
            _scripts.ROTATE: self._rotate,
            _scripts.REFRESH: self._refresh,
            _scripts.LOG: self._log,
            _scripts.NAMES: self._names,
            _scripts.HEADS: self._heads,
        }
        self.loaded: set[str] = set()
        #: Whether replies wait for answer().
        self.lagging = False
        #: Replies not given yet, per client: the Deferred and the result.
        self.replies: dict[int, deque[tuple[Any, Any]]] = {}
        #: Milliseconds the clock of Redis is off by.
        self.skew_ms = 0

    def load_scripts(self) -> None:
        """Load every script of the broker, as ``RedisLink`` does on connecting."""
        self.loaded.update(script.sha for script in self._handlers)

    def flush(self, skew_ms: int = 0) -> None:
        """
        Lose everything, as a restart without persistence does; on a host
        whose clock is ``skew_ms`` off, if given.
        """
        self.streams.clear()
        self.hashes.clear()
        self.strings.clear()
        self.names.clear()
        self.loaded.clear()
        self.skew_ms += skew_ms

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000) + self.skew_ms

    def _reply(self, client: int, answer: Deferred[Any], result: Any) -> Deferred[Any]:
        if self.lagging or self.replies.get(client):
            self.replies.setdefault(client, deque()).append((answer, result))
        elif isinstance(result, Exception):
            answer.errback(result)
        else:
            answer.callback(result)
        return answer

    def answer(self, client: int, count: int = 1) -> int:
        """Give ``client`` up to ``count`` of its replies; how many there were."""
        waiting = self.replies.get(client)
        given = 0
        while waiting and given < count:
            answer, result = waiting.popleft()
            given += 1
            if isinstance(result, Exception):
                answer.errback(result)
            else:
                answer.callback(result)
        return given

    def answer_all(self) -> None:
        """Give every reply, and those that follow from them."""
        self.lagging = False
        while any(self.replies.values()):
            for client in list(self.replies):
                self.answer(client, 1)

    def new_epoch(self) -> bytes:
        # Like the script's: increasing, never given twice.
        self._epochs += 1
        return base36(10**9 + self._epochs).encode()

    def epoch(self, key: bytes) -> bytes | None:
        return self.hashes.get(key + b"#epoch", {}).get(b"e")

    def _key(self, value: Any) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode()

    def execute(self, *args: Any, client: int = 0) -> Any:
        """Run one command for ``client``; a Deferred firing with its reply."""
        from twisted.internet.defer import Deferred

        def succeed(result: Any) -> Deferred[Any]:
            return self._reply(client, Deferred(), result)

        self.commands.append(args)
        name = str(args[0]).upper()
        if name in ("EVALSHA", "EVAL"):
            script = self._scripts.get(str(args[1]))
            if script is None or (name == "EVALSHA" and script.sha not in self.loaded):
                from twisted_sse._redis._protocol import RedisCommandError

                raise RedisCommandError("NOSCRIPT No matching script.")
            self.loaded.add(script.sha)
            count = int(args[2])
            keys = [self._key(key) for key in args[3 : 3 + count]]
            rest = [self._key(arg) for arg in args[3 + count :]]
            return succeed(self._handlers[script](keys, rest))
        if name == "SCRIPT":
            script = self._scripts[str(args[2])]
            self.loaded.add(script.sha)
            return succeed(script.sha.encode())
        if name == "CLIENT" and str(args[1]).upper() == "ID":
            return succeed(client)
        if name == "CLIENT":
            self.unblock(int(args[2]))
            return succeed(1)
        if name == "ZADD":
            members = self.names.setdefault(self._key(args[1]), set())
            members.update(self._key(member) for member in args[3::2])
            return succeed(len(args[2:]) // 2)
        if name == "TYPE":
            key = self._key(args[1])
            if key in self.streams:
                return succeed("stream")
            return succeed("string" if key in self.strings else "none")
        if name == "XREAD":
            index = [str(arg).upper() for arg in args].index("STREAMS")
            count = int(args[2])
            block = int(args[4])
            pairs = args[index + 1 :]
            keys = [self._key(key) for key in pairs[: len(pairs) // 2]]
            ids = [_parse(self._key(id)) for id in pairs[len(pairs) // 2 :]]
            reply = self._xread(keys, ids, count)
            if reply is not None:
                return succeed(reply)
            answer: Deferred[Any] = Deferred()
            timer = self.clock.callLater(block / 1000, self._timeout, answer)
            self.blocked.append((answer, keys, ids, count, client))
            answer.addBoth(
                lambda result: (timer.cancel() if timer.active() else None, result)[1]
            )
            return answer
        raise AssertionError(f"the fake Redis has no {args[0]!r}")

    def _xread(
        self, keys: list[bytes], ids: list[tuple[int, int]], count: int
    ) -> list[Any] | None:
        for key in keys:
            if key in self.strings:
                from twisted_sse._redis._protocol import RedisCommandError

                raise RedisCommandError("WRONGTYPE Operation against a key")
        reply = []
        for key, position in zip(keys, ids, strict=True):
            stream = self.streams.get(key)
            entries = stream.after(position)[:count] if stream else []
            if entries:
                reply.append([key, entries])
        return reply or None

    def _timeout(self, answer: Any) -> None:
        for each in list(self.blocked):
            if each[0] is answer:
                self.blocked.remove(each)
                self._reply(each[4], answer, None)

    def unblock(self, client: int) -> None:
        """End ``client``'s blocked XREAD with nothing (CLIENT UNBLOCK)."""
        for each in list(self.blocked):
            if each[4] == client:
                self.blocked.remove(each)
                self._reply(client, each[0], None)

    def disconnect(self, client: int) -> None:
        """``client``'s connection is gone: what it waits for fails."""
        from twisted_sse import BrokerUnavailable

        lost = BrokerUnavailable("lost the connection to Redis")
        waiting = [each[0] for each in self.blocked if each[4] == client]
        self.blocked = [each for each in self.blocked if each[4] != client]
        waiting += [answer for answer, _ in self.replies.pop(client, ())]
        for answer in waiting:
            answer.errback(lost)

    def _wake(self) -> None:
        blocked, self.blocked = self.blocked, []
        for each in blocked:
            answer, keys, ids, count, client = each
            try:
                reply = self._xread(keys, ids, count)
            except Exception as error:
                self._reply(client, answer, error)
                continue
            if reply is None:
                self.blocked.append(each)
            else:
                self._reply(client, answer, reply)

    def xadd(self, key: bytes, fields: list[bytes], maxlen: int = 10**9) -> bytes:
        """A foreign publisher's XADD."""
        stream = self.streams.setdefault(key, _FakeStream())
        entry_id = stream.add(self.now_ms(), fields, maxlen)
        self._wake()
        return _format(entry_id)

    # The scripts, as the Lua in twisted_sse._redis does them.

    def _publish(self, keys: list[bytes], args: list[bytes]) -> bytes:
        stream_key, meta_key = keys
        meta = self.hashes.setdefault(meta_key, {})
        logged = len(args) > 2 and args[2] == b"#log"
        fields = list(args[6:] if logged else args[2:])
        epoch = meta.get(b"e")
        if epoch is None:
            epoch = meta[b"e"] = self.new_epoch()
            fields = [b"sse-epoch", epoch, *fields]
        elif meta.pop(b"m", None) is not None:
            fields = [b"sse-epoch", epoch, *fields]
        stream = self.streams.setdefault(stream_key, _FakeStream())
        entry_id = stream.add(self.now_ms(), fields, int(args[0]))
        if logged and args[3] not in self.strings:
            log = self.streams.setdefault(args[3], _FakeStream())
            log.add(
                self.now_ms(),
                [b"c", args[4], b"e", epoch, b"i", _format(entry_id)],
                int(args[5]),
            )
        self._wake()
        event_id = epoch + b":" + _format(entry_id)
        self.published.append(event_id.decode())
        return event_id

    def _snapshot(self, keys: list[bytes], args: list[bytes]) -> list[Any]:
        stream_key, meta_key = keys
        want, after = args[1], args[2]
        count, budget = int(args[3]), int(args[4])
        meta = self.hashes.setdefault(meta_key, {})
        epoch = meta.get(b"e")
        if epoch is None:
            epoch = meta[b"e"] = self.new_epoch()
            meta[b"m"] = b"1"
        stream = self.streams.get(stream_key)
        if stream is None:
            return [epoch, meta.get(b"p"), 0, b"0-0", None, 0, 0, b"0-0", 0, []]
        entries: list[Any] = []
        more = 0
        if after and (not want or want == epoch):
            entries = stream.after(_parse(after))[:count]
            more = int(len(entries) >= count)
            size = 0
            for index, (_, fields) in enumerate(entries):
                size += sum(len(value) for value in fields)
                if size >= budget and index < len(entries) - 1:
                    del entries[index + 1 :]
                    more = 1
                    break
        first = _format(stream.entries[0][0]) if stream.entries else None
        return [
            epoch,
            meta.get(b"p"),
            1,
            _format(stream.last_generated),
            first,
            len(stream.entries),
            stream.entries_added,
            _format(stream.max_deleted),
            more,
            entries,
        ]

    def _rotate(self, keys: list[bytes], args: list[bytes]) -> bytes | None:
        meta = self.hashes.setdefault(keys[1], {})
        epoch = meta.get(b"e")
        if epoch != args[0]:
            return epoch
        new = meta[b"e"] = self.new_epoch()
        meta[b"p"] = args[0]
        meta[b"m"] = b"1"
        return new

    def _log(self, keys: list[bytes], args: list[bytes]) -> list[Any]:
        prefix, names, after, upto, count = (
            args[0],
            args[1],
            args[2],
            args[3],
            int(args[4]),
        )
        log = self.streams.get(keys[0])
        if log is None:
            return [b"0-0", None, 0, 0, None, 0, []]
        first = _format(log.entries[0][0]) if log.entries else None
        trimmed = int(log.entries_added > len(log.entries))
        present = int(bool(after) and any(e == _parse(after) for e, _ in log.entries))
        found: list[Any] = []
        end: bytes | None = None
        more = 0
        if after and count:
            page = [
                (entry, fields)
                for entry, fields in log.entries
                if _parse(after) < entry <= _parse(upto)
            ][:count]
            seen: set[bytes] = set()
            for _, fields in page:
                values = dict(zip(fields[::2], fields[1::2], strict=True))
                channel = values[b"c"]
                if channel.startswith(names) and channel not in seen:
                    seen.add(channel)
                    now = self.hashes.get(prefix + channel + b"#epoch", {}).get(b"e")
                    found.append([channel, values[b"e"], values[b"i"], now])
                    self.names.setdefault(keys[1], set()).add(channel)
            end = _format(page[-1][0]) if page else None
            more = int(len(page) >= count)
        return [_format(log.last_generated), first, trimmed, present, end, more, found]

    def _names(self, keys: list[bytes], args: list[bytes]) -> list[bytes]:
        prefix, names, after = args[0], args[1], args[2]
        count, kept = int(args[3]), int(args[4])
        index = self.names.get(keys[0], set())
        page = sorted(
            name for name in index if name.startswith(names) and name > after
        )[:count]
        if len(index) > kept:
            for name in page:
                if self.hashes.get(prefix + name + b"#epoch", {}).get(b"e") is None:
                    index.discard(name)
        return page

    def _heads(self, keys: list[bytes], args: list[bytes]) -> list[Any]:
        heads: list[Any] = []
        for index in range(0, len(keys), 2):
            epoch = self.hashes.get(keys[index + 1], {}).get(b"e")
            stream = self.streams.get(keys[index])
            last = b"0-0"
            if epoch is not None and stream is not None:
                last = _format(stream.last_generated)
            heads.append([epoch, last])
        return heads

    def _refresh(self, keys: list[bytes], args: list[bytes]) -> list[Any]:
        return [
            self.hashes.get(keys[i + 1], {}).get(b"e") for i in range(0, len(keys), 2)
        ]


#: The client ids of the fake links, as Redis's CLIENT ID gives them.
_CLIENT_IDS = itertools.count(1)


class FakeLink:
    """A ``RedisLink`` (``twisted_sse._redis._link``) on a :class:`FakeRedis`."""

    timeout = 5.0

    def __init__(
        self,
        redis: FakeRedis,
        on_ready: Any = None,
        on_lost: Any = None,
    ) -> None:
        self.redis = redis
        self.client = next(_CLIENT_IDS)
        self.ready = False
        self._on_ready = on_ready
        self._on_lost = on_lost

    def start(self) -> None:
        # As RedisLink does, the scripts are loaded first.
        self.redis.load_scripts()
        self.ready = True
        if self._on_ready is not None:
            self._on_ready()

    def stop(self) -> Any:
        from twisted.internet.defer import succeed

        self.lose()
        return succeed(None)

    def lose(self) -> None:
        """The connection is lost (Redis went away)."""
        if not self.ready:
            return
        self.ready = False
        self.redis.disconnect(self.client)
        if self._on_lost is not None:
            self._on_lost()

    def drop(self) -> None:
        self.lose()
        self.start()

    def execute(self, *args: Any, timeout: float | None = None) -> Any:
        from twisted.internet.defer import fail

        from twisted_sse import BrokerUnavailable

        if not self.ready:
            return fail(BrokerUnavailable("Redis is not connected"))
        try:
            return self.redis.execute(*args, client=self.client)
        except Exception as error:
            return fail(error)


def fake_broker(clock: Any, redis: FakeRedis, **options: Any) -> Any:
    """A started RedisBroker on ``redis``, its time from ``clock``."""
    from twisted_sse import RedisAddress, RedisBroker

    def make_link(name: str, on_ready: Any, on_lost: Any) -> Any:
        return FakeLink(redis, on_ready, on_lost)

    broker = RedisBroker.with_links(
        clock, RedisAddress("fake.invalid", 1), make_link, **options
    )
    broker.startService()
    return broker


# In-memory connections, for unit tests of the protocol and the link


class ClosingTransport:
    """
    A ``StringTransport`` that tells its protocol when it is closed (at
    once, where a reactor would on its next turn) and records
    ``TCP_NODELAY``.
    """

    def __init__(self) -> None:
        from twisted.internet.testing import StringTransport

        self._written = StringTransport()
        self.protocol: Any = None
        self.closed: str | None = None
        self.no_delay = False

    def write(self, data: bytes) -> None:
        self._written.write(data)

    def writeSequence(self, data: Any) -> None:
        self._written.writeSequence(data)

    def value(self) -> bytes:
        """All bytes written."""
        written: bytes = self._written.value()
        return written

    def clear(self) -> None:
        self._written.clear()

    def getHost(self) -> Any:
        return self._written.getHost()

    def getPeer(self) -> Any:
        return self._written.getPeer()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def loseConnection(self) -> None:
        self._close("lost", "ConnectionDone")

    def abortConnection(self) -> None:
        self._close("aborted", "ConnectionAborted")

    def _close(self, how: str, error: str) -> None:
        from twisted.internet import error as errors
        from twisted.python.failure import Failure

        if self.closed is not None:
            return
        self.closed = how
        if self.protocol is not None:
            self.protocol.connectionLost(Failure(getattr(errors, error)()))


@implementer(ITransport)
class BlockingRedis:
    """
    The broker's own connection (``RedisProtocol``: hiredis packs the
    commands and parses the replies) on a blocking socket to the shared
    Redis: each command is answered before :meth:`execute` returns, so that
    a ``SynchronousTestCase`` runs commands and scripts on the real Redis,
    without a reactor.  It is the protocol's transport.

    :ivar sent: The commands sent, in order.
    """

    def __init__(
        self, host: str = REDIS_HOST, port: int = REDIS_PORT, db: int = REDIS_DB
    ) -> None:
        from twisted.internet.task import Clock

        from twisted_sse._redis._protocol import RedisProtocol

        self.sent: list[tuple[Any, ...]] = []
        self._socket = socket.create_connection((host, port), timeout=5.0)
        # The clock times replies: they all come before execute returns.
        self.protocol = RedisProtocol(Clock())
        self.protocol.makeConnection(self)
        self.run("SELECT", db)

    def execute(self, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        """Send one command; a Deferred that has its reply (or error) already."""
        self.sent.append(args)
        return self.protocol.execute(*args, timeout=timeout)

    def run(self, *args: Any) -> Any:
        """
        Run one command; its reply.

        :raises RedisCommandError: when Redis answers an error.
        """
        from twisted.python.failure import Failure

        results: list[Any] = []
        self.execute(*args).addBoth(results.append)
        (result,) = results
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def close(self) -> None:
        """Close the connection."""
        self.protocol.close()

    # ITransport, for the protocol

    def write(self, data: bytes) -> None:
        self._socket.sendall(data)
        while self.protocol.pending:
            received = self._socket.recv(65536)
            if not received:
                raise ConnectionError("Redis closed the connection")
            self.protocol.dataReceived(received)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self._socket.close()
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def getPeer(self) -> IAddress:
        host, port = self._socket.getpeername()[:2]
        return IPv4Address("TCP", host, port)

    def getHost(self) -> IAddress:
        host, port = self._socket.getsockname()[:2]
        return IPv4Address("TCP", host, port)


def connect(protocol: Any) -> ClosingTransport:
    """Connect ``protocol`` to a new :class:`ClosingTransport`."""
    transport = ClosingTransport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return transport


def commands_in(data: bytes) -> list[list[bytes]]:
    """The commands in bytes a client wrote (RESP arrays of bulk strings)."""
    import hiredis

    reader = hiredis.Reader()
    reader.feed(data)
    commands: list[list[bytes]] = []
    while (command := reader.gets()) is not False:
        commands.append(command)
    return commands


def need(reason: str | None) -> None:
    """
    Skip the test for ``reason`` (a missing Redis or redis-server), or fail
    it when the suite must have Redis (``TWISTED_SSE_REQUIRE_REDIS=1``):
    in a pytest fixture or function, or in a trial test case.

    :raises SkipTest: for ``reason``, when Redis is not required.
    :raises AssertionError: for ``reason``, when it is.
    """
    if reason is None:
        return
    if required():
        raise AssertionError(f"{reason}, and TWISTED_SSE_REQUIRE_REDIS=1")
    raise SkipTest(reason)
