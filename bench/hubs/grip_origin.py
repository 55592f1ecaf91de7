"""
The GRIP origin behind Pushpin in ``bench/hub.py``: it answers every request
with ``Grip-Hold: stream`` and ``Grip-Channel: CHANNEL``, so that Pushpin
keeps the subscriber's response open and writes to it whatever is published
on that channel.  The body, ``retry: 1000``, is the first frame the
subscriber gets, as from ``twistd sse``.

    python bench/hubs/grip_origin.py PORT [CHANNEL]

It listens on 127.0.0.1, keeps connections alive (zurl reuses them) and
runs on asyncio alone, so that it starts with any Python 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

#: What every subscriber gets first, before any published event.
FIRST_FRAME = b"retry: 1000\n\n"
#: The longest request head read; a longer one closes the connection.
MAX_HEAD = 65536


def response(channel: str) -> bytes:
    """The answer to every request: hold the stream on ``channel``."""
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\n"
        b"Grip-Hold: stream\r\n"
        b"Grip-Channel: " + channel.encode("ascii") + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(FIRST_FRAME) + FIRST_FRAME
    )


def body_length(head: bytes) -> int:
    """The ``Content-Length`` of a request head (0 without one)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


class Origin(asyncio.Protocol):
    """One connection from zurl: a response per request, in order."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.pending = b""
        self.skip = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.pending += data
        while True:
            if self.skip:
                dropped = min(self.skip, len(self.pending))
                self.pending = self.pending[dropped:]
                self.skip -= dropped
                if self.skip:
                    return
            end = self.pending.find(b"\r\n\r\n")
            if end < 0:
                if len(self.pending) > MAX_HEAD:
                    self.transport.close()
                return
            head, self.pending = self.pending[:end], self.pending[end + 4 :]
            try:
                self.skip = body_length(head)
            except ValueError:
                self.transport.close()
                return
            self.transport.write(self.answer)


async def serve(port: int, channel: str) -> None:
    """Answer on 127.0.0.1:``port`` until killed."""
    loop = asyncio.get_running_loop()
    answer = response(channel)
    server = await loop.create_server(
        lambda: Origin(answer), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    """Parse ``PORT [CHANNEL]`` and serve."""
    if not 1 <= len(argv) <= 2 or not argv[0].isdigit():
        print("usage: grip_origin.py PORT [CHANNEL]", file=sys.stderr)
        return 2
    channel = argv[1] if len(argv) == 2 else "bench"
    if not channel.isascii() or not channel.isprintable() or not channel:
        print(f"grip_origin.py: bad channel name {channel!r}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(int(argv[0]), channel))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
