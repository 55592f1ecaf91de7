"""
How long an :class:`~twisted_sse.EventSource` waits before it reconnects.

After a stream that delivered an event, the reconnection time (the
server's ``retry:``).  After *n* failed attempts in a row, ``min(max_backoff,
max(reconnection_time, 1 s) * 2**n)`` less a random part of up to a quarter,
never less than the reconnection time: a server that answers ``retry: 0``
and hangs up at once gets a connection after 2 s, 4 s, 8 s... and not a
storm, and clients dropped together do not come back together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

__all__ = ["BACKOFF_FLOOR", "JITTER", "reconnect_delay"]

#: Seconds from which the wait after the n-th failed attempt in a row
#: doubles at least, so that a server sending ``retry: 0`` cannot make a
#: client that fails to connect spin.
BACKOFF_FLOOR: Final = 1.0

#: The largest fraction of the backoff taken off at random, so that clients
#: dropped together do not come back together.
JITTER: Final = 0.25


def reconnect_delay(
    reconnection_time: int,
    failures: int,
    max_backoff: float,
    random: Callable[[], float],
) -> float:
    """
    Seconds to wait before the next connection.

    :param reconnection_time: The reconnection time, in milliseconds.
    :param failures: Failed attempts in a row.
    :param max_backoff: The most seconds the backoff waits, unless the
        reconnection time is longer.
    :param random: Returns a float in [0, 1); called only after a failure.
    """
    base = reconnection_time / 1000
    if not failures:
        return base
    cap = max(max_backoff, base)
    backoff = min(cap, max(base, BACKOFF_FLOOR) * 2.0**failures)
    return max(base, backoff * (1 - JITTER * random()))
