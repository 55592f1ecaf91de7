"""
Quick runs of ``bench/large.py``, so that the large runs (the load spread
over several client processes and source addresses, one or several hub
processes) keep working: 200 subscribers from two clients, a few events,
a second of saturation; no timing assertion.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from ._tools import require
from .test_bench_hub_smoke import json_lines, redis_answers
from .test_bench_smoke import HARNESS_CLIENT, run_bench

LARGE = Path(__file__).resolve().parent.parent / "bench" / "large.py"
#: Subscribers of every run, and the clients that hold them.
N = 200
CLIENTS = 2
WORKLOADS = ["setup", "paced", "saturation"]
#: What a row of each workload measures; the other fields are null.
MEASURED = {
    "setup": {"setup_conn_per_s", "rss_per_conn_kb"},
    "paced": {"p50_ms", "p99_ms", "max_ms", "lost", "duplicated"},
    "saturation": {
        "deliveries_per_s",
        *("p50_ms", "p99_ms", "max_ms", "lost", "duplicated"),
    },
}
FIELDS = set().union(*MEASURED.values())
#: Short phases: each run stays well under a minute.
QUICK = (
    *("--n", str(N), "--clients", str(CLIENTS)),
    *("--events", "5", "--interval", "0.05", "--sat-s", "1"),
    *("--settle", "0.2", "--drain-timeout", "10", "--connect-timeout", "30"),
)


def large_script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bench/large.py`` with ``args``, unpinned."""
    return subprocess.run(
        [sys.executable, str(LARGE), *args, "--server-cpu", "", "--client-cpu", ""],
        capture_output=True,
        text=True,
        timeout=120,
    )


class LargeBenchCommandLineTests(SynchronousTestCase):
    """``bench/large.py`` refuses what cannot run, with a message."""

    def assert_refused(self, args: tuple[str, ...], message: str) -> None:
        """The script exits with status 2 and says ``message``."""
        done = large_script(*args)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn(message, done.stderr)
        self.assertNotIn("Traceback", done.stderr)

    def test_too_many_per_process(self) -> None:
        """
        An N beyond one process's descriptors is refused, saying how many
        processes would do.
        """
        self.assert_refused(("--n", "10000000"), "descriptors")
        self.assert_refused(("--n", "10000000"), "use --procs")

    def test_too_many_per_client(self) -> None:
        """Too few clients for N are refused, saying how many would do."""
        self.assert_refused(
            (
                *("--n", "10000000", "--clients", "1"),
                *("--procs", "1000", "--broker", "redis"),
            ),
            "use --clients",
        )

    def test_several_processes_on_memory(self) -> None:
        """Processes on the memory broker would not share events: refused."""
        self.assert_refused(("--n", "100", "--procs", "2"), "--broker redis")

    def test_too_many_source_addresses(self) -> None:
        """Clients beyond 127.0.0.254 are refused."""
        self.assert_refused(("--n", "1000", "--clients", "300"), "127.0.0.301")


class LargeBenchSmokeTests(SynchronousTestCase):
    """``python bench/large.py`` measures our hub at a small size."""

    def setUp(self) -> None:
        if not (HARNESS_CLIENT / "pub.c").exists():
            raise self.skipTest("bench/client has no pub.c")
        if shutil.which(os.environ.get("CC", "cc")) is None:
            raise self.skipTest("no C compiler to build the harness's client")
        self.out = Path(tempfile.mkdtemp(prefix="twisted-sse-bench-large-"))
        self.addCleanup(shutil.rmtree, self.out, True)

    def check_rows(
        self, rows: list[dict[str, Any]], peer: str, procs: int
    ) -> dict[str, dict[str, Any]]:
        """
        One row per workload, for ``peer`` on ``procs`` processes, each with
        its measurements and null for the others, nothing lost nor
        duplicated; the rows by workload.
        """
        self.assertEqual([row["workload"] for row in rows], WORKLOADS)
        by = {row["workload"]: row for row in rows}
        for row in rows:
            self.assertNotIn("error", row)
            self.assertEqual(
                (row["peer"], row["n"], row["procs"], row["clients"]),
                (peer, N, procs, CLIENTS),
            )
            for name in FIELDS - MEASURED[row["workload"]]:
                self.assertIsNone(row[name], (row["workload"], name))
        setup = by["setup"]
        self.assertEqual(setup["connected"], N)
        self.assertEqual(setup["shares"], [N // CLIENTS] * CLIENTS)
        self.assertEqual(setup["sources"], ["127.0.0.2", "127.0.0.3"])
        self.assertGreater(setup["setup_conn_per_s"], 0)
        # A few hundred subscribers may fit in memory the hubs already have.
        self.assertIsInstance(setup["rss_per_conn_kb"], float)
        self.assertEqual(len(setup["rss_growth_kb_per_hub"]), procs)
        for workload in ("paced", "saturation"):
            row = by[workload]
            self.assertEqual((row["lost"], row["duplicated"]), (0, 0))
            self.assertEqual((row["died"], row["publish_errors"]), (0, 0))
            self.assertGreater(row["published"], 0)
            self.assertEqual(row["delivered"], row["published"] * N)
            self.assertEqual(row["latency_samples"], row["delivered"])
            self.assertGreater(row["p50_ms"], 0)
            self.assertGreaterEqual(row["p99_ms"], row["p50_ms"])
            self.assertGreaterEqual(row["max_ms"], row["p99_ms"])
            self.assertEqual(
                sum(count for _, _, count in row["latency_hist_us"]),
                row["delivered"],
            )
        self.assertEqual(by["paced"]["published"], 5)
        self.assertGreater(by["saturation"]["deliveries_per_s"], 0)
        return by

    @pytest.mark.slow
    def test_one_process(self) -> None:
        """
        One process on the memory broker, two clients from two source
        addresses: three rows, the same in the results file.
        """
        results = self.out / "rows.jsonl"
        stdout, rows = run_bench(self, LARGE, *QUICK, "--out", str(results))
        self.check_rows(rows, "twisted_sse", 1)
        self.assertIn("# layout: 1 hub process ", stdout)
        self.assertEqual(json_lines(results.read_text()), rows)
        logs = results.with_name("rows-logs")
        self.assertTrue((logs / "hub-0" / "twistd.log").is_file())
        self.assertTrue((logs / "client-1.log").is_file())

    @pytest.mark.slow
    def test_two_processes_on_redis(self) -> None:
        """
        Two processes sharing a Redis: every subscriber gets every event,
        whichever process holds it and whichever the event was published to.
        """
        require(redis_answers(), "no Redis on 127.0.0.1:6379 (.ci/run starts one)")
        results = self.out / "rows.jsonl"
        _stdout, rows = run_bench(
            self,
            LARGE,
            *QUICK,
            *("--procs", "2", "--broker", "redis", "--out", str(results)),
        )
        by = self.check_rows(rows, "twisted_sse-redis", 2)
        self.assertEqual(by["saturation"]["publishers"], 2)

    @pytest.mark.slow
    def test_hub_that_cannot_start(self) -> None:
        """
        A broker that is not there gives a row per workload with an error
        saying why, and the exit status 1.
        """
        done = large_script(
            *QUICK,
            *("--procs", "2", "--broker", "redis"),
            # Nothing listens on port 1.
            *("--redis-url", "redis://127.0.0.1:1/0"),
            *("--out", str(self.out / "a.jsonl")),
        )
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        rows = json_lines(done.stdout)
        self.assertEqual([row["workload"] for row in rows], WORKLOADS)
        for row in rows:
            self.assertIn("no Redis at 127.0.0.1:1", row["error"])
            self.assertIsNone(row["p50_ms"])
