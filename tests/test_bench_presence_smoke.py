"""
A quick run of ``bench/presence.py``, so that the benchmark of what presence
costs keeps working: a few dozen subscribers per run, presence on and off,
no timing assertion.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from .test_bench_smoke import HARNESS_CLIENT, run_bench

PRESENCE = Path(__file__).resolve().parent.parent / "bench" / "presence.py"

#: The subscribers of every run of ``--quick``.
QUICK_N = 40


class PresenceBenchSmokeTests(SynchronousTestCase):
    """``python bench/presence.py --quick`` measures presence on and off."""

    def setUp(self) -> None:
        if not (HARNESS_CLIENT / "pub.c").exists():
            raise self.skipTest("bench/client has no pub.c")
        if shutil.which("cc") is None:
            raise self.skipTest("no C compiler to build the harness's client")
        self.out = Path(tempfile.mkdtemp(prefix="twisted-sse-bench-presence-"))
        self.addCleanup(shutil.rmtree, self.out, True)

    def run_quick(self, *args: str) -> tuple[str, list[dict[str, Any]]]:
        """Run the script's quick mode unpinned: its output and JSON lines."""
        return run_bench(self, PRESENCE, "--quick", "--out", str(self.out), *args)

    @pytest.mark.slow
    def test_memory(self) -> None:
        """
        On the memory broker: a line per run, with presence and without,
        every subscriber set up twice, presence counting the identities it
        should, and the tables with the on/off ratios.
        """
        stdout, results = self.run_quick("--brokers", "memory")
        self.assertEqual(
            [(r["part"], r["channels"], r["presence"]) for r in results],
            [
                ("setup", 1, True),
                ("setup", 1, False),
                ("setup", 4, True),
                ("setup", 4, False),
                ("deliveries", 1, True),
                ("deliveries", 1, False),
            ],
        )
        for result in results:
            self.assertNotIn("error", result)
            self.assertEqual(result["n"], QUICK_N)
            self.assertEqual(result["lost_connections"], 0)
            self.assertTrue(result["server_alive"])
        setup = [r for r in results if r["part"] == "setup"]
        for result in setup:
            self.assertEqual(result["ok"], QUICK_N)
            self.assertEqual(result["reconnect_ok"], QUICK_N)
            self.assertGreater(result["cold_cpu_us"], 0)
            # Subscriber 0's channel: all 40, or one in 4 (every 4th).
            want = QUICK_N // result["channels"] if result["presence"] else None
            self.assertEqual(result["presence_count"], want)
            self.assertEqual(result["presence_count_after_reconnect"], want)
        for result in results[4:]:
            self.assertEqual(result["connected"], QUICK_N)
            self.assertEqual(result["lost_events"], 0)
            self.assertGreater(result["sat_delivered"], 0)
        self.assertIn("| memory | 40 | 4 | on | ", stdout)
        self.assertIn("| conn/s on/off | server CPU off/on |", stdout)
        self.assertIn("| memory | 40 | 1 | on | ", stdout)
        self.assertEqual(len(list(self.out.glob("*-presence.jsonl"))), 1)
        self.assertEqual(len(list(self.out.glob("*-presence.md"))), 1)

    @pytest.mark.slow
    def test_redis(self) -> None:
        """
        On Redis: set-ups on one and on four channels, the deliveries, and
        the storm with the commands Redis ran, more of them while
        subscribers first open with presence than without.
        """
        import twisted_sse

        if shutil.which("redis-server") is None:
            raise self.skipTest("no redis-server")
        if not twisted_sse.IPresenceBroker.implementedBy(twisted_sse.RedisBroker):
            raise self.skipTest("the Redis broker keeps no presence")
        stdout, results = self.run_quick("--brokers", "redis")
        self.assertEqual(
            [(r["part"], r["presence"]) for r in results],
            [
                ("setup", True),
                ("setup", False),
                ("setup", True),
                ("setup", False),
                ("deliveries", True),
                ("deliveries", False),
                ("storm", True),
                ("storm", False),
            ],
        )
        for result in results:
            self.assertNotIn("error", result)
            self.assertEqual(result["lost_connections"], 0)
        counted = [r for r in results if r["part"] == "storm"]
        for result in counted:
            for window in ("open_redis", "idle_redis", "storm_redis"):
                self.assertIn("client", result[window])
            self.assertGreater(result["open_redis"]["client"], 0)
            self.assertGreater(result["storm_redis"]["client"], 0)
        on, off = counted[0]["open_redis"], counted[1]["open_redis"]
        self.assertGreater(on["script"], off["script"])
        self.assertIn("| redis, storm (MONITOR on) | 40 | 4 | on | ", stdout)
        self.assertIn("Redis (MONITOR): ", stdout)
