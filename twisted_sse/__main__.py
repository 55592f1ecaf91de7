"""
The ``twisted-sse`` command (also ``python -m twisted_sse``).

``twisted-sse check URL`` watches the stream at ``URL`` for a while (with a
``HEAD``, a resume, and optionally a CORS preflight and test events
published beside it) and judges what it saw against what browsers and
proxies need, check by check: a table, or one JSON document with
``--json``.  Exit status: 0 when no check fails, 1 when one does, 2 on a
usage error.

``twisted-sse listen URL`` connects an :class:`~twisted_sse.EventSource` to
``URL`` and prints one JSON object per event on stdout, one per line
(``type``, ``data``, ``lastEventId``, ``origin``), flushed as it comes, so it
pipes into ``jq`` or a script.  It reconnects as a browser would: after a
stream that delivered events, quietly; after an attempt that failed (a
refused connection, a wrong port, a cap), with one line on stderr, so it
never waits in silence; with ``--verbose``, every time.  Never on stdout.
With ``--channel NAME`` (repeatable) it reads the hub's ``/subscribe`` at
``URL`` for those channels and patterns (``news.*``) in one stream, each
event's ``type`` naming its channel.

What a server can make it hold is capped (``--max-line-bytes``,
``--max-event-bytes``, 16 MiB each, and the response head): past a cap it
drops the connection and tries again later, backing off.

Exit status: 0 when the server stops the stream (204), after ``--max-events``
events or ``--timeout`` seconds, or when stdout is closed; 1, with one line
on stderr, when the connection fails for good (another status, a wrong
Content-Type); 2 on a usage error.

``twisted-sse presence URL CHANNEL`` asks the hub at ``URL`` (its base URL)
who is on ``CHANNEL`` (``GET /presence/CHANNEL``) and prints the count of
connections and each identity with its connections, or with ``--json`` the
hub's JSON object on one line.  Exit status: 0 with the answer; 1, with one
line on stderr (``twisted-sse presence: 403 <the hub's reason>``), when the
hub refuses or cannot be reached in ``--timeout`` seconds; 2 on a usage
error (a channel that is not a channel name, a URL that is not a hub's
base).

Every command ends at once and quietly on SIGINT (Ctrl-C) or SIGTERM, with
exit status 128 plus the signal's number (130, 143), as a shell reports a
program the signal killed.  ``--version`` prints this package's version,
and Twisted's and Python's.

Every command refuses a URL that is not an absolute ``http`` or ``https``
URL with a valid host and port at once, with one line on stderr naming the
problem and exit status 2, before anything connects.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IAgent

from ._agent import default_agent
from ._check import Connector, Plan, judge, observe, render_text
from ._client import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_RECONNECTION_TIME,
    EventSource,
    EventSourceError,
    ReadyState,
)
from ._parser import DEFAULT_MAX_EVENT_DATA_BYTES, DEFAULT_MAX_LINE_BYTES, LimitExceeded
from ._presence import MAX_PRESENCE_MEMBERS
from ._presence_cli import (
    Answer,
    ask,
    base_problem,
    channel_problem,
    presence_url,
    read_presence,
    refusal,
    render_table,
)
from ._url import URL, strict_url, subscribe_url
from ._version import version_text

__all__ = ["build_parser", "check", "listen", "main", "presence", "strict_url"]

_PROG = "twisted-sse"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII)
# What an ASCII host name may hold (letters, digits, hyphens, dots, and the
# underscores of some internal names).

#: ``twisted-sse check``'s defaults: seconds to watch, and the longest
#: silence that common proxies and load balancers let pass.
DEFAULT_DURATION = 10.0
DEFAULT_IDLE = 30.0
#: Seconds ``twisted-sse presence`` waits for the whole answer.
DEFAULT_PRESENCE_TIMEOUT = 10.0
#: Where ``twisted-sse check --publish`` reads its token when ``--token`` is
#: not given (the variable ``twistd sse`` reads it from too).
TOKEN_VARIABLE = "TWISTED_SSE_PUBLISH_TOKEN"
#: The signals that end a command: it exits with 128 plus the number.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _origin(text: str) -> str:
    strict_url(text)
    parts = urlsplit(text)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("an origin is scheme://host[:port], with no path")
    return text.rstrip("/")


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


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_PRESENCE_MEMBERS:
        raise argparse.ArgumentTypeError(
            f"expected a number of members from 0 to {MAX_PRESENCE_MEMBERS}, "
            f"not {text!r}"
        )
    return int(text)


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


def _event_id(text: str) -> str:
    if any(char in text for char in "\r\n\0"):
        raise argparse.ArgumentTypeError("an event id cannot hold CR, LF or NUL")
    return text


class _Version(argparse.Action):
    """``--version``: print the versions on stdout and exit 0."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any):
        kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        sys.stdout.write(version_text() + "\n")
        sys.stdout.flush()
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """
    The command line parser: one subcommand per action (``check``,
    ``listen`` and ``presence``).

    :returns: A parser whose namespaces have ``command`` set.
    """
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Server-Sent Events tools for Twisted."
    )
    parser.add_argument(
        "--version",
        action=_Version,
        help="print the versions of twisted_sse, Twisted and Python, and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_check(commands)
    listen_parser = commands.add_parser(
        "listen",
        help="print the events of a stream as JSON lines",
        description=(
            "Connect to an event stream and print each event as one JSON object "
            "per line (type, data, lastEventId, origin).  Reconnects like a "
            "browser: after a stream that delivered events, quietly unless "
            "--verbose; a failed attempt is said on stderr, never stdout."
        ),
    )
    listen_parser.add_argument("url", metavar="URL", help="the http(s) URL to read")
    listen_parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say on stderr why and when it reconnects, every time",
    )
    listen_parser.add_argument(
        "--channel",
        metavar="NAME",
        action="append",
        default=[],
        help=(
            "read this channel of the hub at URL, or every channel under a "
            "pattern such as 'news.*', through its /subscribe (the path when "
            "URL has none); each event's type is its channel; repeatable"
        ),
    )
    listen_parser.add_argument(
        "--last-event-id",
        metavar="ID",
        type=_event_id,
        default="",
        help="resume after this event id (sent as Last-Event-ID)",
    )
    listen_parser.add_argument(
        "-H",
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
    _add_presence(commands)
    return parser


def _add_presence(commands: Any) -> None:
    presence_parser = commands.add_parser(
        "presence",
        help="show who is on a channel of a hub",
        description=(
            "Ask the hub at URL who is on CHANNEL (GET URL/presence/CHANNEL) and "
            "print its connections and members, each identity with its "
            "connections.  Exit status 0 with an answer, 1 when the hub refuses "
            "or cannot be reached, 2 on a usage error."
        ),
    )
    presence_parser.add_argument(
        "url",
        metavar="URL",
        help="the hub's base http(s) URL, such as http://127.0.0.1:8080",
    )
    presence_parser.add_argument("channel", metavar="CHANNEL", help="the channel")
    presence_parser.add_argument(
        "--json",
        action="store_true",
        help="print the hub's JSON object on one line, not a table",
    )
    presence_parser.add_argument(
        "--limit",
        metavar="N",
        type=_limit,
        help=(
            f"list at most N members, 0 (count only) to {MAX_PRESENCE_MEMBERS} "
            "(default: the hub's, 100 unless it was set otherwise)"
        ),
    )
    presence_parser.add_argument(
        "--token",
        metavar="TOKEN",
        help="the bearer token to send (Authorization: Bearer TOKEN)",
    )
    presence_parser.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_seconds,
        default=DEFAULT_PRESENCE_TIMEOUT,
        help="give up when the whole answer has not come in S seconds "
        "(default: %(default)g)",
    )


def _add_check(commands: Any) -> None:
    check_parser = commands.add_parser(
        "check",
        help="check that an endpoint streams as browsers and proxies need",
        description=(
            "Watch the event stream at URL for a while and judge what it does: "
            "the status and headers, how events are framed and delivered, "
            "heartbeats, resuming with Last-Event-ID, HEAD, and CORS and "
            "publishing when asked.  Exit status 0 when no check fails, 1 when "
            "one does, 2 on a usage error."
        ),
    )
    check_parser.add_argument("url", metavar="URL", help="the http(s) URL to check")
    check_parser.add_argument(
        "--json", action="store_true", help="print one JSON document, not a table"
    )
    check_parser.add_argument(
        "--duration",
        metavar="S",
        type=_positive_seconds,
        default=DEFAULT_DURATION,
        help="seconds to watch the stream (default: %(default)g)",
    )
    check_parser.add_argument(
        "--idle",
        metavar="S",
        type=_positive_seconds,
        default=DEFAULT_IDLE,
        help=(
            "the longest silence allowed, what proxies and load balancers in "
            "front let pass (default: %(default)g)"
        ),
    )
    check_parser.add_argument(
        "--origin",
        metavar="ORIGIN",
        help="check CORS for a page on this origin (scheme://host[:port])",
    )
    check_parser.add_argument(
        "-H",
        "--header",
        metavar="'NAME: VALUE'",
        type=_header,
        action="append",
        default=[],
        help="an extra request header for the stream and HEAD; repeatable",
    )
    check_parser.add_argument(
        "--publish",
        metavar="URL",
        help=(
            'POST test events ({"data": ...} as JSON) to this URL and '
            "time their arrival on the stream"
        ),
    )
    check_parser.add_argument(
        "--token",
        metavar="TOKEN",
        help=(
            "the bearer token for --publish (default: the "
            f"{TOKEN_VARIABLE} environment variable)"
        ),
    )
    check_parser.add_argument(
        "--http1.1",
        dest="http1_1",
        action="store_true",
        help="speak HTTP/1.1 over TLS, without offering HTTP/2",
    )
    check_parser.add_argument(
        "--cacert",
        metavar="FILE",
        help="trust the certificates in this PEM file, not the system's",
    )


def _usage_problem(options: argparse.Namespace) -> str | None:
    """
    What is wrong with ``options`` that the parser cannot see (a URL, a
    ``--channel``, the ``--origin``, a ``--cacert`` file), or ``None``:
    found before the reactor runs.
    """
    urls = [("URL", options.url)]
    if options.command == "check" and options.publish is not None:
        urls.append(("--publish", options.publish))
    for name, value in urls:
        try:
            strict_url(value)
        except ValueError as e:
            return f"bad {name} {value!r}: {e}"
    if options.command == "listen" and options.channel:
        try:
            subscribe_url(options.url, options.channel)
        except ValueError as e:
            return f"bad --channel: {e}"
    if options.command == "presence":
        problem = channel_problem(options.channel)
        if problem is not None:
            return f"bad CHANNEL {options.channel!r}: {problem}"
        problem = base_problem(options.url)
        if problem is not None:
            return f"bad URL {options.url!r}: {problem}"
        token = options.token
        if token is not None and (
            not token.strip() or any(ord(c) < 32 or ord(c) == 127 for c in token)
        ):
            return "bad --token: it is empty, or holds a control character"
    if options.command == "check":
        if options.origin is not None:
            try:
                options.origin = _origin(options.origin)
            except ValueError as e:
                return f"bad --origin {options.origin!r}: {e}"
        if options.token is not None and options.publish is None:
            return "--token needs --publish"
        if options.cacert is not None:
            try:
                _trust(options.cacert)
            except (OSError, ValueError) as e:
                return f"bad --cacert: {e}"
    return None


def _trust(path: str) -> Any:
    """The certificates of a PEM file, as a trust root for TLS."""
    from twisted.internet.ssl import Certificate, trustRootFromCertificates

    with open(path, "rb") as pem:
        text = pem.read()
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.DOTALL
    )
    if not blocks:
        raise ValueError(f"no certificate in {path}")
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except Exception as e:  # OpenSSL's errors
        raise ValueError(f"a certificate in {path} cannot be read") from e
    return trustRootFromCertificates(certificates)


def _colour(out: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


async def check(
    reactor: Any,
    options: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    connector: Connector | None = None,
) -> int:
    """
    Run ``twisted-sse check``.

    :param reactor: The reactor to run on (time and TCP).
    :param options: Parsed by :func:`build_parser`.
    :param out: Where the report goes.
    :param err: Where usage errors go.
    :param connector: Opens the connections (by default TCP and TLS on
        ``reactor``, trusting ``--cacert`` or the system's certificates).
    :returns: The exit status: 0, 1 if a check failed, 2 on a usage error.
    """
    problem = _usage_problem(options)
    if problem is not None:
        _say(err, problem)
        return 2
    if connector is None:
        trust = None
        if options.cacert is not None:
            try:
                trust = _trust(options.cacert)
            except (OSError, ValueError) as e:
                _say(err, f"bad --cacert: {e}")
                return 2
        connector = Connector(reactor, trust=trust, http2=not options.http1_1)
    token = options.token
    if token is None and options.publish is not None:
        token = os.environ.get(TOKEN_VARIABLE)
    plan = Plan(
        url=options.url,
        duration=options.duration,
        idle=options.idle,
        headers=tuple(options.header),
        origin=options.origin,
        publish_url=options.publish,
        token=token,
    )
    report = judge(await observe(reactor, plan, connector))
    if options.json:
        text = json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
    else:
        text = render_text(report, colour=_colour(out))
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        pass
    return report.exit_code


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
    problem = _usage_problem(options)
    if problem is not None:
        _say(err, problem)
        return 2
    try:
        source = EventSource(
            options.url,
            channels=options.channel or None,
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

    # A stream that delivered events and dropped is reopened quietly; an
    # attempt that failed (a wrong port, a refused connection, a cap) is
    # said on stderr, or the command would wait in silence.
    delivered = [False]

    def on_error(failure: Failure) -> None:
        if source.ready_state is ReadyState.CONNECTING:
            quiet = delivered[0] and not options.verbose
            delivered[0] = False
            if quiet:
                return
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
            delivered[0] = True
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


class _NoAnswer(Exception):
    """The whole answer did not come in time."""


def _no_answer(result: object, timeout: float) -> object:
    # The request was cancelled when its time was up; an answer that came
    # anyway (the cancel lost the race) is kept.
    if isinstance(result, Failure):
        return Failure(_NoAnswer())
    return result


async def presence(
    reactor: IReactorTime,
    options: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    agent: IAgent | None = None,
) -> int:
    """
    Run ``twisted-sse presence``.

    :param reactor: The reactor to run on (time, and TCP for the default
        agent).
    :param options: Parsed by :func:`build_parser`.
    :param out: Where the table or the JSON goes.
    :param err: Where diagnostics go.
    :param agent: The agent to ask with (one capping response heads, as
        ``listen``'s, if ``None``).
    :returns: The exit status: 0, 1 when the hub refused or could not be
        reached, 2 on a usage error.
    """
    problem = _usage_problem(options)
    if problem is not None:
        _say(err, problem)
        return 2
    url = presence_url(options.url, options.channel, options.limit)
    where = URL.parse(url).origin
    prog = f"{_PROG} presence"
    if agent is None:
        agent = default_agent(reactor)
    asking = Deferred.fromCoroutine(ask(agent, url, options.token))
    asking.addTimeout(options.timeout, reactor, onTimeoutCancel=_no_answer)
    # A signal cancels this command through ``waiting``: that is not a
    # failure to report.
    stopped: list[bool] = []

    def stop(waiting: Deferred[Answer]) -> None:
        stopped.append(True)
        asking.cancel()

    waiting: Deferred[Answer] = Deferred(stop)

    def settle(result: Answer | Failure) -> None:
        if not waiting.called:
            waiting.callback(result)  # a Failure errbacks

    asking.addBoth(settle)
    try:
        answer = await waiting
    except _NoAnswer:
        _say(err, f"no answer from {where} within {options.timeout:g} s", prog)
        return 1
    except Exception as e:
        if stopped:
            raise
        # Whatever the agent raises when it cannot connect or the
        # connection fails: said in one line, never a traceback.
        _say(err, f"cannot reach {where}: {_describe(Failure(e))}", prog)
        return 1
    if answer.code != 200:
        _say(err, refusal(answer, token=options.token is not None), prog)
        return 1
    try:
        document = read_presence(answer)
    except ValueError as e:
        _say(err, str(e), prog)
        return 1
    text = json.dumps(document) + "\n" if options.json else render_table(document)
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        pass
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
        causes = [reason for reason in reasons if isinstance(reason, Failure)]
        # A connection lost in the middle of a response also fails its
        # decoder ("Chunked decoder in 'CHUNK_LENGTH' state..."): the loss
        # is the news, the rest follows from it.
        lost = [c for c in causes if c.check(ConnectionLost, ConnectionDone)]
        return "; ".join(map(_describe, lost or causes))
    return failure.getErrorMessage()


def _say(err: TextIO, message: str, prog: str = _PROG) -> None:
    err.write(f"{prog}: {message}\n")
    err.flush()


def _run(options: argparse.Namespace) -> int:
    """
    Run the command on the global reactor until it ends, or until one of
    :data:`STOP_SIGNALS` cancels it (a second one exits at once).

    :returns: The command's exit status, or 128 plus the signal's number.
    """
    from twisted.internet import reactor as installed

    # The module stands for the reactor, which provides more than mypy sees.
    reactor: Any = installed
    commands: dict[str, Callable[..., Coroutine[Any, Any, int]]] = {
        "check": check,
        "listen": listen,
        "presence": presence,
    }
    command = commands[options.command]
    signalled: list[int] = []
    results: list[int | Failure] = []
    running = Deferred.fromCoroutine(command(reactor, options, sys.stdout, sys.stderr))

    def on_signal(number: int, frame: FrameType | None) -> None:
        if signalled:
            os._exit(128 + number)
        signalled.append(number)
        # The command closes its connections as it unwinds, so that nothing
        # it holds has anything to report when the reactor stops.
        reactor.callFromThread(running.cancel)

    for number in STOP_SIGNALS:
        signal.signal(number, on_signal)
    running.addBoth(results.append)
    running.addBoth(lambda _: reactor.callWhenRunning(reactor.stop))
    # Twisted's own handlers would stop the reactor under the command, which
    # then reports its connections lost, and exit 0.
    reactor.run(installSignalHandlers=False)
    if signalled:
        return 128 + signalled[0]
    [result] = results
    if isinstance(result, Failure):
        result.printTraceback(sys.stderr)  # a bug: show it
        return 1
    return result


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
    problem = _usage_problem(options)
    if problem is not None:
        _say(sys.stderr, problem)
        return 2
    try:
        return _run(options)
    finally:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            # Python would complain about the closed pipe again at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
