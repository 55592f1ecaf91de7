"""
twisted_sse: Server-Sent Events for Twisted.

The public API; everything else lives in private modules.
"""

from typing import TYPE_CHECKING, Any

from ._agent import MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS
from ._auth import (
    MAX_TOKEN_BYTES,
    Access,
    AuthHook,
    AuthRequest,
    Credentials,
    Grant,
    Refused,
    TokenVerifier,
)
from ._broker import (
    DEFAULT_CHANNEL_TTL,
    DEFAULT_HISTORY,
    DEFAULT_IDEMPOTENCY_TTL,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_KEY_LENGTH,
    BrokerUnavailable,
    IBroker,
    IdempotencyConflict,
    IdempotencyUnavailable,
    IPatternBroker,
    Published,
    Replayed,
    Subscription,
    Watch,
    check_publish,
    loss_event,
    publish_from_thread,
    valid_channel,
    valid_idempotency_key,
    valid_pattern,
)
from ._client import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_RECONNECTION_TIME,
    EventSource,
    EventSourceError,
    IdleTimeout,
    ReadyState,
)
from ._event import (
    MAX_RETRY,
    Event,
    MessageEvent,
    Sendable,
    encode_comment,
    encode_retry,
)
from ._fanin import Fanin
from ._heartbeat import DEFAULT_HEARTBEAT, Heartbeat
from ._hub import (
    DEFAULT_MAX_EVENT_BYTES,
    HISTORY_LOST_EVENT,
    HISTORY_LOST_HEADER,
    MAX_JSON_DEPTH,
    Authorizer,
    ChannelResource,
    Hub,
    bearer_token_authorizer,
)
from ._iterator import ITERATOR_QUEUE_BYTES, ITERATOR_QUEUE_EVENTS
from ._logs import access_log_formatter, json_log_observer
from ._memory import DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_TOTAL, MemoryBroker
from ._metrics import MetricsResource, SSECollector
from ._parser import (
    DEFAULT_MAX_EVENT_DATA_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    EventParser,
    LimitExceeded,
)
from ._presence import (
    DEFAULT_PRESENCE_MEMBERS,
    MAX_PRESENCE_MEMBERS,
    IPresenceBroker,
    LocalPresence,
    Member,
    NoPresence,
    PresenceChange,
    PresenceFollow,
    PresenceInfo,
)
from ._publisher import (
    MAX_PUBLISH_ANSWER_BYTES,
    HubUnreachable,
    PublishError,
    PublishRefused,
    publish,
)
from ._redirects import MAX_REDIRECTS
from ._redis._address import RedisAddress, parse_redis_url
from ._redis._broker import RedisBroker
from ._registry import StreamRegistry
from ._resource import FAILURE_RETRY, EventStreamResource, StreamResource, counter
from ._script import ClientScriptResource
from ._service import EventStreamService
from ._stream import MAX_LAST_EVENT_ID, EventStream, SlowClientPolicy, StreamHandler
from ._url import subscribe_url

if TYPE_CHECKING:
    from ._app import SSEApp
    from ._authhook import HTTPAuthHook
    from ._jwt import DEFAULT_LEEWAY, MIN_SECRET_BYTES, JWTVerifier, load_public_key

__version__ = "0.1.0"


#: The names of the signed-token verifier's module, imported on first use.
_JWT_NAMES = frozenset(
    {"JWTVerifier", "load_public_key", "DEFAULT_LEEWAY", "MIN_SECRET_BYTES"}
)


def __getattr__(name: str) -> Any:
    # Klein installs the default reactor when it is imported, so the app
    # that twistd serves is imported only when asked for: importing
    # twisted_sse must leave the choice of reactor to the program.
    if name == "SSEApp":
        from ._app import SSEApp

        return SSEApp
    # PyJWT (with cryptography) and treq are imported by those who use them.
    if name in _JWT_NAMES:
        from . import _jwt

        return getattr(_jwt, name)
    if name == "HTTPAuthHook":
        from ._authhook import HTTPAuthHook

        return HTTPAuthHook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_CHANNEL_TTL",
    "DEFAULT_HEARTBEAT",
    "DEFAULT_HISTORY",
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_HISTORY_TOTAL",
    "DEFAULT_IDEMPOTENCY_TTL",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LEEWAY",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MAX_EVENT_DATA_BYTES",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_PRESENCE_MEMBERS",
    "DEFAULT_RECONNECTION_TIME",
    "FAILURE_RETRY",
    "HISTORY_LOST_EVENT",
    "HISTORY_LOST_HEADER",
    "ITERATOR_QUEUE_BYTES",
    "ITERATOR_QUEUE_EVENTS",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "MAX_JSON_DEPTH",
    "MAX_KEY_LENGTH",
    "MAX_LAST_EVENT_ID",
    "MAX_PRESENCE_MEMBERS",
    "MAX_PUBLISH_ANSWER_BYTES",
    "MAX_REDIRECTS",
    "MAX_RESPONSE_HEADERS",
    "MAX_RESPONSE_HEADER_BYTES",
    "MAX_RETRY",
    "MAX_TOKEN_BYTES",
    "MIN_SECRET_BYTES",
    "Access",
    "AuthHook",
    "AuthRequest",
    "Authorizer",
    "BrokerUnavailable",
    "ChannelResource",
    "ClientScriptResource",
    "Credentials",
    "Event",
    "EventParser",
    "EventSource",
    "EventSourceError",
    "EventStream",
    "EventStreamResource",
    "EventStreamService",
    "Fanin",
    "Grant",
    "HTTPAuthHook",
    "Heartbeat",
    "Hub",
    "HubUnreachable",
    "IBroker",
    "IPatternBroker",
    "IPresenceBroker",
    "IdempotencyConflict",
    "IdempotencyUnavailable",
    "IdleTimeout",
    "JWTVerifier",
    "LimitExceeded",
    "LocalPresence",
    "Member",
    "MemoryBroker",
    "MessageEvent",
    "MetricsResource",
    "NoPresence",
    "PresenceChange",
    "PresenceFollow",
    "PresenceInfo",
    "PublishError",
    "PublishRefused",
    "Published",
    "ReadyState",
    "RedisAddress",
    "RedisBroker",
    "Refused",
    "Replayed",
    "SSEApp",
    "SSECollector",
    "Sendable",
    "SlowClientPolicy",
    "StreamHandler",
    "StreamRegistry",
    "StreamResource",
    "Subscription",
    "TokenVerifier",
    "Watch",
    "__version__",
    "access_log_formatter",
    "bearer_token_authorizer",
    "check_publish",
    "counter",
    "encode_comment",
    "encode_retry",
    "json_log_observer",
    "load_public_key",
    "loss_event",
    "parse_redis_url",
    "publish",
    "publish_from_thread",
    "subscribe_url",
    "valid_channel",
    "valid_idempotency_key",
    "valid_pattern",
]
