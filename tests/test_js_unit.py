"""
The browser client's unit tests (``tests/js/sse.test.mjs``, Node's built-in
test runner with fakes for the browser), run from the Python suite.
"""

from __future__ import annotations

import subprocess

from twisted.trial.unittest import SynchronousTestCase

from ._tools import JS, ROOT, require_program

#: Seconds the whole Node run may take; only a hung test gets near it.
TIMEOUT = 300.0


class NodeUnitTests(SynchronousTestCase):
    """``node --test tests/js/sse.test.mjs``."""

    def test_sse_js(self) -> None:
        """Every unit test of sse.js passes under ``node --test``."""
        node = require_program("node", "apt-get install nodejs")
        result = subprocess.run(
            [node, "--test", str(JS / "sse.test.mjs")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        # A run that found no test would exit 0 too.
        self.assertIn("# fail 0", output)
        self.assertNotIn("# tests 0", output)
