"""
Tests for L{twisted_sse._check._report}: every check once, the exit code,
the JSON document and the table.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._check import judge, render_text
from twisted_sse._check._report import CHECKS

from ._check_fakes import URL, head, observed, stream


class ReportTests(SynchronousTestCase):
    """The report: every check, the exit code, JSON and the table."""

    def test_every_check_once(self) -> None:
        """The report has each check once, in order, with a status and reason."""
        report = judge(observed())
        names = [check.name for check in report.checks]
        self.assertEqual(len(names), len(CHECKS))
        self.assertEqual(len(set(names)), len(names))
        self.assertEqual(names[0], "status")
        self.assertEqual(report.exit_code, 0)

    def test_failure_exits_1(self) -> None:
        """One failed check makes the exit code 1."""
        obs = observed(stream=stream(head=head(200, ("content-encoding", "gzip"))))
        self.assertEqual(judge(obs).exit_code, 1)

    def test_json(self) -> None:
        """The JSON document has the URL, timings and each check's fields."""
        document = judge(observed()).to_json()
        text = json.dumps(document)
        self.assertEqual(json.loads(text)["url"], URL)
        self.assertEqual(document["result"], "pass")
        timings = document["timings"]
        assert isinstance(timings, dict)
        self.assertEqual(timings["response_head"], 0.01)
        checks = document["checks"]
        assert isinstance(checks, list)
        for check in checks:
            self.assertLessEqual({"name", "status", "reason"}, set(check))
            self.assertIn(check["status"], {"pass", "fail", "warn", "skip"})

    def test_table(self) -> None:
        """The table has a line per check and a summary; colour only if asked."""
        report = judge(observed())
        plain = render_text(report)
        self.assertNotIn("\x1b[", plain)
        for check in report.checks:
            self.assertIn(f"  {check.name}", plain)
        self.assertTrue(plain.rstrip().endswith("skipped"), plain)
        self.assertIn("\x1b[32mPASS\x1b[0m", render_text(report, colour=True))
