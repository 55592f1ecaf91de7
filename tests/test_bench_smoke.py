"""
Tiny runs of ``bench/run.py`` and ``bench/setup_cpu.py``, so the benchmarks
keep working: ten clients, a second per phase, no timing assertion.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"
#: The C load client and publisher of the benchmarks (bench/subscriptions.py's
#: default ``--client-src``).
HARNESS_CLIENT = RUN.parent / "client"

#: What every result line reports (bench/run.py's RESULT_KEYS).
KEYS = {
    "config",
    "n",
    "connected",
    "setup_rate",
    "rss_per_conn_kb",
    "paced_lat_p50_ms",
    "paced_lat_p99_ms",
    "sat_deliveries_per_s",
    "sat_lat_p50_ms",
    "sat_lat_p99_ms",
    "lost_connections",
    "lost_events",
}


def run_bench(
    case: SynchronousTestCase, script: Path, *args: str
) -> tuple[str, list[dict[str, Any]]]:
    """
    Run a benchmark script unpinned (no CPU given to server or client): its
    output and its JSON lines; ``case`` fails if it exits with an error.
    """
    done = subprocess.run(
        [sys.executable, str(script), *args, "--server-cpu", "", "--client-cpu", ""],
        capture_output=True,
        text=True,
        timeout=300,
    )
    case.assertEqual(done.returncode, 0, done.stdout + done.stderr)
    results = [
        json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")
    ]
    return done.stdout, results


class BenchSmokeTests(SynchronousTestCase):
    """``python bench/run.py`` measures both configurations and loses nothing."""

    def setUp(self) -> None:
        if shutil.which(os.environ.get("CC", "cc")) is None:
            raise self.skipTest("no C compiler to build the load client")
        self.out = Path(tempfile.mkdtemp(prefix="twisted-sse-bench-"))
        self.addCleanup(shutil.rmtree, self.out, True)

    def run_script(self, script: Path, *args: str) -> tuple[str, list[dict[str, Any]]]:
        """Run a benchmark script unpinned: its output and its JSON lines."""
        return run_bench(self, script, *args)

    def test_smoke(self) -> None:
        """N=10 for a second: one JSON line per configuration, every event there."""
        stdout, results = self.run_script(
            RUN,
            *("--sizes", "10", "--paced-s", "1", "--sat-s", "1"),
            *("--configs", "stream,hub-memory", "--out", str(self.out)),
        )
        self.assertEqual(
            [(r["config"], r["n"]) for r in results],
            [("stream", 10), ("hub-memory", 10)],
        )
        for result in results:
            self.assertEqual(KEYS - set(result), set())
            self.assertEqual(result["connected"], 10)
            self.assertEqual(result["lost_connections"], 0)
            self.assertEqual(result["lost_events"], 0)
            self.assertGreater(result["sat_delivered"], 0)
        self.assertIn("| 10 | stream |", stdout)
        self.assertEqual(len(list(self.out.glob("*.jsonl"))), 1)

    def test_setup_cpu_smoke(self) -> None:
        """``bench/setup_cpu.py`` for ten connections: a line per run, a table."""
        stdout, results = self.run_script(
            RUN.parent / "setup_cpu.py",
            *("--sizes", "10", "--repeat", "1", "--servers", "stream,hub"),
        )
        self.assertEqual(
            [(r["server"], r["n"]) for r in results], [("stream", 10), ("hub", 10)]
        )
        for result in results:
            self.assertEqual(result["connected"], 10)
            self.assertGreaterEqual(result["setup_cpu_s"], 0)
            self.assertIsInstance(result["full_collections"], int)
        self.assertIn("| 10 | hub |", stdout)

    @pytest.mark.slow
    def test_subscriptions_smoke(self) -> None:
        """
        ``bench/subscriptions.py`` with ten subscribers: a line per case
        against a real ``twistd sse``, nothing lost, the table and its bars.
        """
        if not (HARNESS_CLIENT / "pub.c").exists():
            raise self.skipTest("bench/client has no pub.c")
        stdout, results = self.run_script(
            RUN.parent / "subscriptions.py",
            *("--memory-n", "10", "--deliveries-n", "10", "--patterns", "2"),
            *("--warm", "2", "--sat-s", "1", "--settle", "0.2", "--repeat", "1"),
            *("--out", str(self.out)),
        )
        self.assertEqual(
            [(r["part"], r["case"]) for r in results],
            [
                ("memory", "one channel"),
                ("memory", "one channel via /subscribe"),
                ("memory", "ten channels"),
                ("deliveries", "1 plain"),
                ("deliveries", "2 patterns elsewhere"),
                ("deliveries", "3 pattern matches"),
            ],
        )
        for result in results:
            self.assertEqual(result["connected"], 10)
            self.assertEqual(result["lost_connections"], 0)
            self.assertEqual(result["lost_events"], 0)
            self.assertIn("rss_per_conn_kb", result)
            if result["part"] == "deliveries":
                self.assertGreater(result["sat_delivered"], 0)
        self.assertEqual([r["held"] for r in results[3:]], [0, 4, 0])
        self.assertIn("bar, ten channels <= 1.5x one channel (/channels/a): ", stdout)
        self.assertIn("bar, run 3 pattern matches >= 0.9x run 1: ", stdout)
        self.assertIn("| 2 patterns elsewhere | 10 on `/channels/x.y` + 2 idle", stdout)
        self.assertEqual(len(list(self.out.glob("*-subscriptions.jsonl"))), 1)
