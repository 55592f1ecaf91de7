"""
A quick run of ``bench/auth.py``, so that the benchmark of what a token
costs at connection set-up keeps working: a few hundred connections per
configuration, no timing assertion.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from .test_bench_smoke import run_bench

AUTH = Path(__file__).resolve().parent.parent / "bench" / "auth.py"

#: Every configuration, in the order the script runs them.
CONFIGS = [
    "none",
    "static",
    "hs256-same",
    "hs256-distinct",
    "rs256-same",
    "rs256-distinct",
    "es256-distinct",
    "hs256-cookie",
]


class AuthBenchSmokeTests(SynchronousTestCase):
    """``python bench/auth.py --quick`` measures every configuration."""

    def setUp(self) -> None:
        if shutil.which("openssl") is None:
            raise self.skipTest("no openssl to make the RSA and EC keys")
        self.out = Path(tempfile.mkdtemp(prefix="twisted-sse-bench-auth-"))
        self.addCleanup(shutil.rmtree, self.out, True)

    def run_quick(self) -> tuple[str, list[dict[str, Any]]]:
        """Run the script's quick mode unpinned: its output and JSON lines."""
        return run_bench(self, AUTH, "--quick", "--out", str(self.out))

    @pytest.mark.slow
    def test_quick(self) -> None:
        """
        A line per configuration and per memory server, every set-up
        answered 200 by a live server, and the tables with a bar per JWT
        configuration.
        """
        stdout, results = self.run_quick()
        cpu = [r for r in results if r["part"] == "cpu"]
        memory = [r for r in results if r["part"] == "memory"]
        self.assertEqual([r["config"] for r in cpu], CONFIGS)
        self.assertEqual([r["distinct"] for r in memory], [False, True])
        for result in results:
            self.assertNotIn("error", result)
            self.assertEqual(result["ok"], result["n"])
            self.assertTrue(result["server_alive"])
        for result in cpu:
            self.assertEqual(result["statuses"], {"200": 300})
            self.assertGreater(result["cpu_us_per_setup"], 0)
        for result in memory:
            self.assertEqual(len(result["rss_kb"]), 3)
        self.assertIn("| 1 no auth | - | ", stdout)
        self.assertIn("| 8 HS256 in the cookie, same token | cookie | ", stdout)
        bars = [line for line in stdout.splitlines() if line.startswith("bar, ")]
        self.assertEqual(len(bars), 6)
        self.assertIn("| 300 | ", stdout)  # The memory table's last row.
        self.assertEqual(len(list(self.out.glob("*-auth.jsonl"))), 1)
