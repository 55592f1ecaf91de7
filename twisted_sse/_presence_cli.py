"""
The parts of ``twisted-sse presence URL CHANNEL``: the URL of a hub's
``GET /presence/{channel}`` built from its base URL and a channel name, the
request with its answer read up to a cap, and what is printed of the
answer: a table, or the reason of a refusal.

The command itself (its options, exit statuses and messages) is in
``__main__``, beside the others.
"""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from attrs import frozen
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent

from ._agent import discard
from ._authhook import _BodyReader, _TooLarge
from ._broker import valid_channel, valid_pattern
from ._presence import MAX_PRESENCE_MEMBERS
from ._url import URL, strict_url

__all__ = [
    "MAX_ANSWER_BYTES",
    "Answer",
    "ask",
    "base_problem",
    "channel_problem",
    "presence_url",
    "printable",
    "read_presence",
    "refusal",
    "render_table",
]

#: The most bytes of an answer read: past them the connection is dropped, and
#: the answer refused.
MAX_ANSWER_BYTES: Final = 1024 * 1024
#: The longest reason of a refusal printed, in characters.
MAX_REASON: Final = 200

#: The path segments of a hub's own resources: a URL ending in one of them
#: (and a name after ``presence`` or ``channels``) is not the hub's base.
_HUB_PATHS = {
    "presence": "a presence URL",
    "channels": "a channel's URL",
    "subscribe": "the URL of /subscribe",
}


def channel_problem(name: str) -> str | None:
    """
    What is wrong with ``name`` as the channel of a presence query, or
    ``None`` when it is a valid channel name (see
    :func:`~twisted_sse.valid_channel`).
    """
    if valid_channel(name):
        return None
    if name == "*" or valid_pattern(name):
        return "presence is of one channel, not a pattern"
    return (
        "not a channel name: 1 to 128 ASCII letters, digits and '_.:@-', "
        "starting with a letter or digit"
    )


def base_problem(url: str) -> str | None:
    """
    What is wrong with ``url``, an absolute ``http`` or ``https`` URL, as a
    hub's base URL, or ``None``: a URL whose path already ends in one of the
    hub's resources (``/presence/news``, ``/channels/news``,
    ``/subscribe``) is refused rather than guessed at.
    """
    parts = urlsplit(url)
    segments = [segment for segment in parts.path.split("/") if segment]
    # The segment before a name, or the last one.
    found = [
        at
        for at in (len(segments) - 2, len(segments) - 1)
        if at >= 0
        and segments[at] in _HUB_PATHS
        and (at == len(segments) - 1 or segments[at] != "subscribe")
    ]
    if not found:
        return None
    at = found[0]
    path = "".join("/" + segment for segment in segments[:at])
    base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return (
        f"it is {_HUB_PATHS[segments[at]]}, not a hub's base URL: give the "
        f"base URL ({base}) and the channel apart"
    )


def presence_url(base_url: str, channel: str, limit: int | None = None) -> str:
    """
    The URL of the presence of ``channel`` on the hub at ``base_url``::

        >>> presence_url("https://hub.example/", "news", limit=10)
        'https://hub.example/presence/news?limit=10'

    The path of ``base_url`` (with or without a trailing slash) is kept, as
    for a hub mounted under a prefix, and so are the parameters of its
    query; its fragment is dropped.

    :param base_url: The hub's absolute ``http`` or ``https`` URL.
    :param channel: A channel name (see :func:`~twisted_sse.valid_channel`).
    :param limit: The most members to list, 0 (the count only) to
        :data:`~twisted_sse.MAX_PRESENCE_MEMBERS`; the hub's default if
        ``None``.
    :raises ValueError: naming the problem: the URL (see
        :func:`~twisted_sse.strict_url`), a URL that is already one of the
        hub's resources (see :func:`base_problem`), the channel name, the
        limit.
    """
    strict_url(base_url)
    problem = base_problem(base_url)
    if problem is not None:
        raise ValueError(problem)
    problem = channel_problem(channel)
    if problem is not None:
        raise ValueError(f"{channel!r}: {problem}")
    if limit is not None and not 0 <= limit <= MAX_PRESENCE_MEMBERS:
        raise ValueError(f"limit must be 0 to {MAX_PRESENCE_MEMBERS}, not {limit!r}")
    parts = urlsplit(base_url)
    # A channel name is made of characters a path segment may hold as they
    # are ("_.:@-", letters, digits), and never "." or "..".
    path = parts.path.rstrip("/") + "/presence/" + channel
    own = parts.query.rstrip("&")
    query = [own] if own else []
    if limit is not None:
        query.append(f"limit={limit}")
    return urlunsplit((parts.scheme, parts.netloc, path, "&".join(query), ""))


@frozen
class Answer:
    """
    The hub's answer, read.

    :ivar code: The status.
    :ivar phrase: The status line's reason phrase.
    :ivar headers: The response headers.
    :ivar body: The body, or ``None`` when it was longer than
        :data:`MAX_ANSWER_BYTES` (and was not read).
    """

    code: int
    phrase: str
    headers: Headers
    body: bytes | None


async def ask(agent: IAgent, url: str, token: str | None = None) -> Answer:
    """
    ``GET`` ``url`` with ``Accept: application/json`` (and ``Authorization:
    Bearer <token>`` when a token is given), and read the answer, up to
    :data:`MAX_ANSWER_BYTES` of body: past that, the connection is dropped.

    Cancelling it drops the connection, whether the answer has begun or
    not.

    :raises Exception: what the agent raises when it cannot connect or the
        connection fails.
    """
    headers = Headers({b"Accept": [b"application/json"]})
    if token is not None:
        headers.addRawHeader(b"Authorization", b"Bearer " + token.encode("utf-8"))
    wire = URL.parse(url).text.encode("ascii")
    response = await agent.request(b"GET", wire, headers)
    phrase = response.phrase.decode("latin-1")
    if response.length is not UNKNOWN_LENGTH and response.length > MAX_ANSWER_BYTES:
        discard(response)
        return Answer(response.code, phrase, response.headers, None)
    reader = _BodyReader(MAX_ANSWER_BYTES)
    response.deliverBody(reader)
    try:
        body: bytes | None = await reader.done
    except _TooLarge:
        body = None
    return Answer(response.code, phrase, response.headers, body)


def printable(text: str, limit: int | None = None) -> str:
    """
    ``text`` safe to print on a terminal: every character that is not
    printable (control characters, escape sequences' ESC, line breaks)
    escaped as Python would, and cut to ``limit`` characters with ``...``.
    """
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if limit is not None and len(safe) > limit:
        safe = safe[: limit - 3] + "..."
    return safe


def _json_reason(body: bytes | None) -> str | None:
    """The ``"error"`` of a JSON error answer, if it has one."""
    if not body:
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, str) and error.strip():
        return error.strip()
    return None


def refusal(answer: Answer, token: bool) -> str:
    """
    What to say of an answer other than ``200``: the status and the hub's
    reason (the ``"error"`` of its JSON, else the reason phrase), and what
    would help: the wait a ``503`` asks for (``Retry-After``), that no
    token was given for a ``401``, where a redirect points.

    :param answer: The answer.
    :param token: Whether a token was sent.
    """
    reason = _json_reason(answer.body) or answer.phrase or "(no reason given)"
    text = f"{answer.code} {printable(reason, MAX_REASON)}"
    retry = _header(answer.headers, b"retry-after")
    if answer.code == 503 and retry is not None and retry.isdigit():
        text += f" (retry after {int(retry)} s)"
    elif answer.code == 401 and not token:
        text += " (no --token given)"
    elif 300 <= answer.code < 400:
        location = _header(answer.headers, b"location")
        if location is not None:
            text += f" (to {printable(location, MAX_REASON)})"
    elif answer.code == 404 and _json_reason(answer.body) is None:
        text += " (is URL the base URL of a hub?)"
    return text


def _header(headers: Headers, name: bytes) -> str | None:
    values = headers.getRawHeaders(name)
    return values[-1].decode("latin-1").strip() if values else None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_presence(answer: Answer) -> dict[str, Any]:
    """
    The JSON object of a ``200`` answer, checked to be presence:
    ``channel`` (a string), ``count`` (a number of connections),
    ``members`` (objects each with a string ``sub`` and a number of
    ``connections``) and, if there, ``truncated`` (``true`` or ``false``).
    Other members are kept.

    :raises ValueError: naming what is wrong: a body too long, a type
        other than JSON, not JSON, not presence.
    """
    if answer.body is None:
        raise ValueError(f"the answer is longer than {MAX_ANSWER_BYTES} bytes")
    kind = _header(answer.headers, b"content-type") or "no Content-Type"
    if kind.split(";", 1)[0].strip().lower() != "application/json":
        raise ValueError(
            f"the answer is {printable(kind, MAX_REASON)}, not JSON: is URL the "
            "base URL of a hub?"
        )
    try:
        document = json.loads(answer.body)
    except (ValueError, RecursionError):
        raise ValueError("the answer is not valid JSON") from None
    members = document.get("members") if isinstance(document, dict) else None
    if not (
        isinstance(document, dict)
        and isinstance(document.get("channel"), str)
        and _is_count(document.get("count"))
        and isinstance(members, list)
        and all(
            isinstance(member, dict)
            and isinstance(member.get("sub"), str)
            and _is_count(member.get("connections"))
            for member in members
        )
        and isinstance(document.get("truncated", False), bool)
    ):
        raise ValueError(
            "the answer is not presence: a JSON object with channel, count "
            "and members was expected"
        )
    return document


def _counted(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def render_table(presence: dict[str, Any]) -> str:
    """
    ``presence`` (as :func:`read_presence` returns it) as lines of text: the
    channel, its connections and members, then one line per member (its
    identity and connections, in the hub's order), and a last line when the
    hub listed only some of them::

        news: 3 connections, 2 members
          alice  2
          bob    1
    """
    members = presence["members"]
    truncated = presence.get("truncated", False)
    listed = _counted(len(members), "member")
    if truncated:
        listed = f"more than {listed}" if members else "members not listed"
    lines = [
        f"{printable(presence['channel'])}: "
        f"{_counted(presence['count'], 'connection')}, {listed}"
    ]
    if truncated and not members:
        # Asked for the count only (--limit 0), or the hub lists none.
        return lines[0] + "\n"
    subs = [printable(member["sub"]) for member in members]
    width = max(map(len, subs), default=0)
    for sub, member in zip(subs, members, strict=True):
        lines.append(f"  {sub:<{width}}  {member['connections']}")
    if truncated:
        lines.append("  ... and more members, not listed (see --limit)")
    return "\n".join(lines) + "\n"
