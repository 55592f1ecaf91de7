"""
Quick runs of ``bench/cluster.py``, so that the benchmark of the publish rate
one Redis and a Redis Cluster absorb keeps working: half-second windows, a
few hundred channels, every row checked against what Redis stored; no timing
assertion.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from ._tools import require_program
from .test_bench_hub_smoke import json_lines
from .test_bench_smoke import run_bench

CLUSTER = Path(__file__).resolve().parent.parent / "bench" / "cluster.py"
#: Channels of the quick run: enough that no stream reaches the history
#: (1,000 entries) in the run, so every publish is still stored at the end.
CHANNELS = 300
QUICK = (
    *("--seconds", "0.5", "--warm", "0.2", "--channels", str(CHANNELS)),
    *("--loaders", "1", "--in-flight", "4"),
)


def cluster_script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bench/cluster.py`` with ``args``, unpinned."""
    return subprocess.run(
        [sys.executable, str(CLUSTER), *args, "--server-cpu", "", "--client-cpu", ""],
        capture_output=True,
        text=True,
        timeout=120,
    )


class ClusterBenchCommandLineTests(SynchronousTestCase):
    """``bench/cluster.py`` refuses bad input with a message, not a traceback."""

    def assert_refused(self, args: tuple[str, ...], message: str) -> None:
        """The script exits with status 2 and says ``message``."""
        done = cluster_script(*args)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn(message, done.stderr)
        self.assertNotIn("Traceback", done.stderr)

    def test_seconds_not_positive(self) -> None:
        """``--seconds`` below the shortest window is refused."""
        self.assert_refused(("--seconds", "-1"), "must be at least 0.2")

    def test_unknown_part(self) -> None:
        """A part the script does not have is named in the refusal."""
        self.assert_refused(("--parts", "redis,kafka"), "unknown 'kafka'")

    def test_too_few_primaries(self) -> None:
        """A cluster of fewer than three primaries is refused."""
        self.assert_refused(("--primaries", "2"), "must be at least 3")

    def test_topology_that_cannot_start(self) -> None:
        """
        A Redis that cannot run is a row with an error saying why, and the
        script exits with 1.
        """
        done = cluster_script(
            *("--parts", "redis", "--topologies", "single"),
            *("--redis-server", str(CLUSTER.parent / "no-such-redis-server")),
        )
        self.assertEqual(done.returncode, 1, done.stderr)
        rows = json_lines(done.stdout)
        self.assertEqual(
            [(r["topology"], r["form"]) for r in rows],
            [("single", "log"), ("single", "live")],
        )
        for row in rows:
            self.assertIn("cannot run", row["error"])
            self.assertNotIn("publishes_per_s", row)
        self.assertIn("| single (?) | log | error: cannot run", done.stdout)


class ClusterBenchSmokeTests(SynchronousTestCase):
    """``python bench/cluster.py`` measures one Redis and a cluster."""

    def setUp(self) -> None:
        for program in ("redis-server", "redis-cli"):
            require_program(program, "apt-get install redis-server")

    @pytest.mark.slow
    def test_both_topologies(self) -> None:
        """
        A Redis row per (topology, form) and a hub row per topology, each
        with a positive rate and no error; what was acknowledged is what the
        streams hold, spread over the three primaries of the cluster.
        """
        stdout, rows = run_bench(self, CLUSTER, *QUICK)
        self.assertEqual(
            [(r["part"], r["topology"], r.get("form", r.get("hubs"))) for r in rows],
            [
                ("redis", "single", "log"),
                ("redis", "single", "live"),
                ("redis", "cluster", "live"),
                ("hub", "single", 1),
                ("hub", "cluster", 1),
            ],
        )
        for row in rows:
            self.assertNotIn("error", row)
            self.assertEqual(row["channels"], CHANNELS)
            self.assertEqual(row["primaries"], 3 if row["topology"] == "cluster" else 1)
            self.assertGreater(row["publishes_per_s"], 0)
            self.assertGreater(row["redis_cpu"], 0)
            if row["part"] == "redis":
                self.check_redis(row)
            else:
                self.check_hub(row)
        cluster = rows[2]
        self.assertGreater(cluster["vs_single_log"], 0)
        self.assertGreater(cluster["projected_vs_single_live"], 0)
        self.assertGreater(rows[4]["vs_single"], 0)
        self.assertIn("| cluster (3) | live | ", stdout)
        self.assertIn("| cluster (3) | 1 | ", stdout)

    def check_redis(self, row: dict[str, Any]) -> None:
        """Every publish answered an id, and is in its channel's stream."""
        self.assertEqual(row["errors"], 0)
        self.assertEqual(row["stored"], row["published"])
        self.assertGreater(row["projected_per_s"], 0)
        self.assertEqual(len(row["nodes"]), row["primaries"])
        self.assertEqual(sum(n["channels"] for n in row["nodes"]), CHANNELS)
        for node in row["nodes"]:
            self.assertGreater(node["publishes_per_s"], 0)
            self.assertGreater(node["stored"], 0)

    def check_hub(self, row: dict[str, Any]) -> None:
        """Every POST was acknowledged and is stored, on every primary."""
        self.assertEqual((row["refused"], row["statuses"]), (0, {}))
        self.assertEqual(row["stored"], row["acknowledged"])
        self.assertEqual(len(row["stored_per_primary"]), row["primaries"])
        for count in row["stored_per_primary"]:
            self.assertGreater(count, 0)
