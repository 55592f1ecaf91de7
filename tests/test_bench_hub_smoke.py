"""
Quick runs of ``bench/hub.py``, so that the side-by-side benchmark of our hub,
nginx + nchan and Pushpin keeps working: twenty subscribers, a second per
phase, every hub that is installed; no timing assertion.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from twisted.trial.unittest import SynchronousTestCase

from ._tools import in_ci
from .test_bench_smoke import HARNESS_CLIENT, run_bench

HUB = Path(__file__).resolve().parent.parent / "bench" / "hub.py"
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
#: Subscribers of every run.
N = 20
WORKLOADS = {"saturation", "paced", "idle"}
#: What a row of each workload measures; the other fields are null.
MEASURED = {
    "saturation": {"deliveries_per_s", "p50_ms", "p99_ms", "lost", "duplicated"},
    "paced": {"p50_ms", "p99_ms", "lost", "duplicated"},
    "idle": {"rss_per_conn_kb", "setup_conn_per_s"},
}
FIELDS = set().union(*MEASURED.values())
#: Short phases: the whole run stays well under a minute.
QUICK = (
    *("--sizes", str(N), "--repeat", "1", "--paced-s", "1", "--sat-s", "1"),
    *("--paced-deliveries", "2000", "--settle", "0.2", "--drain-timeout", "3"),
    *("--connect-timeout", "20"),
)


def redis_answers(port: int = 6379) -> bool:
    """Whether a Redis answers PING on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def installed_peers() -> tuple[list[str], list[str]]:
    """
    The peers this machine can run, and why the others cannot.  Under CI
    every one must be there: a missing one fails the test.
    """
    checks = {
        "twisted_sse-redis": (
            redis_answers(),
            "no Redis on 127.0.0.1:6379 (.ci/run starts one)",
        ),
        "nchan": (
            shutil.which("nginx") is not None and NCHAN_MODULE.exists(),
            "nginx with nchan is not installed "
            "(apt-get install nginx-light libnginx-mod-nchan)",
        ),
        "pushpin": (
            all(
                shutil.which(name) is not None
                for name in ("pushpin", "zurl", "condure")
            ),
            "Pushpin is not installed (apt-get install pushpin)",
        ),
    }
    peers, missing = ["twisted_sse"], []
    for peer, (there, reason) in checks.items():
        if there:
            peers.append(peer)
        elif in_ci():
            raise AssertionError(f"CI=true, so this is a failure, not a skip: {reason}")
        else:
            missing.append(reason)
    return peers, missing


def hub_script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bench/hub.py`` with ``args``, unpinned."""
    return subprocess.run(
        [sys.executable, str(HUB), *args, "--server-cpu", "", "--client-cpu", ""],
        capture_output=True,
        text=True,
        timeout=120,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of ``text``, one a line."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class HubBenchCommandLineTests(SynchronousTestCase):
    """``bench/hub.py`` refuses bad input with a message, not a traceback."""

    def assert_refused(self, args: tuple[str, ...], message: str) -> None:
        """The script exits with status 2 and says ``message``."""
        done = hub_script(*args)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn(message, done.stderr)
        self.assertNotIn("Traceback", done.stderr)

    def test_sizes_not_numbers(self) -> None:
        """``--sizes`` that is not a list of whole numbers is refused."""
        self.assert_refused(("--sizes", "1000,lots"), "--sizes takes whole numbers")

    def test_unknown_peer(self) -> None:
        """A peer the script does not know is named in the refusal."""
        self.assert_refused(("--peers", "nchan,caddy"), "unknown peer 'caddy'")

    def test_too_many_subscribers(self) -> None:
        """An N beyond one process's descriptors is refused, saying why."""
        self.assert_refused(("--sizes", "10,10000000"), "descriptors")

    def test_profile_without_py_spy(self) -> None:
        """``--profile`` without py-spy is refused, saying how to get it."""
        self.assert_refused(
            ("--profile", "--py-spy", "no-such-py-spy"), "pip install py-spy"
        )


def load_hub() -> Any:
    """``bench/hub.py`` as a module (its dataclasses need it registered)."""
    loaded = sys.modules.get("bench_hub")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("bench_hub", HUB)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_hub"] = module
    spec.loader.exec_module(module)
    return module


class FlameGraphTests(SynchronousTestCase):
    """What ``--profile`` makes of py-spy's collapsed stacks."""

    def setUp(self) -> None:
        self.hub = load_hub()
        self.folder = Path(tempfile.mkdtemp(prefix="twisted-sse-flame-"))
        self.addCleanup(shutil.rmtree, self.folder, True)

    def test_shorten(self) -> None:
        """
        Paths are cut to the package, so that no folder of the machine is
        named; stacks that become equal are merged.
        """
        raw = self.folder / "p.txt"
        site = "/home/me/venv/lib/python3.11/site-packages"
        raw.write_text(
            f"process 1:twistd;run (/home/me/venv/bin/twistd:6);"
            f"doPoll ({site}/twisted/internet/epollreactor.py:244) 5\n"
            f"run (/other/venv/bin/twistd:6);"
            f"doPoll (/x/lib/python3.11/site-packages/twisted/internet/"
            f"epollreactor.py:244) 2\n"
            f"run (/home/me/venv/bin/twistd:6);"
            f"write (/src/repo/twisted_sse/_stream.py:347) 3\n"
        )
        stacks = self.hub.shorten(raw)
        text = raw.read_text()
        self.assertNotIn("/home/me", text)
        self.assertNotIn("site-packages", text)
        self.assertEqual(
            sorted(stacks),
            [
                (
                    ["run (twistd:6)", "doPoll (twisted/internet/epollreactor.py:244)"],
                    7,
                ),
                (["run (twistd:6)", "write (twisted_sse/_stream.py:347)"], 3),
            ],
        )

    def test_flame_graph(self) -> None:
        """
        A frame's box is as wide as its share of the samples, its callees
        above it, and its name and share are in its tooltip.
        """
        svg = self.folder / "p.svg"
        samples = self.hub.flame_graph(
            [(["main", "a", "x"], 3), (["main", "b"], 1)], svg, "a test"
        )
        self.assertEqual(samples, 4)
        root = ElementTree.parse(svg).getroot()
        boxes = {}
        for group in root.iter("{http://www.w3.org/2000/svg}g"):
            title = group.find("{http://www.w3.org/2000/svg}title")
            rect = group.find("{http://www.w3.org/2000/svg}rect")
            assert title is not None and title.text and rect is not None
            boxes[title.text.split(":")[0]] = (
                float(rect.get("x", "")),
                float(rect.get("y", "")),
                float(rect.get("width", "")),
                title.text,
            )
        self.assertEqual(sorted(boxes), ["a", "b", "main", "x"])
        width = float(root.get("width", ""))
        self.assertEqual(boxes["main"][2], width)
        self.assertEqual(boxes["a"][2], width * 3 / 4)
        self.assertEqual(boxes["b"][0], width * 3 / 4)
        self.assertIn("75.0 %", boxes["a"][3])
        # Root at the bottom, callees above their callers.
        self.assertGreater(boxes["main"][1], boxes["a"][1])
        self.assertGreater(boxes["a"][1], boxes["x"][1])


class HubBenchSmokeTests(SynchronousTestCase):
    """``python bench/hub.py`` measures every installed hub."""

    def setUp(self) -> None:
        if not (HARNESS_CLIENT / "pub.c").exists():
            raise self.skipTest("bench/client has no pub.c")
        if shutil.which(os.environ.get("CC", "cc")) is None:
            raise self.skipTest("no C compiler to build the harness's client")
        self.out = Path(tempfile.mkdtemp(prefix="twisted-sse-bench-hub-"))
        self.addCleanup(shutil.rmtree, self.out, True)

    @pytest.mark.slow
    def test_every_installed_peer(self) -> None:
        """
        A row per (peer, workload), each with its measurements and null for
        the others; our hub loses and duplicates nothing; the results file
        holds the same rows, and the table a line per peer.
        """
        peers, _missing = installed_peers()
        results = self.out / "rows.jsonl"
        stdout, rows = run_bench(
            self, HUB, *QUICK, "--peers", ",".join(peers), "--out", str(results)
        )
        self.assertEqual(
            sorted((r["peer"], r["workload"]) for r in rows),
            sorted((p, w) for p in peers for w in WORKLOADS),
        )
        for row in rows:
            self.assertNotIn("error", row)
            self.assertEqual(row["n"], N)
            self.assertGreater(row["connected"], 0)
            measured = MEASURED[row["workload"]]
            for field in FIELDS - measured:
                self.assertIsNone(row[field], (row["peer"], row["workload"], field))
            if row["workload"] == "idle":
                self.assertGreater(row["setup_conn_per_s"], 0)
                # Twenty subscribers may fit in memory the hub already has.
                self.assertIsInstance(row["rss_per_conn_kb"], float)
            else:
                if row["workload"] == "saturation":
                    self.assertGreater(row["deliveries_per_s"], 0)
                self.assertGreater(row["published"], 0)
                self.assertGreater(row["p50_ms"], 0)
                self.assertGreaterEqual(row["p99_ms"], row["p50_ms"])
            if row["peer"].startswith("twisted_sse"):
                self.assertEqual(row["connected"], N)
                if row["workload"] != "idle":
                    self.assertEqual((row["lost"], row["duplicated"]), (0, 0))
                    self.assertEqual(row["delivered"], row["published"] * N)
        self.assertEqual(json_lines(results.read_text()), rows)
        table = results.with_suffix(".md").read_text()
        for peer in peers:
            self.assertIn(f"| {N} | {peer} | ", stdout)
            self.assertIn(f"| {N} | {peer} | ", table)
        self.assertTrue(results.with_name("rows-logs").is_dir())

    @pytest.mark.slow
    def test_peer_that_cannot_start(self) -> None:
        """
        A hub that exits at start-up, and one whose broker is not there, are
        rows with an error saying why; the script goes on and exits with 1.
        """
        done = hub_script(
            *QUICK,
            *("--peers", "twisted_sse-redis", "--out", str(self.out / "a.jsonl")),
            # Nothing listens on port 1.
            *("--redis-url", "redis://127.0.0.1:1/0"),
        )
        self.assertEqual(done.returncode, 1, done.stderr)
        rows = json_lines(done.stdout)
        self.assertEqual(sorted(r["workload"] for r in rows), sorted(WORKLOADS))
        for row in rows:
            self.assertIn("no Redis at 127.0.0.1:1", row["error"])
            self.assertIsNone(row["deliveries_per_s"])
        # A broker twistd sse refuses: it exits, and the row has its words.
        done = hub_script(
            *QUICK,
            *("--peers", "twisted_sse-redis", "--out", str(self.out / "b.jsonl")),
            *("--redis-url", "nowhere://127.0.0.1/0"),
        )
        self.assertEqual(done.returncode, 1, done.stderr)
        rows = json_lines(done.stdout)
        self.assertEqual(len(rows), 3)
        for row in rows:
            self.assertIn("twistd exited with status", row["error"])
            # The end of twistd's output: its complaint about --broker.
            self.assertIn("broker", row["error"].split("status", 1)[1])
        self.assertIn("| twisted_sse-redis | error: twistd exited", done.stdout)
