"""
URLs and header values as the client and the checker take them: the strict
check every command and :class:`~twisted_sse.EventSource` make of a URL, the
parsed :class:`URL` ready for the wire, the URL of a hub's ``/subscribe``
for a list of channels, extra request headers, and the essence of a
``Content-Type``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from attrs import frozen

from ._broker import valid_channel

__all__ = [
    "DEFAULT_PORTS",
    "URL",
    "check_headers",
    "mime_essence",
    "strict_url",
    "subscribe_url",
]

#: The port a scheme's URL means when it names none.
DEFAULT_PORTS = {"http": 80, "https": 443}

# RFC 9110 token: what a header name or a MIME type/subtype may be.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII)
_MIME_ESSENCE = re.compile(
    r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)/([!#$%&'*+\-.^_`|~0-9A-Za-z]+)", re.ASCII
)
# What may stay unescaped in the path and query of a request URI.
_URI_SAFE = "/?:@!$&'()*+,;=-._~%[]"


_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?", re.ASCII)


def strict_url(text: str) -> str:
    """
    Check that ``text`` is an absolute ``http`` or ``https`` URL that can be
    connected to as it is: no control character, no space before the path
    (a space in the path or query is percent-encoded, as browsers do), a
    valid host (a name, an IPv4 address, or an IPv6 address in brackets), a
    port from 1 to 65535, no credentials.  :class:`EventSource` and every
    ``twisted-sse`` command check their URL with it.

    :returns: ``text``.
    :raises ValueError: naming the problem.
    """
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise ValueError("a space or control character in the URL")
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise ValueError("not an absolute URL: it must start with http:// or https://")
    if scheme.lower() not in ("http", "https"):
        raise ValueError(f"the scheme {scheme!r} is not http or https")
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if any(char.isspace() for char in scheme + netloc):
        raise ValueError("a space or control character in the URL")
    if "@" in netloc:
        raise ValueError(
            "credentials in the URL are not supported; send an Authorization header"
        )
    if netloc.startswith("["):
        literal, bracket, rest = netloc[1:].partition("]")
        if not bracket:
            raise ValueError("an unclosed '[' in the host")
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise ValueError(f"{literal!r} is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise ValueError(f"{rest!r} after the IPv6 address")
        port = rest[1:] if rest else None
    else:
        host, colon, port_text = netloc.rpartition(":")
        if not colon:
            host, port_text = netloc, ""
        port = port_text if colon else None
        _check_host(host)
    if port:
        if not (port.isdigit() and port.isascii()):
            raise ValueError(f"the port {port!r} is not a number")
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"the port {int(port)} is not between 1 and 65535")
    URL.parse(text)
    return text


def _check_host(host: str) -> None:
    if not host:
        raise ValueError("no host in the URL")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{host!r} is not a valid host name") from None
    if not _HOST_NAME.fullmatch(host) or len(host) > 253:
        raise ValueError(f"{host!r} is not a valid host name")
    labels = host.rstrip(".").split(".")
    if any(len(label) > 63 for label in labels):
        raise ValueError(f"{host!r} has a label longer than 63 characters")
    # As browsers do: a host whose last label is a number is an IPv4 address.
    if labels[-1].isdigit() or labels[-1].lower().startswith("0x"):
        try:
            ipaddress.IPv4Address(host.rstrip("."))
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv4 address") from None


def subscribe_url(base_url: str, channels: Iterable[str]) -> str:
    """
    The URL of a hub's ``/subscribe`` stream carrying ``channels``: ``base_url``
    with one ``channel=<name>`` query parameter per name appended, in order
    and each once, after the parameters ``base_url`` already has.  When the
    path of ``base_url`` is empty or ``/`` it becomes ``/subscribe``; any
    other path is kept (a hub mounted under a prefix, say)::

        >>> subscribe_url("https://hub.example", ["orders", "news.*"])
        'https://hub.example/subscribe?channel=orders&channel=news.*'

    Each name is a channel name (see :func:`~twisted_sse.valid_channel`) or
    a pattern: a channel name followed by ``.*``, which stands for every
    channel below it (``news.*`` for ``news.eu`` and ``news.eu.fr``).  The
    names are checked here, by the hub's rules, so that a typo fails at once
    rather than as the hub's ``400``.

    :param base_url: The hub's absolute ``http`` or ``https`` URL, checked
        as :class:`~twisted_sse.EventSource` checks its URL.
    :param channels: The channel names and patterns: at least one.
    :returns: The URL to give :class:`~twisted_sse.EventSource`.
    :raises ValueError: naming the problem: the URL, an invalid channel name
        or pattern (``*`` alone included), or no channel at all.
    """
    strict_url(base_url)
    if isinstance(channels, (str, bytes)):
        raise ValueError(
            f"channels must be a list of channel names, not the string {channels!r}"
        )
    names: dict[str, None] = {}  # in order, each once
    for name in channels:
        _check_channel(name)
        names[name] = None
    if not names:
        raise ValueError("channels is empty: name at least one channel")
    parts = urlsplit(base_url)
    path = parts.path if parts.path not in ("", "/") else "/subscribe"
    # A channel name holds only ASCII letters, digits and "_.:@-": ":" and
    # "@" are escaped as a form would, and "." and "*" stay readable.
    own = parts.query.rstrip("&")
    query = [own] if own else []
    query += [f"channel={quote(name, safe='*')}" for name in names]
    return urlunsplit(
        (parts.scheme, parts.netloc, path, "&".join(query), parts.fragment)
    )


def _check_channel(name: object) -> None:
    if not isinstance(name, str):
        raise ValueError(f"a channel name must be a string, not {name!r}")
    if name == "*":
        raise ValueError(
            "invalid channel pattern '*': a pattern is a channel name "
            "followed by '.*', such as 'news.*'"
        )
    if name.endswith(".*"):
        if not valid_channel(name[:-2]):
            raise ValueError(
                f"invalid channel pattern {name!r}: a pattern is a channel name "
                "followed by '.*', such as 'news.*'"
            )
    elif not valid_channel(name):
        raise ValueError(
            f"invalid channel name {name!r}: 1 to 128 ASCII letters, digits "
            "and '_.:@-', starting with a letter or digit"
        )


@frozen
class URL:
    """An absolute ``http``/``https`` URL, ready for the wire."""

    scheme: str
    host: str  # lower case, IDNA-encoded; IPv6 literals in brackets
    port: int
    target: str  # path and query, percent-encoded ASCII

    @classmethod
    def parse(cls, text: str, base: URL | None = None) -> URL:
        """
        Parse ``text``, relative to ``base`` if given.

        :raises ValueError: if it is not an absolute http(s) URL with a host.
        """
        if base is not None:
            text = urljoin(base.text, text)
        text = text.strip()
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as e:
            raise ValueError(f"bad URL {text!r}: {e}") from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"not an http or https URL: {text!r}")
        hostname = parts.hostname
        if not hostname:
            raise ValueError(f"no host in URL: {text!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "credentials in the URL are not supported; "
                "send an Authorization header instead"
            )
        if ":" in hostname:
            host = f"[{hostname}]"
        else:
            try:
                host = hostname.encode("idna").decode("ascii")
            except UnicodeError:
                raise ValueError(f"bad host in URL: {text!r}") from None
        target = quote(parts.path or "/", safe=_URI_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=_URI_SAFE)
        return cls(scheme, host, port or DEFAULT_PORTS[scheme], target)

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``, the port only when it is not the default."""
        if self.port == DEFAULT_PORTS[self.scheme]:
            return f"{self.scheme}://{self.host}"
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def text(self) -> str:
        """The URL as text."""
        return self.origin + self.target


def split_header_list(value: str) -> list[str]:
    # Split on commas outside double-quoted strings (Fetch, "get, decode, and
    # split"), so that a quoted parameter cannot smuggle in a second type.
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == ",":
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return pieces


def mime_essence(values: Iterable[bytes]) -> str | None:
    """
    The essence (``type/subtype``, lower case, parameters dropped) of the
    MIME type that Content-Type header values name, as the Fetch standard's
    "extract a MIME type" finds it: the last valid type wins.

    :param values: The raw Content-Type header values.
    :returns: The essence, or ``None`` if no value is a valid MIME type.
    """
    essence = None
    for raw in values:
        for piece in split_header_list(raw.decode("latin-1")):
            candidate = piece.split(";", 1)[0].strip(" \t\r\n")
            if _MIME_ESSENCE.fullmatch(candidate) and candidate != "*/*":
                essence = candidate.lower()
    return essence


def check_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    pairs = tuple(headers.items() if isinstance(headers, Mapping) else headers)
    for name, value in pairs:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"bad header name: {name!r}")
        if any(char in value for char in "\r\n\0"):
            raise ValueError(f"header {name} has a CR, LF or NUL in its value")
    return pairs
