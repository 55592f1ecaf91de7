"""
Publish events to a running hub from somewhere else: another process (over
HTTP, blocking or with treq) or another thread of the server's own process.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import treq
from twisted.internet.interfaces import IReactorFromThreads

from twisted_sse import Event, Hub, IBroker, publish_from_thread


def publish_blocking(
    base_url: str, channel: str, token: str, data: str, event: str | None = None
) -> str:
    """
    Publish from any Python program (a Django view, a cron job, a script)
    with the standard library.  Blocks until the server has stored the event.

    :returns: The event's id.
    :raises urllib.error.HTTPError: if the server refuses it (401, 413, 503, ...).
    """
    body = {"data": data} if event is None else {"data": data, "event": event}
    request = urllib.request.Request(
        f"{base_url}/channels/{channel}",
        data=json.dumps(body).encode("utf-8"),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["id"])


async def publish(
    base_url: str,
    channel: str,
    token: str,
    data: str,
    event: str | None = None,
    *,
    http: Any = treq,
) -> str:
    """
    Publish from a Twisted program, without blocking its reactor.

    :param http: The HTTP client: ``treq`` itself, or a
        ``treq.testing.StubTreq`` in tests.
    :returns: The event's id.
    :raises RuntimeError: if the server refuses it.
    """
    body = {"data": data} if event is None else {"data": data, "event": event}
    response = await http.post(
        f"{base_url}/channels/{channel}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )
    answer = await response.json()
    if response.code != 200:
        raise RuntimeError(f"publishing failed ({response.code}): {answer['error']}")
    return str(answer["id"])


async def announce(hub: Hub, text: str) -> str:
    """Publish a headline from code running in the hub's own process."""
    return await hub.publish("news", Event(event="headline", data=text))


def report_progress(reactor: IReactorFromThreads, broker: IBroker, done: int) -> str:
    """
    Publish from a worker thread of the server's own process (never from the
    reactor thread: it would deadlock).  Blocks the worker until the broker
    has given the event its id.
    """
    event = Event(event="progress", data=json.dumps({"done": done}))
    return publish_from_thread(reactor, broker, "jobs", event)
