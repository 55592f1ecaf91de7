"""
Tests for L{twisted_sse._check._h1}: an HTTP/1.1 response read by hand,
bounded, as it is on the wire.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._check._h1 import H1Reader
from twisted_sse._check._http import Head, HTTPError


class H1ReaderTests(SynchronousTestCase):
    """H1Reader: an HTTP/1.1 response, bounded, as it is on the wire."""

    CHUNKED = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    )

    def read(self, data: bytes, method: str = "GET", size: int = 0) -> H1Reader:
        reader = H1Reader(method)
        self.pieces: list[Head | bytes] = []
        step = size or len(data)
        for start in range(0, len(data), step):
            self.pieces += reader.feed(data[start : start + step])
        return reader

    def body(self) -> bytes:
        return b"".join(piece for piece in self.pieces if isinstance(piece, bytes))

    def test_chunked(self) -> None:
        """A chunked body is de-chunked, however the bytes are split."""
        for size in [0, 1, 2, 7]:
            reader = self.read(self.CHUNKED, size=size)
            self.assertTrue(reader.done)
            self.assertEqual(self.body(), b"hello world")
            assert reader.head is not None
            self.assertEqual(reader.head.framing, "chunked")
            self.assertEqual(reader.head.get("Content-Type"), ["text/event-stream"])
            self.assertIsNone(reader.end())

    def test_length(self) -> None:
        """A Content-Length body ends at its length; a cut one is reported."""
        reader = self.read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloXX")
        self.assertTrue(reader.done)
        self.assertEqual((self.body(), reader.extra), (b"hello", 2))
        reader = self.read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
        self.assertIn("2 bytes before the end", reader.end() or "")

    def test_close_delimited(self) -> None:
        """Without length or chunking, the body runs to the close."""
        reader = self.read(b"HTTP/1.0 200 OK\nContent-Type: x\n\nab")
        assert reader.head is not None
        self.assertEqual(
            (reader.head.framing, reader.head.version), ("close", "HTTP/1.0")
        )
        self.assertIsNone(reader.end())

    def test_head_request(self) -> None:
        """A HEAD response ends with its head; bytes after it are counted."""
        reader = self.read(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nretry: 1\n\n",
            method="HEAD",
        )
        self.assertTrue(reader.done)
        self.assertEqual((self.body(), reader.extra), (b"", 10))

    def test_interim(self) -> None:
        """A 1xx head is skipped; obs-fold lines join their header."""
        reader = self.read(
            b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n"
        )
        assert reader.head is not None
        self.assertEqual(reader.head.status, 200)
        self.assertEqual(reader.head.get("x-a"), ["one two"])

    def test_caps(self) -> None:
        """Heads past 16384 bytes or 500 lines, long chunk lines, raise at once."""
        with self.assertRaisesRegex(HTTPError, "longer than 16384 bytes"):
            H1Reader("GET").feed(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 20000)
        with self.assertRaisesRegex(HTTPError, "more than 500"):
            H1Reader("GET").feed(b"HTTP/1.1 200 OK\r\n" + b"X:\r\n" * 501)
        reader = H1Reader("GET")
        reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        with self.assertRaisesRegex(HTTPError, "chunk-size line"):
            reader.feed(b"1" * 2000)

    def test_malformed(self) -> None:
        """Bad status lines, headers, lengths and chunk sizes raise."""
        for data in [
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ]:
            with self.assertRaises(HTTPError, msg=data):
                H1Reader("GET").feed(data)

    def test_end_messages(self) -> None:
        """A close before or inside the response says where."""
        self.assertIn("without a response", H1Reader("GET").end() or "")
        reader = H1Reader("GET")
        reader.feed(b"HTTP/1.1 200")
        self.assertIn("inside the response head", reader.end() or "")
        reader = H1Reader("GET")
        reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        self.assertIn("no last chunk", reader.end() or "")
