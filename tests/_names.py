"""
A name resolver and a memory reactor that uses it, for client tests over
``MemoryReactorClock`` on every Twisted the package supports: Twisted's own
``SynchronousResolver``, and ``MemoryReactorClock``'s pluggable resolver,
only came with Twisted 25.5.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer


@implementer(IHostResolution)
class _Resolution:
    """One resolution, already complete."""

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """Nothing to cancel: it completed when it began."""


@implementer(IHostnameResolver)
class Names:
    """
    Resolves every name to 127.0.0.1 at once, keeping the port, and notes
    the names and ports asked for.
    """

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        self.asked.append((hostName, portNumber))
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        resolutionReceiver.addressResolved(IPv4Address("TCP", "127.0.0.1", portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class ResolvingReactor(MemoryReactorClock):
    """A ``MemoryReactorClock`` whose names resolve through :class:`Names`."""

    def __init__(self, names: Names | None = None) -> None:
        super().__init__()
        self.names = names if names is not None else Names()
        self.nameResolver: IHostnameResolver = self.names

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        previous, self.nameResolver = self.nameResolver, resolver
        return previous
