"""
``twistd -n sse`` read by SSE clients that people really use: ``curl -N``,
Node's ``eventsource`` package, and Python's ``httpx-sse`` and
``sseclient-py``.  Each reads the counter and a channel; what each reports is
compared, exactly, with what the spec says a client must see.
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ._process import ClientProcess, Twistd
from ._publish import OPENING, publish
from ._tools import JS, require_module, require_node_package, require_program

TOKEN = "real-clients-token"
#: Seconds a client may take; only a hung one gets near it.
TIMEOUT = 30.0

#: What the tests publish on a channel: the JSON bodies of the POSTs.
PUBLISHED: list[dict[str, Any]] = [
    {"data": "plain"},
    {"data": "two\nlines", "event": "note"},
    {"data": "ünïcødé ✓ 🎉"},
    {"data": {"n": 1, "ok": True}},
    {"data": "  two leading spaces"},
    {"data": "a\r\nb\rc", "event": "note"},
    {"data": "", "event": "note"},
]

#: The (type, data) a client must report for each, per the spec: lines are
#: joined with LF whatever ended them (CR cannot be transmitted), exactly one
#: space after the colon is removed, JSON data is sent compact, and one
#: empty data line is an event with empty data.
EXPECTED = [
    ("message", "plain"),
    ("note", "two\nlines"),
    ("message", "ünïcødé ✓ 🎉"),
    ("message", '{"n":1,"ok":true}'),
    ("message", "  two leading spaces"),
    ("note", "a\nb\nc"),
    ("note", ""),
]

#: The fields of each event on the wire, after its ``id:`` line.
WIRE = [
    "data: plain\n",
    "event: note\ndata: two\ndata: lines\n",
    "data: ünïcødé ✓ 🎉\n",
    'data: {"n":1,"ok":true}\n',
    "data:   two leading spaces\n",
    "event: note\ndata: a\ndata: b\ndata: c\n",
    "event: note\ndata: \n",
]

#: The counter, as every client must report it: data 1, 2, 3.
COUNTER = [("message", "1"), ("message", "2"), ("message", "3")]


class RealClientTests(SynchronousTestCase):
    """Each client reads the counter and a channel of a real server."""

    def setUp(self) -> None:
        self.server = Twistd("--interval", "0.1", "--publish-token", TOKEN).start()
        self.addCleanup(self.server.stop)
        self.base = f"http://127.0.0.1:{self.server.port}"

    def publish_all(self, channel: str) -> list[str]:
        """Publish :data:`PUBLISHED` on ``channel``; return the ids."""
        return [publish(self.base, channel, TOKEN, **body) for body in PUBLISHED]

    def expected(self, ids: list[str]) -> list[tuple[str, str, str]]:
        """:data:`EXPECTED` with each event's id: (type, data, id)."""
        return [
            (kind, data, event_id)
            for (kind, data), event_id in zip(EXPECTED, ids, strict=True)
        ]

    # curl -N

    def curl(self, path: str) -> ClientProcess:
        curl = require_program("curl", "apt-get install curl")
        return ClientProcess(
            [curl, "-sS", "-N", "--max-time", str(TIMEOUT), self.base + path], self
        )

    def test_curl_counter(self) -> None:
        """curl -N prints the counter's exact bytes: retry, then data 1, 2, 3."""
        output = self.curl("/events").read_until(re.compile(rb"data: 3\n\n"))
        self.assertEqual(output, b"retry: 1000\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n")

    def test_curl_channel(self) -> None:
        """curl -N prints a channel's exact bytes: each event with its id."""
        client = self.curl("/channels/curl")
        opening = client.read_until(OPENING)
        ids = self.publish_all("curl")
        frames = "".join(
            f"id: {event_id}\n{fields}\n"
            for event_id, fields in zip(ids, WIRE, strict=True)
        ).encode("utf-8")
        output = client.read_until(re.compile(re.escape(frames) + rb"$"))
        self.assertEqual(output, opening + frames)
        self.assertRegex(opening, OPENING.pattern + rb"\Z")

    # Node's eventsource package

    def eventsource(self, path: str, count: int) -> ClientProcess:
        node = require_node_package("eventsource")
        script = str(JS / "eventsource_client.mjs")
        return ClientProcess(
            [node, script, self.base + path, str(count), "note"], self, cwd=str(JS)
        )

    def test_eventsource_counter(self) -> None:
        """Node's eventsource reports message events 1, 2, 3."""
        lines = self.eventsource("/events", 3).wait().splitlines()
        reports = [json.loads(line) for line in lines]
        self.assertEqual(reports[0], {"open": True})
        self.assertEqual(
            [(r["type"], r["data"]) for r in reports[1:]], COUNTER, reports
        )
        self.assertEqual([r["lastEventId"] for r in reports[1:]], ["", "", ""])

    def test_eventsource_channel(self) -> None:
        """Node's eventsource reports each channel event, type, data and id."""
        client = self.eventsource("/channels/node", len(PUBLISHED))
        client.read_until(re.compile(rb'\{"open":true\}\n'))
        ids = self.publish_all("node")
        reports = [json.loads(line) for line in client.wait().splitlines()]
        self.assertEqual(reports[0], {"open": True})
        self.assertEqual(
            [(r["type"], r["data"], r["lastEventId"]) for r in reports[1:]],
            self.expected(ids),
        )

    # httpx-sse

    def test_httpx_sse_counter(self) -> None:
        """httpx-sse reports the retry, then message events 1, 2, 3."""
        require_module("httpx_sse", "httpx-sse")
        import httpx
        from httpx_sse import connect_sse

        with (
            httpx.Client(timeout=TIMEOUT) as client,
            connect_sse(client, "GET", self.base + "/events") as source,
        ):
            reports = []
            for event in source.iter_sse():
                reports.append((event.event, event.data, event.id, event.retry))
                if len(reports) == 4:
                    break
        # httpx-sse reports the retry-only block as an event with no data;
        # a browser fires nothing for it.
        self.assertEqual(reports[0], ("message", "", "", 1000))
        self.assertEqual(
            reports[1:], [(kind, data, "", None) for kind, data in COUNTER]
        )

    def test_httpx_sse_channel(self) -> None:
        """httpx-sse reports each channel event, type, data and id."""
        require_module("httpx_sse", "httpx-sse")
        import httpx
        from httpx_sse import connect_sse

        with (
            httpx.Client(timeout=TIMEOUT) as client,
            connect_sse(client, "GET", self.base + "/channels/httpx") as source,
        ):
            # The headers are in: the subscription is live.
            ids = self.publish_all("httpx")
            reports = []
            for event in source.iter_sse():
                reports.append((event.event, event.data, event.id, event.retry))
                if len(reports) == 1 + len(PUBLISHED):
                    break
        opening = reports.pop(0)
        self.assertEqual((opening[0], opening[1], opening[3]), ("message", "", 1000))
        self.assertEqual(
            reports,
            [
                (kind, data, event_id, None)
                for kind, data, event_id in self.expected(ids)
            ],
        )

    # sseclient-py

    def sseclient(self, path: str, count: int) -> list[tuple[str, str, str | None]]:
        """Read ``count`` events with sseclient-py, publishing once connected."""
        require_module("sseclient", "sseclient-py")
        import sseclient

        with urllib.request.urlopen(self.base + path, timeout=TIMEOUT) as response:
            # The headers are in: a channel subscription is live.
            self.ids = self.publish_all("sseclient") if "channels" in path else []
            reports = []
            for event in sseclient.SSEClient(response).events():
                reports.append((event.event, event.data, event.id))
                if len(reports) == count:
                    break
        return reports

    def test_sseclient_counter(self) -> None:
        """sseclient-py reports message events 1, 2, 3."""
        reports = self.sseclient("/events", 3)
        self.assertEqual(reports, [(kind, data, None) for kind, data in COUNTER])

    def test_sseclient_channel(self) -> None:
        """sseclient-py reports each channel event, type, data and id."""
        reports = self.sseclient("/channels/sseclient", len(PUBLISHED))
        self.assertEqual(reports, self.expected(self.ids))
