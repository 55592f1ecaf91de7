"""
Logging for operators: JSON logs for ``twistd``, and an access log that never
records secrets.

The library logs with :class:`twisted.logger.Logger` and structured fields
(``peer``, ``channel``, ``reason``, ``duration``, ...).  Run
``twistd --logger twisted_sse.json_log_observer sse ...`` to get one JSON
object per line on standard output, which log shippers read as they are.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import parse_qsl, urlencode

from twisted.logger import ILogObserver, jsonFileLogObserver

__all__ = ["SECRET_PARAMETERS", "access_log_formatter", "json_log_observer"]

#: Query parameters whose values are replaced in the access log.  A browser's
#: EventSource cannot send an Authorization header, so tokens travel in the
#: query string; they must not land in log files.
SECRET_PARAMETERS = frozenset(
    {"access_token", "token", "auth", "authorization", "key", "api_key", "jwt"}
)


def json_log_observer() -> ILogObserver:
    """
    A log observer factory for ``twistd --logger``: one JSON object per
    event, one per line, on standard output.
    """
    return jsonFileLogObserver(sys.stdout)


def _redact(uri: bytes) -> bytes:
    path, question, query = uri.partition(b"?")
    if not question:
        return uri
    text = query.decode("latin-1")
    pairs = parse_qsl(text, keep_blank_values=True)
    if not any(name.lower() in SECRET_PARAMETERS for name, _ in pairs):
        return uri
    cleaned = [
        (name, "REDACTED" if name.lower() in SECRET_PARAMETERS else value)
        for name, value in pairs
    ]
    return path + b"?" + urlencode(cleaned, safe="/:@").encode("latin-1")


def _escape(value: bytes | str) -> str:
    # As Twisted's access log does: a repr, with double quotes escaped.
    raw = value if isinstance(value, bytes) else value.encode("ascii", "replace")
    return repr(raw)[2:-1].replace('"', '\\"')


def access_log_formatter(timestamp: str, request: Any) -> str:
    """
    The combined log format of :class:`~twisted.web.server.Site`, with the
    values of :data:`SECRET_PARAMETERS` redacted from the request's query
    string and from the referrer.  The format records no other request
    header, so ``Authorization`` and cookies never appear.
    """
    address = request.getClientAddress()
    ip = getattr(address, "host", None) or "-"
    referrer = request.getHeader(b"referer") or b"-"
    agent = request.getHeader(b"user-agent") or b"-"
    return (
        f'"{_escape(ip)}" - - {timestamp} '
        f'"{_escape(request.method)} {_escape(_redact(request.uri))} '
        f'{_escape(request.clientproto)}" {request.code} '
        f'{request.sentLength or "-"} "{_escape(_redact(referrer))}" '
        f'"{_escape(agent)}"'
    )
