"""
What a publish request's body says: an event and its conflation key, from
a JSON object, an HTML form (``application/x-www-form-urlencoded``, what
``curl -d`` sends) or plain text.  JSON and the form take the same fields
(``data``, ``event``, ``retry``, ``key``) with the same checks and the same
reasons for refusing them; a body that is neither is refused with the status
and reason the hub answers (:class:`BadPublish`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from ._event import Event

__all__ = ["MAX_JSON_DEPTH", "PUBLISH_FIELDS", "BadPublish", "read_publish"]

#: How deeply a publish body's JSON may nest (400 beyond): deep enough for
#: any real payload, shallow enough that no parser or encoder recurses far.
MAX_JSON_DEPTH = 64
#: The fields of a JSON or form body.
PUBLISH_FIELDS = frozenset({"data", "event", "retry", "key"})

_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
#: A form's retry that is an integer: digits only, and few enough that
#: anything longer is out of range anyway (Event says so, naming it).
_RETRY = re.compile("[0-9]{1,10}")


class BadPublish(Exception):
    """
    A publish refused: the HTTP status and the reason to answer.

    :ivar code: The status, such as ``400``.
    :ivar message: What is wrong, for the publisher.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def read_publish(request: Any, limit: int) -> tuple[Event, str | None]:
    """
    The event that ``request``'s body publishes, and its key.

    :param limit: The largest body, in bytes (413 beyond).
    :raises BadPublish: naming what is wrong.
    """
    request.content.seek(0)
    body = request.content.read(limit + 1)
    if len(body) > limit:
        raise BadPublish(413, f"the body is larger than {limit} bytes")
    media_type = _media_type(request)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPublish(400, "the body is not UTF-8") from None
    if media_type == _JSON:
        return _from_json(text)
    if media_type in ("text/plain", ""):
        return _make_event(data=text), None
    if media_type == _FORM:
        return _from_form(text)
    raise BadPublish(
        415,
        f"unsupported Content-Type {media_type!r}: use application/json, "
        "application/x-www-form-urlencoded or text/plain",
    )


def _media_type(request: Any) -> str:
    value = request.getHeader(b"Content-Type")
    if value is None:
        return ""
    return str(value.split(b";", 1)[0].strip().lower().decode("latin-1"))


def _from_json(text: str) -> tuple[Event, str | None]:
    try:
        body = json.loads(text)
    except ValueError as error:
        raise BadPublish(400, f"the body is not valid JSON: {error}") from None
    except RecursionError:
        body = None
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = _json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise BadPublish(
            400, f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels"
        )
    if not isinstance(body, dict):
        raise BadPublish(400, "the JSON body must be an object")
    _check_fields(body)
    data = body["data"]
    if not isinstance(data, str):
        data = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    event_type = body.get("event")
    if event_type is not None and not isinstance(event_type, str):
        raise BadPublish(400, "event must be a string")
    key = body.get("key")
    if key is not None and not isinstance(key, str):
        raise BadPublish(400, "key must be a string")
    # Event checks retry, and check_publish the key, for every publisher.
    return _make_event(data=data, event=event_type, retry=body.get("retry")), key


def _from_form(text: str) -> tuple[Event, str | None]:
    if text.lstrip().startswith(("{", "[")):
        # curl -d '{"data": ...}' without -H 'Content-Type: application/json'.
        raise BadPublish(
            400,
            "the body looks like JSON but is sent as a form "
            "(application/x-www-form-urlencoded, curl -d's default): send it "
            "with Content-Type: application/json",
        )
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        # A percent-escape that decodes to no UTF-8 (%FF).
        raise BadPublish(400, "the body is not UTF-8") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields and name in PUBLISH_FIELDS:
            raise BadPublish(400, f"the field {name!r} is given more than once")
        fields[name] = value
    _check_fields(fields)
    retry: object = fields.get("retry")
    if isinstance(retry, str) and _RETRY.fullmatch(retry):
        retry = int(retry)
    # Any other retry is refused by Event, with JSON's reason.
    event = _make_event(data=fields["data"], event=fields.get("event"), retry=retry)
    return event, fields.get("key")


def _check_fields(fields: Iterable[str]) -> None:
    """The fields are known ones, and ``data`` is among them."""
    unknown = sorted(set(fields) - PUBLISH_FIELDS)
    if unknown:
        raise BadPublish(
            400,
            f"unknown field {unknown[0]!r}: use data, event, retry and key",
        )
    if "data" not in fields:
        raise BadPublish(400, "the field 'data' is required")


def _json_depth(value: object) -> int:
    """How deeply ``value`` nests lists and objects (a scalar is 0)."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > MAX_JSON_DEPTH:
            return depth
        deepest = max(deepest, depth)
        pending.extend((child, depth) for child in children)
    return deepest


def _make_event(**fields: Any) -> Event:
    try:
        return Event(**fields)
    except ValueError as error:
        raise BadPublish(400, str(error)) from None
