"""
The ``twisted-sse`` command (also ``python -m twisted_sse``).

``twisted-sse listen URL`` connects an :class:`~twisted_sse.EventSource` to
``URL`` and prints one JSON object per event on stdout, one per line
(``type``, ``data``, ``lastEventId``, ``origin``), flushed as it comes, so it
pipes into ``jq`` or a script.  It reconnects as a browser would; what it has
to say about that goes to stderr, never stdout.

What a server can make it hold is capped (``--max-line-bytes``,
``--max-event-bytes``, 16 MiB each, and the response head): past a cap it
says so in one line on stderr, drops the connection and tries again later,
backing off.

Exit status: 0 when the server stops the stream (204), after ``--max-events``
events or ``--timeout`` seconds, or when stdout is closed; 1, with one line
on stderr, when the connection fails for good (another status, a wrong
Content-Type, a bad URL); 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import TextIO

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import react
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IAgent

from ._client import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_RECONNECTION_TIME,
    EventSource,
    EventSourceError,
    ReadyState,
)
from ._parser import DEFAULT_MAX_EVENT_DATA_BYTES, DEFAULT_MAX_LINE_BYTES, LimitExceeded

__all__ = ["build_parser", "listen", "main"]

_PROG = "twisted-sse"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII)


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    value = value.strip(" \t")
    if not colon or not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\0"):
        raise argparse.ArgumentTypeError(
            f"expected 'Name: value' with a valid header name, not {text!r}"
        )
    return name, value


def _positive_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return number


def _non_negative_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, not {text!r}"
        )
    return number


def _seconds(text: str, allow_zero: bool) -> float:
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    # NaN fails both comparisons, and inf is no use as a timer.
    if not (number > 0 or (allow_zero and number == 0)) or number == float("inf"):
        kind = "non-negative" if allow_zero else "positive"
        raise argparse.ArgumentTypeError(
            f"expected a {kind} number of seconds, not {text!r}"
        )
    return number


def _positive_seconds(text: str) -> float:
    return _seconds(text, allow_zero=False)


def _non_negative_seconds(text: str) -> float:
    return _seconds(text, allow_zero=True)


def build_parser() -> argparse.ArgumentParser:
    """
    The command line parser: one subcommand per action (``listen`` so far).

    :returns: A parser whose namespaces have ``command`` set.
    """
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Server-Sent Events tools for Twisted."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listen_parser = commands.add_parser(
        "listen",
        help="print the events of a stream as JSON lines",
        description=(
            "Connect to an event stream and print each event as one JSON object "
            "per line (type, data, lastEventId, origin).  Reconnects like a "
            "browser; diagnostics go to stderr."
        ),
    )
    listen_parser.add_argument("url", metavar="URL", help="the http(s) URL to read")
    listen_parser.add_argument(
        "--last-event-id",
        metavar="ID",
        default="",
        help="resume after this event id (sent as Last-Event-ID)",
    )
    listen_parser.add_argument(
        "--header",
        metavar="'NAME: VALUE'",
        type=_header,
        action="append",
        default=[],
        help="an extra request header, never sent to another origin; repeatable",
    )
    listen_parser.add_argument(
        "--max-events",
        metavar="N",
        type=_positive_int,
        help="exit after N events",
    )
    listen_parser.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_seconds,
        help="exit after S seconds",
    )
    listen_parser.add_argument(
        "--reconnection-time",
        metavar="MS",
        type=_non_negative_int,
        default=DEFAULT_RECONNECTION_TIME,
        help="initial reconnection time in milliseconds (default: %(default)s)",
    )
    listen_parser.add_argument(
        "--idle-timeout",
        metavar="S",
        type=_non_negative_seconds,
        default=DEFAULT_IDLE_TIMEOUT,
        help="reconnect after S seconds of silence, 0 to never (default: %(default)s)",
    )
    listen_parser.add_argument(
        "--max-line-bytes",
        metavar="N",
        type=_positive_int,
        default=DEFAULT_MAX_LINE_BYTES,
        help=(
            "drop the connection (and retry later) on a line longer than N "
            "bytes (default: %(default)s)"
        ),
    )
    listen_parser.add_argument(
        "--max-event-bytes",
        metavar="N",
        type=_positive_int,
        default=DEFAULT_MAX_EVENT_DATA_BYTES,
        help=(
            "drop the connection (and retry later) on an event with more than "
            "N bytes of data (default: %(default)s)"
        ),
    )
    return parser


async def listen(
    reactor: IReactorTime,
    options: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    agent: IAgent | None = None,
) -> int:
    """
    Run ``twisted-sse listen``.

    :param reactor: The reactor to run on.
    :param options: Parsed by :func:`build_parser`.
    :param out: Where the JSON lines go.
    :param err: Where diagnostics go.
    :param agent: The agent to connect with (a default one if ``None``).
    :returns: The exit status.
    """
    try:
        source = EventSource(
            options.url,
            headers=options.header,
            last_event_id=options.last_event_id,
            reconnection_time=options.reconnection_time,
            idle_timeout=options.idle_timeout,
            max_line_bytes=options.max_line_bytes,
            max_event_bytes=options.max_event_bytes,
            agent=agent,
            reactor=reactor,
        )
    except ValueError as e:
        err.write(f"{_PROG}: {e}\n")
        err.flush()
        return 1

    def on_error(failure: Failure) -> None:
        if source.ready_state is ReadyState.CONNECTING:
            delay = source.reconnect_delay or 0.0
            _say(err, f"{_describe(failure)}; reconnecting in {delay:.3g} s")
        elif isinstance(failure.value, EventSourceError) and failure.value.stopped:
            _say(err, str(failure.value))

    source.on_error = on_error
    timer: IDelayedCall | None = None
    if options.timeout is not None:
        timer = reactor.callLater(options.timeout, source.close)
    count = 0
    try:
        async for event in source:
            line = json.dumps(
                {
                    "type": event.type,
                    "data": event.data,
                    "lastEventId": event.last_event_id,
                    "origin": event.origin,
                }
            )
            try:
                out.write(line + "\n")
                out.flush()
            except BrokenPipeError:
                return 0  # the reader has had enough
            count += 1
            if options.max_events is not None and count >= options.max_events:
                break
    except EventSourceError as e:
        _say(err, str(e))
        return 1
    finally:
        source.close()
        if timer is not None and timer.active():
            timer.cancel()
    return 0


def _describe(failure: Failure) -> str:
    if failure.check(ResponseDone):
        return "the server ended the stream"
    if isinstance(failure.value, LimitExceeded) and failure.value.option:
        # Name the cap as the command's option that sets it.
        option = failure.value.option
        return str(failure.value).replace(option, "--" + option.replace("_", "-"))
    # ResponseFailed and friends wrap a list of the failures that caused them.
    reasons = getattr(failure.value, "reasons", None)
    if isinstance(reasons, list) and reasons:
        return "; ".join(
            _describe(reason) for reason in reasons if isinstance(reason, Failure)
        )
    return failure.getErrorMessage()


def _say(err: TextIO, message: str) -> None:
    err.write(f"{_PROG}: {message}\n")
    err.flush()


async def _run(reactor: IReactorTime, options: argparse.Namespace) -> None:
    code = await listen(reactor, options, sys.stdout, sys.stderr)
    if code:
        raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """
    The console script: parse ``argv`` and run the command on the global
    reactor (so it can run once per process).

    :param argv: The arguments, without the program name; ``sys.argv[1:]``
        if ``None``.
    :returns: The exit status.
    """
    try:
        options = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    code = 1
    try:
        react(_run, (options,))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            # Python would complain about the closed pipe again at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    return code


if __name__ == "__main__":
    sys.exit(main())
