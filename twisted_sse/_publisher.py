"""
Publishing to a hub from any Python program: a Django view, a cron job, a
Celery task.  One blocking ``POST /channels/{name}`` with the standard
library's ``urllib``, the same JSON body that ``curl`` sends; no reactor,
no Twisted.

Everything that can be checked before the request is checked first, with a
:class:`ValueError` or :class:`TypeError` naming the argument, so that a
mistake never costs a round trip or reaches the hub.
"""

from __future__ import annotations

import http.client
import json
import math
import urllib.error
import urllib.request
from typing import Any, NoReturn
from urllib.parse import urlsplit

from ._broker import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_KEY_LENGTH,
    valid_channel,
    valid_idempotency_key,
)
from ._event import MAX_RETRY
from ._url import strict_url

__all__ = [
    "MAX_PUBLISH_ANSWER_BYTES",
    "HubUnreachable",
    "PublishError",
    "PublishRefused",
    "publish",
]

#: The most :func:`publish` reads of the body of a hub's answer.  A hub
#: answers a few dozen bytes (``{"id": "..."}`` or ``{"error": "..."}``); a
#: longer body (a proxy's error page, a wrong URL) is cut here, so that
#: whatever answers cannot make the publisher hold more.
MAX_PUBLISH_ANSWER_BYTES = 65536

# How much of an answer that is not the hub's JSON an exception quotes.
_QUOTED = 200


class PublishError(Exception):
    """
    :func:`publish` did not publish the event, or cannot tell its id.  The
    base of :class:`PublishRefused` and :class:`HubUnreachable`: catch it
    to handle every failure of a publish at once.
    """


class PublishRefused(PublishError):
    """
    The server answered, and not with the id of a published event: the hub
    refused the event (a wrong token, a body too large, the broker down,
    ...), or what answered is not a hub.

    It survives pickling (a Celery task's result backend stores it).

    :ivar url: The URL that was posted to.
    :ivar status: The HTTP status code: ``401`` for a missing or wrong
        token, ``403`` when the hub takes no publishes over HTTP, ``400``
        for a body it refuses, ``413`` for one too large, ``503`` while its
        broker is down (worth retrying later); a ``3xx`` for a redirect,
        which :func:`publish` does not follow; ``200`` when the body is not
        a hub's answer.
    :ivar reason: The hub's explanation: the ``error`` field of its JSON
        answer (``"a valid Authorization: Bearer token is required"``), or,
        when the answer is not the hub's JSON, what there is instead (the
        HTTP reason phrase, the start of the body, where a redirect led).
    :ivar answer: The JSON object the server answered, or ``None``.
    """

    def __init__(
        self,
        url: str,
        status: int,
        reason: str,
        answer: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(url, status, reason, answer)
        self.url = url
        self.status = status
        self.reason = reason
        self.answer = answer

    def __str__(self) -> str:
        return f"POST {self.url}: {self.status} {self.reason}"


class HubUnreachable(PublishError):
    """
    No answer came from the hub: the connection failed (refused, no such
    host, TLS certificate not trusted), the server closed it without an
    answer, or ``timeout`` seconds passed waiting for it.  After a timeout
    the hub may have published the event all the same; publishing again may
    publish it twice.

    The underlying error is the exception's ``__cause__``.  It survives
    pickling (without its cause).

    :ivar url: The URL that was posted to.
    :ivar reason: What went wrong, as the operating system or
        ``http.client`` said it.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"POST {self.url}: no answer from the hub: {self.reason}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would follow a 301/302/303 as a GET without the body, and a GET
    # of a channel is an endless event stream.  A publisher must name the
    # hub's URL itself: the redirect is reported, not followed.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def publish(
    hub_url: str,
    channel: str,
    data: str | bytes | dict[str, Any] | list[Any],
    *,
    token: str | None = None,
    event: str | None = None,
    retry: int | None = None,
    key: str | None = None,
    idempotency_key: str | None = None,
    timeout: float = 10,
) -> str:
    """
    Publish an event on ``channel`` of the hub at ``hub_url``, and return the
    id the hub gave it (the ``id:`` its subscribers see).  Blocks until the
    hub answers, for up to ``timeout`` seconds at each wait.

    It posts the JSON body of ``POST /channels/{name}`` (``data``, and
    ``event``, ``retry`` and ``key`` when given) with the standard
    library's ``urllib``: no reactor runs, and none is installed, so any
    Python program may call it, from any thread but a running reactor's
    (there it would stop the reactor until the answer, and a hub served by
    that reactor could not answer at all; use :meth:`Hub.publish` or treq
    there).  Proxies set in the environment (``https_proxy``,
    ``no_proxy``) apply, as they do to ``urllib``; redirects are not
    followed.  Of the answer's body it reads at most
    :data:`MAX_PUBLISH_ANSWER_BYTES`.

    :param hub_url: The URL the hub's ``/channels/`` is under:
        ``"http://localhost:3000"`` for ``twistd sse``.  An absolute
        ``http`` or ``https`` URL, checked as :class:`EventSource` checks
        its URL, without a query or fragment.
    :param channel: The channel's name (see :func:`valid_channel`).
    :param data: The payload.  A ``str`` is sent as it is (one ``data:``
        line per line); ``bytes`` must be UTF-8 and are sent as that text;
        a ``dict`` or ``list`` is sent as its compact JSON text.
    :param token: The hub's publish token, sent as ``Authorization: Bearer
        <token>``; ``None`` sends no ``Authorization`` header.
    :param event: The event type (``addEventListener(type, ...)`` in a
        browser); ``None`` means ``message``.  A single line, no NUL.
    :param retry: A new reconnection time for the subscribers, in
        milliseconds, from 0 to :data:`MAX_RETRY`.
    :param key: The conflation key for subscribers under the ``latest``
        slow-client policy, 1 to :data:`MAX_KEY_LENGTH` characters; the
        event type by default.
    :param idempotency_key: Sent as the ``Idempotency-Key`` header, 1 to
        255 printable ASCII characters (a UUID, say): publishing again with
        the same key on the same channel, within the hub's
        ``--idempotency-ttl``, returns the first publish's id and publishes
        nothing, so that retrying after :class:`HubUnreachable` is safe.
        The same key with another event is refused (``422``).
    :param timeout: Seconds to wait for the connection, and for each read
        of the answer (as ``urllib.request.urlopen`` takes it).
    :returns: The event's id.
    :raises ValueError: before any request, naming the argument whose
        value is wrong: ``hub_url``, ``channel``, ``data``, ``event``,
        ``retry``, ``key``, ``idempotency_key``, ``token`` or ``timeout``.
    :raises TypeError: before any request, naming the argument and the
        type, if ``data`` is not a ``str``, ``bytes``, ``dict`` or ``list``
        (or holds what JSON cannot carry), or ``hub_url``, ``event``,
        ``key``, ``idempotency_key`` or ``token`` is not a ``str``.
    :raises PublishRefused: if the server answers with anything but an id,
        with its status and reason.
    :raises HubUnreachable: if no answer comes.
    """
    url = f"{_check_hub_url(hub_url)}/channels/{_check_channel(channel)}"
    body: dict[str, object] = {"data": _data_text(data)}
    if event is not None:
        body["event"] = _check_line("event", event)
    if retry is not None:
        body["retry"] = _check_retry(retry)
    if key is not None:
        body["key"] = _check_key(key)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {_check_token(token)}"
    if idempotency_key is not None:
        headers["Idempotency-Key"] = _check_idempotency_key(idempotency_key)
    _check_timeout(timeout)
    request = urllib.request.Request(
        url,
        # ASCII (json's default escapes the rest): no encoding can fail here.
        data=json.dumps(body).encode("ascii"),
        headers=headers,
        method="POST",
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            status = response.status
            raw = response.read(MAX_PUBLISH_ANSWER_BYTES)
    except urllib.error.HTTPError as error:
        with error:
            _refused(url, error)
    except urllib.error.URLError as error:
        raise HubUnreachable(url, _describe(error.reason)) from error
    except (OSError, http.client.HTTPException) as error:
        # A timeout or reset while reading the answer, or a server that
        # closed the connection without one.
        raise HubUnreachable(url, _describe(error)) from error
    answer = _json_object(raw)
    event_id = answer.get("id") if answer is not None else None
    if not isinstance(event_id, str):
        raise PublishRefused(url, status, f"not a hub's answer: {_quote(raw)}", answer)
    return event_id


def _refused(url: str, error: urllib.error.HTTPError) -> NoReturn:
    try:
        raw = error.read(MAX_PUBLISH_ANSWER_BYTES)
    except (OSError, http.client.HTTPException):
        raw = b""
    answer = _json_object(raw)
    reason = None
    if answer is not None:
        # The hub's errors are {"error": reason}; take "reason" too, for a
        # hub that answers {"error": ..., "reason": ...}.
        for field in ("error", "reason"):
            if isinstance(answer.get(field), str) and answer[field]:
                reason = answer[field]
                break
    if reason is None:
        if 300 <= error.code < 400 and error.headers.get("Location"):
            reason = (
                f"redirected to {error.headers['Location']}, not followed: "
                "give publish the hub's own URL"
            )
        else:
            reason = str(error.reason or "")
            if raw:
                reason = f"{reason}: {_quote(raw)}" if reason else _quote(raw)
    raise PublishRefused(url, error.code, reason, answer) from None


def _describe(error: object) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, http.client.RemoteDisconnected):
        return "the server closed the connection without an answer"
    if isinstance(error, http.client.HTTPException) and not str(error):
        return type(error).__name__
    return str(error)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return answer if isinstance(answer, dict) else None


def _quote(raw: bytes) -> str:
    text = " ".join(raw.decode("utf-8", "replace").split())
    if len(text) > _QUOTED:
        text = text[:_QUOTED] + "..."
    return repr(text) if text else "an empty body"


# The checks made before any request.


def _check_hub_url(hub_url: object) -> str:
    if not isinstance(hub_url, str):
        raise TypeError(f"hub_url must be a str, not {type(hub_url).__name__}")
    try:
        strict_url(hub_url)
    except ValueError as error:
        raise ValueError(f"hub_url {hub_url!r}: {error}") from None
    parts = urlsplit(hub_url)
    if parts.query or parts.fragment or hub_url.endswith(("?", "#")):
        raise ValueError(
            f"hub_url {hub_url!r}: a query or fragment; give the URL that "
            "the hub's /channels/ is under"
        )
    return hub_url.rstrip("/")


def _check_channel(channel: object) -> str:
    if not isinstance(channel, str) or not valid_channel(channel):
        raise ValueError(
            f"channel {channel!r} is not a valid channel name: 1 to 128 "
            "ASCII letters, digits and _ . : @ -, starting with a letter or "
            "a digit"
        )
    return channel


def _data_text(data: object) -> str:
    if isinstance(data, str):
        text = data
    elif isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"data is not UTF-8: {error}") from None
    elif isinstance(data, dict | list):
        try:
            # What the hub itself sends for a JSON value that is not a
            # string: compact JSON text.  NaN and Infinity are not JSON.
            text = json.dumps(
                data, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except TypeError as error:
            raise TypeError(f"data cannot be sent as JSON: {error}") from None
        except ValueError as error:
            raise ValueError(f"data cannot be sent as JSON: {error}") from None
        except RecursionError:
            raise ValueError("data nests too deeply to be sent as JSON") from None
    else:
        raise TypeError(
            f"data must be a str, bytes, dict or list, not {type(data).__name__}"
        )
    _check_utf8("data", text)
    return text


def _check_line(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if any(char in value for char in "\r\n\0"):
        raise ValueError(f"{name} must not contain a CR, LF or NUL: {value!r}")
    _check_utf8(name, value)
    return value


def _check_utf8(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} must not contain a lone surrogate") from None


def _check_retry(retry: object) -> int:
    # bool is an int, and True is no reconnection time.
    if not isinstance(retry, int) or isinstance(retry, bool):
        raise ValueError(
            f"retry must be a non-negative integer (ms), not {type(retry).__name__}"
        )
    if not 0 <= retry <= MAX_RETRY:
        raise ValueError(f"retry must be from 0 to {MAX_RETRY} (ms), not {retry}")
    return retry


def _check_key(key: object) -> str:
    _check_line("key", key)
    assert isinstance(key, str)
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ValueError(f"key must be 1 to {MAX_KEY_LENGTH} characters long")
    return key


def _check_idempotency_key(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"idempotency_key must be a str, not {type(value).__name__}")
    if not valid_idempotency_key(value) or value != value.strip():
        raise ValueError(
            f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable "
            "ASCII characters, without space at either end"
        )
    return value


def _check_token(token: object) -> str:
    # The token's value never goes into a message: it is a secret.
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, not {type(token).__name__}")
    if not token or not token.isascii() or not token.isprintable():
        raise ValueError(
            "token must be a non-empty string of printable ASCII characters"
        )
    return token


def _check_timeout(timeout: object) -> None:
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValueError(f"timeout must be a positive number of seconds: {timeout!r}")
