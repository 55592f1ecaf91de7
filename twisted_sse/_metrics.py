"""
Prometheus metrics for a twisted_sse server.

The hot path keeps plain integer counters (on each stream, the stream
registry and the hub); this collector turns them into Prometheus metric
families only when ``/metrics`` is scraped, through ``prometheus_client``, so
that delivering an event costs no metric-library call.

Labels never come from user input: per-channel series exist only for the
channels an operator names (``--metrics-channel``); every other channel is
counted under ``channel="other"``.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from twisted.web.resource import Resource

from ._errors import json_error
from ._registry import StreamRegistry

__all__ = ["MetricsResource", "SSECollector"]

_CLOSE_REASONS = ("closed", "lost", "aborted")
_REFUSALS = ("total", "per-ip", "draining")
_RESUMES = ("exact", "malformed", "unknown", "trimmed")


#: The statuses of sse_auth_refusals.
_REFUSALS = ("401", "403", "503")


def _by_label(
    name: str, documentation: str, label: str, keys: Iterable[str], counts: Any
) -> CounterMetricFamily:
    # One sample per fixed key, never per value seen: labels stay bounded.
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key in keys:
        family.add_metric([key], counts[key])
    return family


class SSECollector(Collector):
    """
    Collects a server's stream, hub and broker figures at scrape time.

    :param registry: The server's open streams and their history.
    :param hub: The :class:`~twisted_sse.Hub` (publishing and resume
        counters), or ``None``.
    :param broker: The broker (``available``, and ``errors`` and
        ``failovers`` if it counts them), or ``None``.
    :param channels: Channels that get their own ``channel`` label.

    :ivar guard: The server's connection guard (its ``evicted``, ``refused``
        and ``episodes`` totals), or ``None``; ``twistd sse`` sets it.
    """

    def __init__(
        self,
        registry: StreamRegistry,
        hub: Any = None,
        broker: Any = None,
        channels: Iterable[str] = (),
    ) -> None:
        self.registry = registry
        self.hub = hub
        self.broker = broker
        self.channels = frozenset(channels)
        self.guard: Any = None

    def collect(self) -> Iterator[Metric]:
        """Yield the current metric families."""
        registry = self.registry
        open_streams = GaugeMetricFamily(
            "sse_streams_open",
            "Open event streams, by channel (operator-named channels only).",
            labels=["channel"],
        )
        per_channel: Counter[str] = Counter()
        for stream in registry.streams:
            channel = stream.log_fields.get("channel")
            if channel is None:
                per_channel["none"] += 1
            elif channel in self.channels:
                per_channel[str(channel)] += 1
            else:
                per_channel["other"] += 1
        for channel in ("none", "other", *sorted(self.channels)):
            open_streams.add_metric([channel], per_channel[channel])
        yield open_streams

        yield CounterMetricFamily(
            "sse_streams_opened",
            "Event streams opened since start.",
            value=registry.opened,
        )
        yield _by_label(
            "sse_streams_closed",
            "Event streams ended: closed by the server, lost by the client, or "
            "aborted for not reading.",
            "reason",
            _CLOSE_REASONS,
            registry.closed,
        )

        frames, size, dropped = registry.totals()
        yield CounterMetricFamily(
            "sse_events_delivered",
            "Events accepted for clients (live and replayed).",
            value=frames,
        )
        yield CounterMetricFamily(
            "sse_bytes_written", "Bytes of events accepted for clients.", value=size
        )
        yield CounterMetricFamily(
            "sse_events_dropped",
            "Frames dropped by the drop-oldest and latest slow-client policies.",
            value=dropped,
        )

        yield _by_label(
            "sse_admission_refused",
            "Streams sent away with a retry hint, by reason.",
            "reason",
            _REFUSALS,
            registry.refused,
        )

        hub = self.hub
        if hub is not None:
            yield CounterMetricFamily(
                "sse_events_published",
                "Events published through the hub.",
                value=hub.published,
            )
            yield CounterMetricFamily(
                "sse_publish_failures",
                "Publishes the broker failed.",
                value=hub.publish_failures,
            )
            yield CounterMetricFamily(
                "sse_publish_unavailable",
                "Publishes refused (503) because the broker was unavailable "
                "(Redis down, no primary, slots not covered).",
                value=getattr(hub, "publish_unavailable", 0),
            )
            yield CounterMetricFamily(
                "sse_publish_replays",
                "Publishes answered as repeats of an earlier one with the same "
                "Idempotency-Key (not published again).",
                value=getattr(hub, "replays", 0),
            )
            yield _by_label(
                "sse_resumes",
                "Subscribers that resumed with Last-Event-ID, by outcome: exact, "
                "or why history was lost.",
                "outcome",
                _RESUMES,
                hub.resumes,
            )
            yield CounterMetricFamily(
                "sse_events_replayed",
                "History events replayed to resuming clients.",
                value=hub.replayed,
            )
            yield _by_label(
                "sse_auth_refusals",
                "Requests refused by the access decision: 401 (no or bad "
                "credentials), 403 (credentials that do not cover the "
                "channels), 503 (the application's hook down).",
                "status",
                _REFUSALS,
                hub.refusals,
            )

        guard = self.guard
        if guard is not None:
            yield CounterMetricFamily(
                "sse_connections_evicted",
                "Connections without a request head closed to free file descriptors.",
                value=guard.evicted,
            )
            yield CounterMetricFamily(
                "sse_connections_refused",
                "Connections closed as soon as accepted, with no descriptor to spare.",
                value=guard.refused,
            )
            yield CounterMetricFamily(
                "sse_fd_shortages",
                "Times the server ran short of file descriptors.",
                value=guard.episodes,
            )

        broker = self.broker
        if broker is not None:
            yield GaugeMetricFamily(
                "sse_broker_up",
                "Whether the broker is reachable (1) or not (0).",
                value=1 if broker.available else 0,
            )
            names = getattr(broker, "channel_names", None)
            if callable(names):
                yield GaugeMetricFamily(
                    "sse_channels",
                    "Channels the broker keeps in this process (with history "
                    "or subscribers).",
                    value=len(names()),
                )
            total = getattr(broker, "total_bytes", None)
            if isinstance(total, int):
                yield GaugeMetricFamily(
                    "sse_history_bytes",
                    "Bytes of history kept over all channels (--history-total "
                    "bounds it).",
                    value=total,
                )
            errors = getattr(broker, "errors", None)
            if isinstance(errors, int):
                yield CounterMetricFamily(
                    "sse_broker_errors", "Errors talking to the broker.", value=errors
                )
            failovers = getattr(broker, "failovers", None)
            if isinstance(failovers, int):
                yield CounterMetricFamily(
                    "sse_redis_failovers",
                    "Times Redis Sentinel named another primary.",
                    value=failovers,
                )
            redirections = getattr(broker, "redirections", None)
            if isinstance(redirections, int):
                yield CounterMetricFamily(
                    "sse_redis_redirections",
                    "MOVED and ASK answers of Redis Cluster followed (slots that "
                    "moved, or are moving, to another node).",
                    value=redirections,
                )


class MetricsResource(Resource):
    """
    ``GET /metrics`` in the Prometheus text format.

    :param collector: What to expose.
    :param token: If set, scrapes must send ``Authorization: Bearer <token>``.
    """

    isLeaf = True

    def __init__(self, collector: SSECollector, token: str | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.token = token

    def render_GET(self, request: Any) -> bytes:
        """The metrics, or 401 without the right token."""
        if self.token is not None:
            header = request.getHeader(b"Authorization") or b""
            scheme, _, presented = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(
                presented.strip(), self.token.encode("utf-8")
            ):
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="metrics"')
                return json_error(request, 401, "/metrics needs its bearer token")
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        body: bytes = generate_latest(self.registry)
        return body
