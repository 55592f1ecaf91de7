"""
End-to-end tests of the hub in ``twistd -n sse`` as a real process: HTTP
publishing with urllib, raw socket subscribers, resume across reconnects,
the loss signal, refusals, connection caps, a client that never reads, and
SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from random import Random
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import EventParser, MessageEvent

from ._http import SocketClient, http_request
from ._process import Twistd

TOKEN = "T-0123456789"
FORM = "application/x-www-form-urlencoded"
HUB_PAGE = Path(__file__).resolve().parent.parent / "docs" / "hub.md"


class Reader:
    """A subscriber on a raw socket, its events parsed as they arrive."""

    def __init__(
        self, port: int, channel: str = "news", last_event_id: str | None = None
    ) -> None:
        headers = ["Accept: text/event-stream"]
        if last_event_id is not None:
            headers.append(f"Last-Event-ID: {last_event_id}")
        self.response = SocketClient(
            port,
            http_request(f"/channels/{channel}", *headers),
            last_event_id=last_event_id or "",
        )

    @property
    def events(self) -> list[MessageEvent]:
        return self.response.events

    def until(self, event_id: str, timeout: float = 10.0) -> None:
        """
        Read until the client has seen ``event_id``: it arrived, or the
        connection resumed from it or from a later id.
        """
        self.response.wait_for(
            lambda response: (
                response.complete or _seq(self.last_event_id) >= _seq(event_id)
            ),
            timeout,
        )
        if _seq(self.last_event_id) < _seq(event_id):
            raise AssertionError(f"{event_id} never came: {self.events[-3:]}")

    def first_frame_id(self) -> str:
        """The id the stream's first frame committed."""
        self.response.wait_for(lambda response: b"\n\n" in response.body)
        parser = EventParser()
        parser.feed(self.response.body.split(b"\n\n", 1)[0] + b"\n\n")
        return parser.last_event_id

    @property
    def last_event_id(self) -> str:
        return self.response.parser.last_event_id

    def close(self) -> None:
        self.response.close()


def _seq(event_id: str) -> int:
    """The sequence number of an ``<epoch>-<seq>`` id; -1 for none."""
    return int(event_id.split("-")[1]) if event_id else -1


def post(
    port: int,
    body: bytes,
    channel: str = "news",
    content_type: str = "application/json",
    token: str | None = TOKEN,
) -> tuple[int, dict[str, str]]:
    """POST ``body``; return the status and the JSON answer."""
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/channels/{channel}",
        data=body,
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def http(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Any request; return the status, the headers and the body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        headers=headers or {},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def publish(port: int, data: str, **fields: object) -> str:
    """Publish ``data``; return its id."""
    code, answer = post(port, json.dumps({"data": data, **fields}).encode())
    assert code == 200, (code, answer)
    return answer["id"]


def rss_kb(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class HubProcessTests(SynchronousTestCase):
    """The hub of a real twistd sse, over real sockets."""

    def start(self, *args: str) -> Twistd:
        server = Twistd(*args).start()
        self.addCleanup(server.stop)
        return server

    def reader(
        self, server: Twistd, channel: str = "news", last_event_id: str | None = None
    ) -> Reader:
        reader = Reader(server.port, channel, last_event_id)
        self.addCleanup(reader.close)
        return reader

    def test_publish_to_readers(self) -> None:
        """Events POSTed over HTTP reach every reader in order, with their ids."""
        server = self.start("--publish-token", TOKEN)
        readers = [self.reader(server) for _ in range(4)]
        for reader in readers:
            self.assertEqual(reader.response.code, 200)
            reader.first_frame_id()
        ids = [publish(server.port, f"event {n}") for n in range(30)]
        for reader in readers:
            reader.until(ids[-1])
            self.assertEqual(
                [e.data for e in reader.events], [f"event {n}" for n in range(30)]
            )
            self.assertEqual([e.last_event_id for e in reader.events], ids)

    def test_resume_exactly_once(self) -> None:
        """Readers that drop and resume at random get every event exactly once."""
        server = self.start("--publish-token", TOKEN)
        random = Random(20261125)
        published: list[str] = []
        ids: list[str] = []
        # Per reader: every connection so far, and its start position.
        connections: list[list[Reader]] = [[] for _ in range(5)]
        starts: list[int] = []
        for mine in connections:
            mine.append(self.reader(server))
            starts.append(int(mine[0].first_frame_id().split("-")[1]))
        for n in range(120):
            published.append(f"e{n}")
            ids.append(publish(server.port, published[-1]))
            for mine in connections:
                current = mine[-1]
                if current.response.closed:
                    continue
                roll = random.random()
                if roll >= 0.05:
                    current.until(ids[-1])
                if roll < 0.15:
                    # Gone, a third of the time before even reading the
                    # event just published: the resume must cover it.
                    current.close()
            for mine in connections:
                if mine[-1].response.closed and random.random() < 0.5:
                    last = mine[-1].last_event_id
                    mine.append(self.reader(server, last_event_id=last))
        for who, mine in enumerate(connections):
            if mine[-1].response.closed:
                mine.append(self.reader(server, last_event_id=mine[-1].last_event_id))
            mine[-1].until(ids[-1])
            got = [e.data for reader in mine for e in reader.events]
            self.assertEqual(got, published[starts[who] :], f"reader {who}")
            self.assertGreater(len(mine), 1)
            for reader in mine:
                self.assertIsNone(reader.response.header("SSE-History-Lost"))

    def test_trimmed_resume(self) -> None:
        """Resuming from an id older than --history gets the loss signal."""
        server = self.start("--publish-token", TOKEN, "--history", "5")
        ids = [publish(server.port, str(n)) for n in range(10)]
        reader = self.reader(server, last_event_id=ids[1])
        self.assertEqual(reader.response.header("SSE-History-Lost"), "trimmed")
        reader.until(ids[-1])
        (lost,) = reader.events
        self.assertEqual(lost.type, "history-lost")
        self.assertEqual(json.loads(lost.data), {"reason": "trimmed"})
        later = publish(server.port, "live")
        reader.until(later)
        self.assertEqual(reader.events[-1].data, "live")
        # Within the history, the resume is exact.
        exact = self.reader(server, last_event_id=ids[5])
        exact.until(later)
        self.assertIsNone(exact.response.header("SSE-History-Lost"))
        self.assertEqual([e.data for e in exact.events], ["6", "7", "8", "9", "live"])

    def test_resume_large_backlog(self) -> None:
        """A client resuming ~10 MB behind (10 x its queue) gets all of it."""
        server = self.start("--publish-token", TOKEN)
        payload = "q" * 32 * 1024
        ids = [publish(server.port, payload) for _ in range(300)]
        reader = self.reader(server, last_event_id=ids[0])
        reader.until(ids[-1], timeout=30)
        self.assertIsNone(reader.response.header("SSE-History-Lost"))
        self.assertEqual([e.last_event_id for e in reader.events], ids[1:])

    def test_token(self) -> None:
        """Publishing needs the bearer token; without one configured, it is off."""
        server = self.start("--publish-token", TOKEN)
        code, answer = post(server.port, b'{"data": "x"}', token=None)
        self.assertEqual(code, 401)
        self.assertIn("Bearer token is required", answer["error"])
        code, _ = post(server.port, b'{"data": "x"}', token="wrong")
        self.assertEqual(code, 401)
        closed = self.start()
        code, answer = post(closed.port, b'{"data": "x"}')
        self.assertEqual(code, 403)
        self.assertIn("publishing over HTTP is disabled", answer["error"])

    def test_bad_bodies(self) -> None:
        """Bad publish bodies get 4xx with a reason."""
        server = self.start("--publish-token", TOKEN, "--max-event-bytes", "1000")
        cases = [
            (b'{"data": "' + b"x" * 2000 + b'"}', "application/json", 413, "larger"),
            (b'{"data": ', "application/json", 400, "not valid JSON"),
            (b'{"data": "x", "event": "a\\nb"}', "application/json", 400, "CR or LF"),
            (b'{"data": "x", "retry": -5}', "application/json", 400, "retry must"),
            (b'{"event": "x"}', "application/json", 400, "'data' is required"),
            (b"<x/>", "application/xml", 415, "unsupported Content-Type"),
            (b"data=a&data=b", FORM, 400, "'data' is given more than once"),
            (b"data=x&retry=soon", FORM, 400, "retry must"),
        ]
        for body, content_type, code, reason in cases:
            got, answer = post(server.port, body, content_type=content_type)
            self.assertEqual(got, code, body)
            self.assertIn(reason, answer["error"])
        self.assertEqual(
            post(server.port, b"x", channel="bad%20name", content_type="text/plain")[0],
            400,
        )

    def test_curl_form_publish(self) -> None:
        """The docs' curl -d data=hello -d event=ping publishes a ping to readers."""
        if shutil.which("curl") is None:
            if os.environ.get("CI") == "true":
                self.fail("curl is not installed")
            raise SkipTest("curl is not installed")
        (command,) = [
            block
            for block in re.findall(r"```sh\n(.*?)```", HUB_PAGE.read_text(), re.S)
            if "-d data=hello -d event=ping" in block
        ]
        server = self.start("--publish-token", TOKEN)
        reader = self.reader(server)
        reader.first_frame_id()
        done = subprocess.run(
            ["sh", "-c", command.replace("localhost:3000", f"127.0.0.1:{server.port}")],
            env={**os.environ, "TWISTED_SSE_PUBLISH_TOKEN": TOKEN},
            capture_output=True,
            timeout=30,
            check=True,
        )
        event_id = json.loads(done.stdout)["id"]
        reader.until(event_id)
        (event,) = reader.events
        self.assertEqual(
            (event.type, event.data, event.last_event_id), ("ping", "hello", event_id)
        )

    def test_errors_are_json(self) -> None:
        """Unknown paths, bad methods and bad URLs get JSON errors, never HTML."""
        server = self.start("--publish-token", TOKEN)
        cases = [
            ("GET", "/channels/", 404, "no channel here: a channel is /channels/"),
            ("GET", "/channels/a/b", 404, "no channel here"),
            ("GET", "/channels", 404, "no channel here"),
            ("GET", "/nope", 404, "not found: this server answers /, /events"),
            ("GET", "/events/1", 404, "not found"),
            ("PUT", "/channels/news", 405, "method PUT not allowed here: use GET"),
            ("DELETE", "/channels/news", 405, "method DELETE not allowed here"),
            ("POST", "/", 405, "method POST not allowed here: use GET, HEAD"),
            ("POST", "/events", 405, "use GET, HEAD, OPTIONS"),
            ("DELETE", "/healthz", 405, "use GET, HEAD"),
            ("POST", "/metrics", 405, "use GET, HEAD"),
            ("GET", "/channels/%FF", 400, "the URL is not UTF-8"),
            ("GET", "/channels/bad%20name", 400, "invalid channel name"),
        ]
        for method, path, code, reason in cases:
            got, headers, body = http(server.port, method, path)
            self.assertEqual(got, code, (method, path))
            self.assertEqual(headers["Content-Type"], "application/json", path)
            self.assertIn(reason, json.loads(body)["error"], (method, path))
            if code == 405:
                self.assertIn("GET, HEAD", headers["Allow"])
        # A publish that passes the checks on its head, to a path below a
        # channel: 404 too, and nothing published.
        reader = self.reader(server)
        reader.first_frame_id()
        got, headers, body = http(
            server.port,
            "POST",
            "/channels/news/x",
            b"data=x",
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": FORM},
        )
        self.assertEqual((got, headers["Content-Type"]), (404, "application/json"))
        # HEAD: the error's status and type, no body.
        got, headers, body = http(server.port, "HEAD", "/nope")
        self.assertEqual(
            (got, headers["Content-Type"], body), (404, "application/json", b"")
        )
        marker = publish(server.port, "after the errors")
        reader.until(marker)
        self.assertEqual([e.data for e in reader.events], ["after the errors"])
        self.assertNotIn(b"Traceback", server.output)

    def test_huge_body(self) -> None:
        """
        A publish is judged on its head: a declared 20 MB body gets 413 and
        one without the token 401 before any of it is sent (no 100
        Continue); an endless chunked body without the token is answered
        at once and cut off after the body limit, not read for ever; and
        the server goes on publishing.
        """
        server = self.start("--publish-token", TOKEN, "--max-event-bytes", "1000")
        for token, code in ((TOKEN, b"413"), (None, b"401")):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.settimeout(10)
                sock.sendall(
                    _post_head(
                        token,
                        "Content-Length: 20000000",
                        "Expect: 100-continue",
                    )
                )
                answer = _read_all(sock)
            self.assertTrue(answer.startswith(b"HTTP/1.1 " + code), answer)
            self.assertNotIn(b"100 Continue", answer)
        # An endless chunked body: the answer comes at once, and the server
        # stops reading long before the client stops sending.
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.settimeout(10)
            sock.sendall(_post_head(None, "Transfer-Encoding: chunked"))
            answer = sock.recv(65536)
            self.assertTrue(answer.startswith(b"HTTP/1.1 401"), answer)
            chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
            sent = 0
            with self.assertRaises(OSError):
                while sent < 200_000_000:
                    sock.sendall(chunk)
                    sent += len(chunk)
            # What the kernel's buffers took, not what the server read.
            self.assertLess(sent, 50_000_000)
        reader = self.reader(server)
        reader.first_frame_id()
        reader.until(publish(server.port, "after"))
        self.assertEqual([e.data for e in reader.events], ["after"])

    def test_many_channels_bounded(self) -> None:
        """
        Publishing once to each of 5,000 channels (1 KB events, pipelined on
        one connection) keeps the history within --history-total, and the
        server's memory stays bounded.
        """
        server = self.start("--publish-token", TOKEN, "--history-total", "262144")
        assert server.process is not None
        before = rss_kb(server.process.pid)
        body = json.dumps({"data": "x" * 1000}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.settimeout(30)
            for start in range(0, 5000, 500):
                requests = b"".join(
                    _post_head(TOKEN, f"Content-Length: {len(body)}")
                    .replace(b"/channels/news", b"/channels/c%d" % n)
                    .replace(b"text/plain", b"application/json")
                    + body
                    for n in range(start, start + 500)
                )
                sock.sendall(requests)
                answered = 0
                received = b""
                while answered < 500:
                    more = sock.recv(1 << 20)
                    self.assertTrue(
                        more, f"closed after {answered} answers: {received[-300:]!r}"
                    )
                    received += more
                    answered = received.count(b"HTTP/1.1 200 OK")
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{server.port}/metrics", timeout=10
        ).read()
        history = _sample(metrics, b"sse_history_bytes")
        self.assertLessEqual(history, 262144)
        self.assertGreater(history, 200_000)
        # A channel left without history (nor subscribers) is forgotten.
        self.assertLess(_sample(metrics, b"sse_channels"), 262144 // 1000)
        # 5 MB of events went in; far less stays.
        self.assertLess(rss_kb(server.process.pid) - before, 4 * 1024)

    def test_connection_cap(self) -> None:
        """Over --max-connections, a client gets 200, a retry: and an end."""
        server = self.start(
            "--publish-token", TOKEN, "--max-connections", "2", "--busy-retry", "700"
        )
        kept = [self.reader(server), self.reader(server)]
        for reader in kept:
            reader.first_frame_id()
        refused = self.reader(server)
        self.assertEqual(refused.response.code, 200)
        refused.response.wait_for(lambda response: response.complete)
        retry = refused.response.parser.retry
        self.assertIsNotNone(retry)
        assert retry is not None
        self.assertTrue(700 <= retry <= 1400)
        self.assertIn(b"too many connections", refused.response.body)
        self.assertEqual(refused.events, [])
        self.assertTrue(refused.response.at_eof())
        kept[0].close()
        time.sleep(0.2)
        again = self.reader(server)
        again.first_frame_id()
        self.assertFalse(again.response.complete)

    def test_subscribe_token(self) -> None:
        """
        With --subscribe-token, a subscriber presents it as a Bearer header
        or as ?access_token=; one without it, or with another, gets 401.
        """
        server = self.start("--publish-token", TOKEN, "--subscribe-token", "R-1")
        refused = SocketClient(server.port, http_request("/channels/news"))
        self.addCleanup(refused.close)
        self.assertEqual(refused.code, 401)
        wrong = SocketClient(server.port, http_request("/channels/news?access_token=R"))
        self.addCleanup(wrong.close)
        self.assertEqual(wrong.code, 401)
        self.assertIn("invalid_token", wrong.header("WWW-Authenticate") or "")
        by_header = SocketClient(
            server.port, http_request("/channels/news", "Authorization: Bearer R-1")
        )
        by_query = SocketClient(
            server.port, http_request("/channels/news?access_token=R-1")
        )
        for response in (by_header, by_query):
            self.addCleanup(response.close)
            self.assertEqual(response.code, 200)
        # The counter stream needs no token.
        counter = SocketClient(server.port, http_request("/events"))
        self.addCleanup(counter.close)
        self.assertEqual(counter.code, 200)

    def test_stalled_reader(self) -> None:
        """
        A client that never reads is cut off while ~20 MB is published; another
        keeps receiving and the server's memory stays bounded.
        """
        server = self.start("--publish-token", TOKEN)
        assert server.process is not None
        reader = self.reader(server)
        reader.first_frame_id()
        # Warm up (imports, buffers, one full history's worth of bookkeeping).
        for n in range(20):
            reader.until(publish(server.port, f"warm {n}"))
        before = rss_kb(server.process.pid)

        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        stalled.connect(("127.0.0.1", server.port))
        self.addCleanup(stalled.close)
        stalled.sendall(b"GET /channels/news HTTP/1.1\r\nHost: x\r\n\r\n")

        payload = "z" * 32 * 1024
        last = ""
        for _ in range(640):  # 640 x 32 KiB = 20 MiB
            last = publish(server.port, payload)
            reader.until(last)
        after = rss_kb(server.process.pid)
        self.assertEqual(len(reader.events), 20 + 640)

        # The stalled client was cut off: it finds the end (or a reset)
        # after much less than what was published.
        stalled.settimeout(10)
        received = 0
        try:
            while chunk := stalled.recv(65536):
                received += len(chunk)
        except ConnectionResetError:
            pass
        self.assertLess(received, 10 * 1024 * 1024)
        self.assertLess(after - before, 50 * 1024, f"RSS {before} -> {after} KiB")
        # And the server still serves.
        reader.until(publish(server.port, "still here"))

    def test_sigterm_drains(self) -> None:
        """SIGTERM ends every stream with the terminating chunk within --drain."""
        server = self.start("--publish-token", TOKEN, "--drain", "1")
        readers = [self.reader(server, f"c{n % 3}") for n in range(6)]
        for reader in readers:
            reader.first_frame_id()
        counter = SocketClient(server.port, http_request("/events"))
        self.addCleanup(counter.close)
        self.assertEqual(counter.read_frame(), b"retry: 1000\n\n")
        assert server.process is not None
        began = time.monotonic()
        server.process.send_signal(15)
        for reader in readers:
            # The terminating chunk, not a cut (which fails the wait).
            reader.response.wait_for(lambda response: response.complete, 5)
            took = time.monotonic() - began
            self.assertLess(took, 1.5)
            # The last frame is a jittered hint: 1000 ms plus up to --drain.
            hint = reader.response.body.rsplit(b"\n\n", 2)[-2]
            self.assertRegex(hint, rb"^retry: [0-9]+$")
            self.assertTrue(1000 <= int(hint[7:]) <= 2000, hint)
            self.assertTrue(reader.response.at_eof())
        counter.wait_for(lambda response: response.complete, 5)
        self.assertTrue(counter.at_eof())
        # twistd exits once the drain is done (by the signal's own status).
        self.assertIn(server.process.wait(10), (0, -15))


def _post_head(token: str | None, *headers: str) -> bytes:
    lines = ["POST /channels/news HTTP/1.1", "Host: x", "Content-Type: text/plain"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return "\r\n".join([*lines, *headers]).encode("ascii") + b"\r\n\r\n"


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


def _sample(metrics: bytes, name: bytes) -> float:
    """The value of an unlabelled sample in a /metrics page."""
    for line in metrics.splitlines():
        if line.startswith(name + b" "):
            return float(line.split()[1])
    raise AssertionError(f"no {name!r} in /metrics")
