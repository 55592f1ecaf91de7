"""
What wakes a process's reader on Redis Cluster: :class:`ShardWatch`,
sharded pub/sub (``SSUBSCRIBE``, Redis 7) on the streams the reader
follows.

On a single Redis the reader blocks in one ``XREAD`` over every stream it
follows; a cluster refuses a command whose keys lie in several slots, so
that is not possible there.  Instead the publish script ``SPUBLISH``\\ es
the new entry's id on the shard channel named as the stream's key (the
same slot, so the same node), and each process subscribes, on one
connection per primary, to the shard channels of the streams it follows.
A message only marks the channel to read: the reader then reads the
stream from the last id it handled, so a message lost (a connection
dropped, a slot moved) loses nothing; the subscription's confirmation
marks it too, so entries added before it are read.

Slots move (resharding, a failover): the node then ends the subscriptions
of the slot (an unasked ``sunsubscribe``), and this watch subscribes again
on the node the refreshed slot map names.  Each connection is pinged every
``ping_interval`` seconds; one with a ping unanswered at the next is
dropped and made again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ._address import RedisAddress
from ._cluster import ClusterLink
from ._link import RedisLink
from ._protocol import RedisCommandError, Reply

__all__ = ["MakeNode", "ShardWatch"]

_log = Logger()

#: Seconds between two pings of a subscribed connection.
PING_INTERVAL = 5.0

#: Makes the link to one node: its address, client name, ``on_ready`` and
#: ``on_lost``.
MakeNode = Callable[
    [RedisAddress, str, Callable[[], object] | None, Callable[[], object] | None],
    RedisLink,
]


@define(eq=False)
class _Node:
    """The subscriber connection to one primary."""

    where: tuple[str, int]
    link: RedisLink | None = None
    #: Keys ``SSUBSCRIBE`` was sent for on the current connection.
    asked: set[str] = field(factory=set)
    #: Those of them the node confirmed.
    confirmed: set[str] = field(factory=set)
    #: Those asked before the last ping and not confirmed since.
    late: set[str] = field(factory=set)
    #: Whether a ``PING`` waits for its ``pong``.
    pinged: bool = False


class ShardWatch:
    """
    The shard channels of the followed streams, subscribed on the nodes
    that own them; ``notify`` is called with a stream's key when it may
    have new entries.

    :param clock: Times the pings.
    :param cluster: The link whose slot map says which node owns a key
        (its map changes are followed).
    :param address: The cluster's address (login, TLS) to make node
        addresses from.
    :param make_node: Makes the link to one node (no scripts needed).
    :param notify: Called with a key (``str``) to read.
    :param ping_interval: Seconds between two pings of a connection.
    """

    def __init__(
        self,
        clock: IReactorTime,
        cluster: ClusterLink,
        address: RedisAddress,
        make_node: MakeNode,
        notify: Callable[[str], object],
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self._clock = clock
        self._cluster = cluster
        self._address = address
        self._make_node = make_node
        self._notify = notify
        self.ping_interval = ping_interval
        #: The keys followed, each with the node it is subscribed on.
        self._keys: dict[str, _Node | None] = {}
        self._nodes: dict[tuple[str, int], _Node] = {}
        self._ping_call: IDelayedCall | None = None
        self.running = False
        cluster.on_map(self._reconcile)

    @property
    def ready(self) -> bool:
        """Whether every node that owns a followed key is subscribed to."""
        return self.running and all(
            node.link is not None and node.link.ready for node in self._nodes.values()
        )

    @property
    def keys(self) -> frozenset[str]:
        """The keys followed."""
        return frozenset(self._keys)

    def start(self) -> None:
        """Start (subscribing as keys are added)."""
        self.running = True
        self._reconcile()
        if self._ping_call is None:
            self._ping_call = self._clock.callLater(self.ping_interval, self._ping)

    def stop(self) -> list[Any]:
        """Stop pinging and close every connection; the Deferreds of it."""
        self.running = False
        call, self._ping_call = self._ping_call, None
        if call is not None and call.active():
            call.cancel()
        nodes, self._nodes = self._nodes, {}
        return [node.link.stop() for node in nodes.values() if node.link is not None]

    def add(self, key: str) -> None:
        """Follow ``key``: subscribe to it on its node."""
        if key not in self._keys:
            self._keys[key] = None
            self._place(key)

    def remove(self, key: str) -> None:
        """Stop following ``key``."""
        node = self._keys.pop(key, None)
        if node is not None:
            self._unsubscribe(node, key)

    # Placing the keys

    def _place(self, key: str) -> None:
        """Subscribe to ``key`` on the node that owns it now."""
        if not self.running:
            return
        owner = self._cluster.owner(key)
        if owner is None:
            return  # no map yet: placed when there is one
        node = self._node(owner)
        current = self._keys.get(key)
        if current is node:
            return
        if current is not None:
            self._unsubscribe(current, key)
        self._keys[key] = node
        self._subscribe(node, key)

    def _node(self, where: tuple[str, int]) -> _Node:
        node = self._nodes.get(where)
        if node is None:
            node = self._nodes[where] = _Node(where)
            node.link = self._make_node(
                self._address.node(*where),
                "twisted_sse:pubsub",
                lambda: self._ready(node),
                lambda: self._lost(node),
            )
            node.link.start()
        return node

    def _reconcile(self) -> None:
        """The slot map changed: move keys, drop nodes that own none."""
        if not self.running:
            return
        owners = set(self._cluster.nodes())
        # A connection to every primary, made before keys need it: adding
        # a key must not make the watch unready while one connects.
        for where in owners:
            self._node(where)
        for key in list(self._keys):
            self._place(key)
        for where in list(self._nodes):
            if where not in owners and all(
                node is not self._nodes[where] for node in self._keys.values()
            ):
                node = self._nodes.pop(where)
                if node.link is not None:
                    node.link.stop()

    def _subscribe(self, node: _Node, key: str) -> None:
        link = node.link
        protocol = link.protocol if link is not None else None
        if protocol is not None and key not in node.asked:
            node.asked.add(key)
            protocol.send("SSUBSCRIBE", key)

    def _unsubscribe(self, node: _Node, key: str) -> None:
        link = node.link
        protocol = link.protocol if link is not None else None
        node.confirmed.discard(key)
        if protocol is not None and key in node.asked:
            node.asked.discard(key)
            protocol.send("SUNSUBSCRIBE", key)

    # A node's connection

    def _ready(self, node: _Node) -> None:
        link = node.link
        protocol = link.protocol if link is not None else None
        if protocol is None or self._nodes.get(node.where) is not node:
            return
        node.asked, node.confirmed, node.late = set(), set(), set()
        node.pinged = False
        protocol.listen(lambda message: self._message(node, message))
        for key, placed in self._keys.items():
            if placed is node:
                self._subscribe(node, key)

    def _lost(self, node: _Node) -> None:
        # Messages may have been lost: each key is read again once its
        # subscription is confirmed on the new connection.
        node.asked, node.confirmed, node.late = set(), set(), set()

    def _message(self, node: _Node, message: Reply) -> None:
        if isinstance(message, RedisCommandError):
            # Most likely MOVED: the map is stale; the refreshed map
            # places the keys again.
            _log.debug(
                "A sharded subscription was refused: {error}", error=str(message)
            )
            self._cluster.refresh()
            return
        if message == b"PONG":
            # The answer to a ping on a connection with no subscription.
            node.pinged = False
            return
        if not isinstance(message, list) or len(message) < 2:
            return
        kind, channel = message[0], message[1]
        if kind == b"pong":
            node.pinged = False
            return
        if not isinstance(channel, bytes):
            return
        key = channel.decode("utf-8", "replace")
        if kind == b"smessage" or kind == b"ssubscribe":
            if self._keys.get(key) is node:
                if kind == b"ssubscribe":
                    node.confirmed.add(key)
                self._notify(key)
        elif kind == b"sunsubscribe":
            asked = key in node.asked
            node.asked.discard(key)
            node.confirmed.discard(key)
            if asked and self._keys.get(key) is node:
                # Not ours to end: the slot moved away from this node.
                self._keys[key] = None
                self._cluster.refresh()
                self._place(key)

    def _ping(self) -> None:
        self._ping_call = self._clock.callLater(self.ping_interval, self._ping)
        self._retry_late()
        for node in self._nodes.values():
            link = node.link
            protocol = link.protocol if link is not None else None
            if protocol is None:
                continue
            if node.pinged:
                _log.warn(
                    "Redis at {node} did not answer a ping on the sharded "
                    "subscriptions; reconnecting",
                    node="{}:{}".format(*node.where),
                )
                protocol.abort("Redis did not answer a ping")
                continue
            node.pinged = True
            protocol.send("PING")

    def _retry_late(self) -> None:
        """
        Subscribe again to the keys a node has not confirmed since the
        last ping (it refused them, most likely with ``MOVED``, and the
        slot map may have been stale): on the node the map names now.
        """
        late = [
            key
            for node in list(self._nodes.values())
            for key in node.late
            if self._keys.get(key) is node and key not in node.confirmed
        ]
        for node in self._nodes.values():
            node.late = node.asked - node.confirmed
        if late:
            self._cluster.refresh()
            for key in late:
                placed = self._keys.get(key)
                if placed is not None:
                    placed.asked.discard(key)
                    self._keys[key] = None
                self._place(key)
