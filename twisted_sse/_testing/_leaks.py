"""
:func:`~twisted_sse.testing.assert_no_leaks`: what must not outlive a test,
and what it checks it on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol
from unittest import TestCase

from twisted.internet.task import Clock

from .._heartbeat import Heartbeat
from .._presence import LocalPresence
from .._registry import StreamRegistry
from .._resource import StreamResource

if TYPE_CHECKING:
    from ._client import SSETestClient

__all__ = ["Checkable", "SubscriptionCounter", "assert_no_leaks"]

#: What :func:`assert_no_leaks` can check for open streams and timers.
Checkable = StreamResource | StreamRegistry | Heartbeat


class SubscriptionCounter(Protocol):
    """
    A broker as :func:`assert_no_leaks` sees it (a
    ``MemoryBroker`` is one): it can count the subscribers of its channels.
    """

    def channel_names(self) -> list[str]:
        """The channels that have history or subscribers."""

    def subscriber_count(self, channel: str) -> int:
        """How many subscriptions ``channel`` has."""


def assert_no_leaks(
    testcase: TestCase | None = None,
    *,
    clock: Clock | None = None,
    resources: Iterable[Checkable] = (),
    brokers: Iterable[SubscriptionCounter] = (),
    clients: Iterable[SSETestClient] = (),
) -> None:
    """
    Fail if a stream, a timer, a subscription or a connection outlived the
    test.

    It checks that every resource (or registry) has no open stream and its
    heartbeat timer is stopped, that ``clock`` has no pending delayed call (a
    timer a handler forgot to stop, a subscription that keeps a
    :class:`~twisted.internet.task.LoopingCall` going), that no broker has a
    subscriber left, and that every client has no open connection or
    malformed response.  Nothing is cleaned up, so the state is there to
    look at.

    :param testcase: The running test: a leak is reported with its ``fail``,
        so it is its ``failureException``.  With ``None``,
        :class:`AssertionError` is raised.
    :param clock: The clock the streams run on.
    :param resources: :class:`~twisted_sse.StreamResource` (such as
        :class:`~twisted_sse.EventStreamResource`),
        :class:`~twisted_sse.StreamRegistry` or
        :class:`~twisted_sse.Heartbeat` objects to check.
    :param brokers: Brokers whose channels must have no subscriber left (any
        object with ``channel_names()`` and ``subscriber_count(channel)``),
        and, if they have ``watch_prefixes()`` (as ``MemoryBroker`` does),
        no watch of a pattern left, and if they keep presence in a
        :class:`~twisted_sse.LocalPresence` named ``present``, no connection
        still present nor presence followed.
    :param clients: Clients whose connections must all be closed; their
        pending connection closes are delivered first.
    :raises AssertionError: (or ``testcase.failureException``) listing every
        leak found.
    """
    clients = list(clients)
    for client in clients:
        client.flush()
    problems: list[str] = []
    for resource in resources:
        if isinstance(resource, (StreamResource, StreamRegistry)) and resource.streams:
            problems.append(
                f"{len(resource.streams)} stream(s) still open in {resource!r}"
            )
        heartbeat = resource.heartbeat if isinstance(resource, StreamResource) else None
        if isinstance(resource, Heartbeat):
            heartbeat = resource
        if heartbeat is not None and heartbeat.running:
            problems.append(f"heartbeat timer still running: {heartbeat!r}")
    for broker in brokers:
        for channel in broker.channel_names():
            count = broker.subscriber_count(channel)
            if count:
                problems.append(
                    f"{count} subscriber(s) left on channel {channel!r} of {broker!r}"
                )
        # Optional: a broker keeping presence in a LocalPresence.
        present = getattr(broker, "present", None)
        if isinstance(present, LocalPresence):
            problems.extend(
                f"{present.count(channel)} connection(s) still present on "
                f"channel {channel!r} of {broker!r}"
                for channel in present.channels()
            )
            problems.extend(
                f"presence still followed on channel {channel!r} of {broker!r}"
                for channel in present.followed()
            )
        # Optional: a broker that watches prefixes for patterns.
        watch_prefixes = getattr(broker, "watch_prefixes", None)
        if watch_prefixes is not None:
            problems.extend(
                f"{count} watch(es) left on prefix {prefix!r} of {broker!r}"
                for prefix, count in watch_prefixes().items()
            )
    if clock is not None:
        problems.extend(
            f"pending delayed call: {call!r}"
            for call in clock.getDelayedCalls()
            if call.active()
        )
    for client in clients:
        for response in client.responses:
            if response.connected:
                problems.append(f"connection still open: {response!r}")
            if response.protocol_error is not None:
                problems.append(
                    f"malformed response to {response.method} {response.path}: "
                    f"{response.protocol_error}"
                )
    if problems:
        message = "Leaked after the test:\n" + "\n".join(f"- {p}" for p in problems)
        if testcase is not None:
            testcase.fail(message)
        raise AssertionError(message)
