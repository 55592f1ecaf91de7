"""
Tests for L{twisted_sse._testing._reader}: one HTTP/1.x response read
strictly as it arrives, so a framing bug fails a test.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._testing._reader import MalformedResponse, ResponseReader

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


class ReaderTests(SynchronousTestCase):
    """Bodies by each framing, byte by byte too; anything else is refused."""

    def feed_bytewise(self, reader: ResponseReader, data: bytes) -> bytes:
        return b"".join(reader.feed(data[i : i + 1]) for i in range(len(data)))

    def test_chunked(self) -> None:
        """A chunked body is de-framed, whatever the split; 0 ends it."""
        wire = (
            HEAD
            + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n"
        )
        for feed in (lambda r: r.feed(wire), lambda r: self.feed_bytewise(r, wire)):
            reader = ResponseReader(head_only=False)
            self.assertEqual(feed(reader), b"hello!")
            self.assertTrue(reader.complete)
            self.assertEqual((reader.code, reader.phrase), (200, b"OK"))

    def test_content_length(self) -> None:
        """A Content-Length body ends at its length."""
        reader = ResponseReader(head_only=False)
        self.assertEqual(reader.feed(HEAD + b"Content-Length: 3\r\n\r\nabc"), b"abc")
        self.assertTrue(reader.complete)

    def test_until_close(self) -> None:
        """A body with no framing ends with the connection."""
        reader = ResponseReader(head_only=False)
        self.assertEqual(reader.feed(HEAD + b"\r\ndata: 1\n\n"), b"data: 1\n\n")
        self.assertFalse(reader.complete)
        reader.eof()
        self.assertTrue(reader.complete)

    def test_head_and_interim(self) -> None:
        """An interim 1xx is skipped; a HEAD's response has no body."""
        reader = ResponseReader(head_only=True)
        reader.feed(
            b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD + b"Content-Length: 9\r\n\r\n"
        )
        self.assertEqual(reader.code, 200)
        self.assertTrue(reader.head_done and reader.complete)

    def test_malformed(self) -> None:
        """Each framing error is refused, naming it."""
        for wire, words in [
            (b"HTTP/2 200 OK\r\n\r\n", "status line"),
            (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
            (
                HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
                "longer than its size",
            ),
            (HEAD + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
            (HEAD + b"Content-Length: 1\r\n\r\nab", "after the end"),
            (HEAD + b" folded\r\n\r\n", "header line"),
        ]:
            reader = ResponseReader(head_only=False)
            with self.assertRaises(MalformedResponse) as raised:
                reader.feed(wire)
            self.assertIn(words, str(raised.exception), wire)
