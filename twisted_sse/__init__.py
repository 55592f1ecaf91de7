"""
twisted_sse: Server-Sent Events for Twisted.

The public API; everything else lives in private modules.
"""

from ._client import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_RECONNECTION_TIME,
    MAX_REDIRECTS,
    EventSource,
    EventSourceError,
    IdleTimeout,
    ReadyState,
)
from ._event import Event, MessageEvent, encode_comment, encode_retry
from ._logs import access_log_formatter, json_log_observer
from ._parser import EventParser
from ._redis import RedisAddress, RedisBroker, parse_redis_url
from ._service import EventStreamService
from ._stream import (
    DEFAULT_HEARTBEAT,
    EventStream,
    EventStreamResource,
    Heartbeat,
    SlowClientPolicy,
    StreamHandler,
    StreamRegistry,
    StreamResource,
    counter,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_RECONNECTION_TIME",
    "MAX_REDIRECTS",
    "Event",
    "EventParser",
    "EventSource",
    "EventSourceError",
    "EventStream",
    "EventStreamResource",
    "EventStreamService",
    "Heartbeat",
    "IdleTimeout",
    "MessageEvent",
    "ReadyState",
    "RedisAddress",
    "RedisBroker",
    "SlowClientPolicy",
    "StreamHandler",
    "StreamRegistry",
    "StreamResource",
    "__version__",
    "access_log_formatter",
    "counter",
    "encode_comment",
    "encode_retry",
    "json_log_observer",
    "parse_redis_url",
]
