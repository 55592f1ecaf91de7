"""
Tests for L{twisted_sse._check._lint}: what is wrong in a stream's lines.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._check._lint import LintParser


class LintTests(SynchronousTestCase):
    """The line linter: what is wrong in a stream's bytes."""

    def lint(self, data: bytes, end: bool = False) -> LintParser:
        parser = LintParser("", "")
        parser.feed(data)
        if end:
            parser.end()
        return parser

    def levels(self, parser: LintParser) -> dict[str, str]:
        return {issue.message: issue.level for issue in parser.issues.values()}

    def test_clean(self) -> None:
        """A valid stream has no issue; own ids are noted per event."""
        parser = self.lint(
            b"\xef\xbb\xbfretry: 10\n: hi\n\nid: 1\ndata: a\n\ndata: b\n\n"
        )
        self.assertEqual(parser.issues, {})
        self.assertEqual(list(parser.own_ids), ["1", None])

    def test_misspelt_field(self) -> None:
        """'Data' and ' data' fail (clients drop them); unknown fields warn."""
        levels = self.levels(self.lint(b"Data: x\n data: y\nfoo: z\n\n"))
        self.assertEqual(sorted(levels.values()), ["fail", "fail", "warn"])
        self.assertTrue(any("'Data' is not 'data'" in m for m in levels))

    def test_id_and_retry(self) -> None:
        """An id with NUL and a retry not all digits fail; an empty retry warns."""
        levels = self.levels(self.lint(b"id: a\x00b\nretry: 1.5\nretry:\n\n"))
        self.assertEqual(
            sorted(levels.values()), ["fail", "fail", "warn"], list(levels)
        )

    def test_utf8_and_bom(self) -> None:
        """Invalid UTF-8 and a second BOM fail."""
        levels = self.levels(self.lint(b"data: \xff\n\xef\xbb\xbfdata: x\n\n"))
        self.assertEqual(list(levels.values()), ["fail", "fail"])

    def test_repeats_counted(self) -> None:
        """An issue on many lines is one issue with a count."""
        parser = self.lint(b"x: 1\n\n" * 5)
        (issue,) = parser.issues.values()
        self.assertEqual((issue.count, issue.message[:6]), (5, "line 1"))

    def test_kinds_bounded(self) -> None:
        """Made-up field names without end are noted as a bounded set."""
        parser = self.lint(b"".join(b"f%d: x\n" % n for n in range(1000)))
        self.assertLessEqual(len(parser.issues), 21)
        self.assertEqual(sum(issue.count for issue in parser.issues.values()), 1000)

    def test_unfinished_and_lone_cr(self) -> None:
        """An event cut by the end warns; lone CRs are counted."""
        parser = self.lint(b"data: a\r\rdata: b\r", end=True)
        self.assertIn("unfinished", parser.issues)
        self.assertEqual(parser.lone_crs, 3)
