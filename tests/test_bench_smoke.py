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

from twisted.trial.unittest import SynchronousTestCase

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"

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


class BenchSmokeTests(SynchronousTestCase):
    """``python bench/run.py`` measures both configurations and loses nothing."""

    def setUp(self) -> None:
        if shutil.which(os.environ.get("CC", "cc")) is None:
            raise self.skipTest("no C compiler to build the load client")
        self.out = Path(tempfile.mkdtemp(prefix="twisted-sse-bench-"))
        self.addCleanup(shutil.rmtree, self.out, True)

    def run_script(self, script: Path, *args: str) -> tuple[str, list[dict[str, Any]]]:
        """Run a benchmark script unpinned: its output and its JSON lines."""
        done = subprocess.run(
            [
                sys.executable,
                str(script),
                *args,
                "--server-cpu",
                "",
                "--client-cpu",
                "",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        results = [
            json.loads(line)
            for line in done.stdout.splitlines()
            if line.startswith("{")
        ]
        return done.stdout, results

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
