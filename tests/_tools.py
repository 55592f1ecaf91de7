"""
The outside tools that end-to-end tests drive: Debian's Chromium, Node and
the npm packages in ``tests/js``, curl, and optional Python clients.

A test calls :func:`require` for each tool it needs.  Outside CI a missing
tool skips the test with a reason that says how to get it; inside CI
(``CI=true``, which ``.ci/run`` sets) it fails the test, so that CI cannot
pass by skipping what it was meant to run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from unittest import SkipTest

ROOT = Path(__file__).resolve().parent.parent
#: The npm project of the JavaScript drivers (``npm ci --prefix tests/js``).
JS = ROOT / "tests" / "js"
#: Debian's Chromium; ``TWISTED_SSE_CHROMIUM`` names another.
CHROMIUM = os.environ.get("TWISTED_SSE_CHROMIUM", "/usr/bin/chromium")
#: Where tests leave files for people to look at (screenshots); gitignored.
ARTIFACTS = Path(os.environ.get("TWISTED_SSE_ARTIFACTS", ROOT / "artifacts"))


def in_ci() -> bool:
    """Whether this run is CI's, where a skip would hide a failure."""
    return os.environ.get("CI", "").strip().lower() == "true"


def require(available: bool, reason: str) -> None:
    """
    Go on if ``available``; else skip the test (outside CI) or fail it
    (inside CI) with ``reason``.

    :raises SkipTest: outside CI, when the tool is missing.
    :raises AssertionError: inside CI, when the tool is missing.
    """
    if available:
        return
    if in_ci():
        raise AssertionError(f"CI=true, so this is a failure, not a skip: {reason}")
    raise SkipTest(reason)


def require_program(name: str, hint: str) -> str:
    """
    The path of program ``name`` on ``PATH``, or skip/fail.

    :param hint: How to install it, for the reason.
    """
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed ({hint})")
    assert path is not None
    return path


def require_node_package(package: str) -> str:
    """
    The path of ``node`` once ``package`` is installed in ``tests/js``
    (by ``npm ci --prefix tests/js``), or skip/fail.
    """
    node = require_program("node", "apt-get install nodejs")
    require(
        (JS / "node_modules" / package / "package.json").is_file(),
        f"the npm package {package} is not installed: run npm ci --prefix tests/js",
    )
    return node


def require_chromium() -> str:
    """
    ``node`` once Chromium and playwright-core are there, or skip/fail.
    """
    node = require_node_package("playwright-core")
    require(
        os.access(CHROMIUM, os.X_OK),
        f"no Chromium at {CHROMIUM} (apt-get install chromium)",
    )
    return node


def require_module(module: str, distribution: str) -> None:
    """Skip/fail unless the Python module ``module`` can be imported."""
    require(
        importlib.util.find_spec(module) is not None,
        f"the Python package {distribution} is not installed "
        '(pip install -e ".[test]")',
    )


def curl_features() -> set[str]:
    """The features ``curl -V`` lists (``HTTP2``, ``SSL``, ...)."""
    path = require_program("curl", "apt-get install curl")
    output = subprocess.run(
        [path, "-V"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for line in output.splitlines():
        if line.startswith("Features:"):
            return set(line.split()[1:])
    return set()


def artifact_path(name: str) -> Path:
    """A path under :data:`ARTIFACTS` for a file named ``name``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
